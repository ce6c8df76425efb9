"""What a step costs: FLOPs equal to PyTorch's own counter, device peaks, MFU and the price table."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config
from transformers.pytorch_utils import Conv1D

import optimization.cost as cost
from utils.errors import ConfigError, UserError

BATCH, SEQ = 3, 16


def tiny_gpt2(**shape):
    config = GPT2Config(**{"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32, **shape},
                        vocab_size=300, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")  # attention as plain bmm


def lora(targets):
    return get_peft_model(tiny_gpt2(), LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=True,
                                                  lora_dropout=0.0))


def frozen_first_block():
    """Embeddings (so lm_head) and the first block frozen but for its MLP output weight."""
    model = tiny_gpt2()
    for name, p in model.named_parameters():
        p.requires_grad = not (name.startswith(("transformer.wte", "transformer.wpe", "transformer.h.0."))
                               and name != "transformer.h.0.mlp.c_proj.weight")
    return model


def biases_only():
    model = tiny_gpt2()
    for name, p in model.named_parameters():
        p.requires_grad = name.endswith("bias")
    return model


SETUPS = {
    "full fine-tuning": tiny_gpt2,
    "LoRA on every matmul": lambda: lora(["c_attn", "c_proj", "c_fc"]),
    "LoRA on c_fc only": lambda: lora(["c_fc"]),
    "first block frozen by hand": frozen_first_block,
    "biases only": biases_only,
}


def batch():
    return torch.randint(0, 300, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def counted_step(model) -> int:
    x = batch()
    with FlopCounterMode(display=False) as counter:
        model(input_ids=x, labels=x).loss.backward()
    return counter.get_total_flops()


def counted_forward(model) -> int:
    x = batch()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=x)
    return counter.get_total_flops()


@pytest.mark.parametrize("setup", SETUPS)
def test_step_flops_equal_pytorchs_count(setup):
    model = SETUPS[setup]()
    assert cost.step_flops(model, BATCH, SEQ) == counted_step(model)
    assert cost.forward_flops(model, BATCH, SEQ) == counted_forward(model)


def test_lora_on_c_fc_has_no_backward_above_its_first_adapter():
    """Below block 0's mlp.c_fc nothing is trainable, so block 0's c_attn, attn.c_proj and c_fc base
    matmuls get no input gradient, its lora_A only a weight gradient, and its attention no backward:
    exactly what PyTorch counts less than if every input carried a gradient."""
    model = lora(["c_fc"])
    tokens, width = BATCH * SEQ, model.config.n_embd
    weights = [m.weight for m in model.modules() if isinstance(m, (Conv1D, torch.nn.Linear))]
    every_input = sum((4 + 2 * w.requires_grad) * w.numel() for w in weights) * tokens \
        + 12 * model.config.n_layer * BATCH * SEQ**2 * width
    block = model.get_base_model().transformer.h[0]
    frozen_inputs = [block.attn.c_attn.weight, block.attn.c_proj.weight, block.mlp.c_fc.base_layer.weight,
                     block.mlp.c_fc.lora_A["default"].weight]
    skipped = 2 * sum(w.numel() for w in frozen_inputs) * tokens + 8 * BATCH * SEQ**2 * width
    assert cost.step_flops(model, BATCH, SEQ) == every_input - skipped == counted_step(model)


def test_merged_lora_counts_the_base_matmuls_only():
    model = lora(["c_attn", "c_fc"])
    model.merge_adapter()
    base_only = cost.forward_flops(tiny_gpt2(), BATCH, SEQ)
    assert cost.forward_flops(model, BATCH, SEQ) == base_only == counted_forward(model)


@pytest.mark.parametrize("shape", [{}, {"n_layer": 3, "n_embd": 48, "n_head": 3, "n_inner": 80}])
def test_full_fine_tuning_is_six_n_tokens_plus_attention(shape):
    model = tiny_gpt2(**shape)
    layers, width = model.config.n_layer, model.config.n_embd
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, Conv1D)) + model.lm_head.weight.numel()
    attention = 12 * layers * BATCH * SEQ**2 * width
    assert cost.step_flops(model, BATCH, SEQ) == 6 * n_matmul * BATCH * SEQ + attention
    assert cost.forward_flops(model, BATCH, SEQ) == 2 * n_matmul * BATCH * SEQ + attention // 3


def tiny_decoder(model_type: str, attention: str = "eager"):
    """A 2-layer Llama (grouped-query attention, RMSNorm, rotary, untied head) or GPT-NeoX (fused QKV, biases)."""
    config = AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=64, vocab_size=300,
                                  **({"num_key_value_heads": 2} if model_type == "llama" else {}))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention)


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox"])
def test_any_architecture_counts_six_n_tokens_plus_attention(model_type):
    """Counted on the meta device: what PyTorch counts on real weights with eager attention, and the formula."""
    model = tiny_decoder(model_type)
    layers, width = model.config.num_hidden_layers, model.config.hidden_size
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 12 * layers * BATCH * SEQ**2 * width
    assert cost.step_flops(model, BATCH, SEQ) == 6 * n_matmul * BATCH * SEQ + attention == counted_step(model)
    assert cost.forward_flops(model, BATCH, SEQ) == 2 * n_matmul * BATCH * SEQ + attention // 3 == counted_forward(model)


def test_the_count_does_not_depend_on_the_attention_kernel():
    """SDPA on a CPU runs a fused kernel that PyTorch's counter does not see; the meta count is the same for both."""
    eager, sdpa = tiny_decoder("llama"), tiny_decoder("llama", "sdpa")
    assert cost.step_flops(sdpa, BATCH, SEQ) == cost.step_flops(eager, BATCH, SEQ) > counted_step(sdpa)


def test_lora_on_llama_counts_its_adapters():
    model = get_peft_model(tiny_decoder("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert cost.step_flops(model, BATCH, SEQ) == counted_step(model)


def test_a_model_that_cannot_run_on_the_meta_device_has_no_count():
    class ReadsValues(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3))

        def forward(self, input_ids):
            return SimpleNamespace(logits=self.weight * float(input_ids.sum()))

    with pytest.raises(ValueError, match="cannot be counted on the meta device"):
        cost.step_flops(ReadsValues(), 1, 8)


def test_a_structure_is_counted_once_per_process(monkeypatch):
    """Every run builds its own model; runs of one shape share a count (a search's trials, an experiment's optimizers),
    and anything the count depends on makes another."""
    counts = []
    monkeypatch.setattr(cost, "_COUNTED", {})
    count = cost._count_on_meta
    monkeypatch.setattr(cost, "_count_on_meta", lambda *args: counts.append(args[1:]) or count(*args))
    first = cost.step_flops(tiny_gpt2(), 1, SEQ)
    assert cost.step_flops(tiny_gpt2(), 2, SEQ) == 2 * first and len(counts) == 1  # another model, the same structure
    assert cost.forward_flops(tiny_gpt2(), 1, SEQ) < first and len(counts) == 2
    assert cost.step_flops(tiny_gpt2(), 1, 2 * SEQ) > first and len(counts) == 3
    assert cost.step_flops(frozen_first_block(), 1, SEQ) < first and len(counts) == 4  # fewer weights trained
    assert cost.step_flops(tiny_gpt2(n_embd=64), 1, SEQ) > first and len(counts) == 5
    assert cost.step_flops(lora(["c_fc"]), 1, SEQ) != first and len(counts) == 6


# ----------------------------------------------------------------------------------------------
# Peaks and MFU.

def test_cpu_peak_is_measured_once(monkeypatch):
    peak, source = cost.device_peak_flops(torch.device("cpu"), "fp32")
    assert peak > 0 and "fp32 matmul probe" in source and f"{torch.get_num_threads()} thread" in source

    def no_second_probe(*args):
        raise AssertionError("the probe ran again")

    monkeypatch.setattr(cost.torch, "mm", no_second_probe)
    assert cost.device_peak_flops(torch.device("cpu"), "fp32")[0] == peak
    assert cost.device_peak_flops(torch.device("cpu"), "bf16")[0] is None


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100-PCIE-40GB", "A100"),
    ("NVIDIA A10", "A10"), ("NVIDIA A10G", "A10G"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"),
    ("Tesla T4", "T4"), ("Tesla V100-SXM2-16GB", "V100 SXM2"), ("Tesla V100-PCIE-32GB", "V100 PCIe"),
    ("NVIDIA GeForce RTX 3090", "RTX 3090"), ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA GH200 480GB", None), ("NVIDIA GeForce RTX 3090 Ti", None), ("NVIDIA L40", None),
])
def test_gpu_names_find_their_datasheet(name, key):
    assert cost.gpu_peak_key(name) == key
    peak, source = cost.peak_for_name(name, "bf16")
    if key is None:
        assert peak is None and source == f"unknown GPU {name}: add it to optimization.cost.PEAK_FLOPS"
    else:
        assert peak == cost.PEAK_FLOPS[key]["bf16"] and key in source


def test_cuda_device_is_looked_up_by_its_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert cost.device_peak_flops(torch.device("cuda"), "fp32")[0] == 51e12
    assert cost.device_peak_flops(torch.device("cuda"), "bf16")[0] == 756.5e12


def test_peak_table_is_complete():
    assert {key for _, key in cost.GPU_NAMES} == set(cost.PEAK_FLOPS)
    for peaks in cost.PEAK_FLOPS.values():
        assert set(peaks) == set(cost.PRECISIONS) and 0 < peaks["fp32"] < peaks["bf16"]


def test_mfu():
    assert cost.mfu(3e12, 2.0, 6e12) == 0.25
    assert cost.mfu(3e12, 2.0, None) is None
    # A job of 2 ranks: its FLOPs over 2 devices' peak, per device as one process's
    assert cost.mfu(3e12, 2.0, 6e12, devices=2) == 0.125


# ----------------------------------------------------------------------------------------------
# Prices.

def test_shipped_prices_load_and_name_their_peaks():
    prices = cost.load_prices()
    assert 0 < prices.assumed_mfu <= 1
    assert {"H100-SXM", "H200", "A100-80GB", "A100-40GB", "L4", "A10G", "T4", "cpu-2vcpu"} <= set(prices.devices)
    for price in prices.devices.values():
        assert price.usd_per_hour > 0 and price.source and len(price.as_of) == 10
        assert price.peak is None or price.peak in cost.PEAK_FLOPS


@pytest.mark.parametrize("description, name", [
    ("NVIDIA H100 80GB HBM3", "H100-SXM"), ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
    ("NVIDIA A100-PCIE-40GB", "A100-40GB"), ("NVIDIA A10G", "A10G"), ("Tesla T4", "T4"), ("cpu", "cpu-2vcpu"),
    ("l4", "L4"), ("NVIDIA GeForce RTX 4090", None),
])
def test_a_runs_device_finds_its_price(description, name):
    found = cost.price_for_device(cost.load_prices(), description)
    assert (found and found[0]) == name


BAD = {
    "not a mapping": ("- 1\n- 2\n", "expected a mapping"),
    "assumed_mfu zero": ("assumed_mfu: 0\ndevices: {}\n", "assumed_mfu"),
    "assumed_mfu above one": ("assumed_mfu: 1.5\ndevices: {}\n", "assumed_mfu"),
    "entry not a mapping": ("assumed_mfu: 0.3\ndevices: {T4: 0.5}\n", "'T4'"),
    "missing price": ("assumed_mfu: 0.3\ndevices: {T4: {as_of: 2025-01-01, source: x, peak: T4}}\n", "'T4'"),
    "negative price": ("assumed_mfu: 0.3\ndevices:\n  T4: {usd_per_hour: -1, as_of: 2025-01-01, source: x, peak: T4}\n",
                       "'T4'"),
    "unknown peak": ("assumed_mfu: 0.3\ndevices:\n  X1: {usd_per_hour: 1, as_of: 2025-01-01, source: x, peak: X1}\n",
                     "'X1'"),
    "no source": ("assumed_mfu: 0.3\ndevices:\n  T4: {usd_per_hour: 1, as_of: 2025-01-01, peak: T4}\n", "'T4'"),
    "invalid YAML": ("devices: [\n", "YAML"),
}


@pytest.mark.parametrize("case", BAD)
def test_malformed_price_files_are_config_errors(tmp_path, case):
    text, names = BAD[case]
    path = tmp_path / "prices.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as err:
        cost.load_prices(path)
    assert str(path) in str(err.value) and names in str(err.value)


def test_missing_price_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        cost.load_prices(tmp_path / "prices.yaml")


def test_dollars_and_extrapolated_seconds():
    assert cost.usd(1800, 3.0) == 1.5
    assert cost.usd(1800, 3.0, devices=2) == 3.0  # every device of a torchrun job is paid for
    assert cost.extrapolated_seconds(7e15, 1e13, 0.35) == pytest.approx(2000.0, rel=1e-12)


def test_the_dollar_table_pays_for_every_rank_of_a_torchrun_job():
    """Two seeds of one run on the CPU, one as a single process and one as 2 ranks, each an hour of wall time and
    half an hour to its best validation: $1×, $2× the price and their mean; the FLOPs elsewhere are priced alike."""
    from report.cost_tables import dollar_table

    prices = cost.load_prices()
    price = prices.devices["cpu-2vcpu"].usd_per_hour
    metrics = {1: {"device": "cpu", "device_name": "cpu", "world_size": 1},
               2: {"device": "cpu", "device_name": "cpu", "world_size": 2}}
    results = SimpleNamespace(runs=["r"], seeds={"r": [1, 2]}, metrics={"r": metrics},
                              configs={"r": {"train": {"precision": "fp32"}}})
    seconds = {"wall_time_s": 3600.0, "seconds_to_best": 1800.0, "train_flops": 1e15}
    summary = {"runs": {"r": {"quantities": {name: {"per_seed": {"1": value, "2": value}, "mean": value}
                                             for name, value in seconds.items()}}}}
    row = dollar_table(results, summary, prices).splitlines()[2].split(" | ")
    assert row[1] == f"cpu × 1/2 (cpu-2vcpu, ${price:g}/h each)"
    assert row[2] == f"${1.5 * price:.3g}" and row[3] == f"${0.75 * price:.3g}"


def test_flops_are_priced_on_every_gpu_of_the_table_at_its_peak_and_the_assumed_mfu():
    """The one pricing of FLOPs (the estimate and the report's dollar table): 1e15 FLOPs on an A100 at fp32
    (19.5e12 FLOP/s) × assumed_mfu 0.5 take 1e15 / 9.75e12 s, at $2/h; the CPU entry is not a GPU; no peak at the
    precision, or no FLOPs: no price."""
    prices = cost.Prices(0.5, {"a100": cost.DevicePrice(2.0, "2025-01-01", "test", "A100"),
                               "cpu": cost.DevicePrice(0.1, "2025-01-01", "test", None),
                               "t4": cost.DevicePrice(0.5, "2025-01-01", "test", "T4")})
    assert cost.priced_gpus(prices) == ["a100", "t4"]
    seconds = 1e15 / (19.5e12 * 0.5)
    priced = cost.on_priced_gpus(prices, 1e15, "fp32")
    assert priced["a100"] == (pytest.approx(seconds, rel=1e-15), pytest.approx(seconds / 3600 * 2.0, rel=1e-15))
    assert priced["t4"][0] == pytest.approx(1e15 / (8.1e12 * 0.5), rel=1e-15)
    assert cost.on_priced_gpus(prices, 1e15, "fp8") == {"a100": None, "t4": None}  # no peak at that precision
    assert cost.on_priced_gpus(prices, None, "fp32") == {"a100": None, "t4": None}


def test_counting_a_step_says_nothing_on_stderr(capfd):
    """The count runs the model without its own loss: transformers 5 warns about `loss_type` on a model's first
    loss, which would reach every run's stderr (and a Ctrl-C's one line) from the FLOP count."""
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=40, n_positions=16))
    assert cost.step_flops(model, 2, 8) > 0
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
