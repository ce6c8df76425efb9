"""What a training step costs: its FLOPs, the device's peak, the MFU, and the price of the hours; a run's training
FLOPs and the FLOPs of a pass of each kind (forward, gradient, HVP, training step) from its config alone.

FLOPs of one training step (forward + backward) of any causal LM, bare or wrapped by peft LoRA, on a batch of B
sequences of T positions (the padded length: what the hardware computes), are what
torch.utils.flop_counter.FlopCounterMode counts when the step runs on the meta device: the model's own forward
and backward with shapes only (no weights copied, no arithmetic done; a step's FLOPs are B times those of one
sequence). What that counts:
  - a matmul weight W with n entries (Linear and GPT-2's Conv1D layers, lm_head, LoRA's lora_A and lora_B) costs
    per token 2n forward; backward 2n for the gradient of its input if that input carries a gradient, plus 2n for
    the gradient of W if W.requires_grad (autograd skips what no trainable parameter needs: with LoRA and frozen
    embeddings, the first block's attention base matmuls have no backward at all).
  - attention costs per layer and sequence 2·T²·d for QKᵀ and 2·T²·d for A·V forward (d = the heads' total width;
    the full T×T matrices, as scaled_dot_product_attention's math form computes them on the meta device, and as
    the counter counts flash attention), and twice that backward when its inputs carry a gradient.
  - embedding lookups, norms, rotary embeddings, activations, softmax, biases and the loss cost nothing.
Full fine-tuning therefore costs exactly 6·N·B·T + 12·L·B·T²·d, N the matmul weights' entries (lm_head included)
and L the layers: the familiar 6·N·tokens plus attention (tests/unit/optimization/test_cost.py checks this and the
counter on real weights with eager attention, for GPT-2, Llama and GPT-NeoX).

MFU (model FLOPs utilisation) = FLOPs / (seconds × peak × devices): the job's FLOPs over what its devices
could have done in its time, so a torchrun job of N ranks (N devices) is measured per device, like one
process. A GPU's peak is its datasheet's dense number (PEAK_FLOPS); the CPU's is measured once per process
and thread count with an fp32 matmul probe, so a CPU run's MFU is against what this machine's BLAS attains,
not a theoretical peak (a CPU torchrun job's devices are its ranks, each with its threads).

Prices (config/prices.yaml) turn seconds into dollars (price × devices × hours), and extrapolate a run's
FLOPs to a device it did not run on at the file's assumed MFU: seconds on one device, which N devices
would divide by N at the same dollars.
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from config.checks import ARCH_PRESETS, scratch_model_config
from config.schema import RunConfig
from models.adapters import add_adapter
from utils.errors import ConfigError, UserError

PRICES_FILE = Path(__file__).resolve().parents[1] / "config" / "prices.yaml"
PRECISIONS = ("fp32", "bf16", "fp16")
GPT2_VOCABULARY = 50257

# ----------------------------------------------------------------------------------------------
# FLOPs of a step.


def _on_meta(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(tensor, device="meta").requires_grad_(tensor.requires_grad)


_COUNTED: dict[tuple, int] = {}  # by (the model's structure, seq_len, backward): runs of a command share models' shapes


def _structure(model) -> tuple:
    """What a model's FLOP count depends on: its modules (their classes and shapes, as its repr lists them), its config,
    its weights' and buffers' shapes, dtypes and which are trained."""
    config = model.config.to_json_string() if hasattr(getattr(model, "config", None), "to_json_string") else None
    tensors = tuple((name, tuple(t.shape), t.dtype, t.requires_grad)
                    for name, t in [*model.named_parameters(), *model.named_buffers()])
    return type(model), repr(model), config, tensors


def _sequence_flops(model, seq_len: int, backward: bool) -> int:
    """FLOPs of the model's forward (and backward) on one sequence of seq_len tokens, counted on the meta device once per
    process for each structure (a count runs the model: 0.15 s a run for a tiny GPT-2, a third of a search trial's time)."""
    key = (_structure(model), seq_len, backward)
    if key not in _COUNTED:
        _COUNTED[key] = _count_on_meta(model, seq_len, backward)
    return _COUNTED[key]


def _count_on_meta(model, seq_len: int, backward: bool) -> int:
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    shapes = {name: _on_meta(t) for name, t in [*model.named_parameters(), *model.named_buffers()]}
    tokens = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
    try:
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(backward):
            # Our loss on the logits (optimization.evaluation), not the model's own (`labels`: a warning in
            # transformers 5 for every model without a loss_type); the loss adds no matmul, any scalar of the
            # logits backpropagates through the same ones.
            loss = functional_call(model, shapes, (), {"input_ids": tokens}).logits.sum()
            if backward and loss.requires_grad:
                loss.backward()
    except (NotImplementedError, RuntimeError) as err:  # an operation with no meta kernel, or that reads values
        raise ValueError(f"the model's step cannot be counted on the meta device ({str(err).splitlines()[0]})") from None
    return counter.get_total_flops()


def step_flops(model, batch_size: int, seq_len: int) -> int:
    """Matmul FLOPs of one training step (forward + backward) on batch_size sequences of seq_len."""
    return batch_size * _sequence_flops(model, seq_len, backward=True)


def forward_flops(model, batch_size: int, seq_len: int) -> int:
    """Matmul FLOPs of one forward pass (an evaluation batch)."""
    return batch_size * _sequence_flops(model, seq_len, backward=False)


# ----------------------------------------------------------------------------------------------
# A run's model from its config (shapes only), its training steps and the FLOPs of each kind of pass
# (optimization.stage_cost counts the passes of every stage).

def model_config(run: RunConfig):
    """The transformers config of the run's model (no weights): GPT-2-family shapes from config.checks.ARCH_PRESETS
    (distilgpt2 and gpt2 need no download), other hub models from their config (local cache or hub)."""
    from transformers import GPT2Config

    cfg = run.model
    vocabulary = {"bytes": 257, "bpe": cfg.bpe_vocab_size}.get(cfg.tokenizer, GPT2_VOCABULARY)
    if cfg.init == "scratch":
        return scratch_model_config(cfg, vocabulary, vocabulary - 1)  # an end token in the vocabulary; no FLOPs
    if cfg.name in ARCH_PRESETS:
        return GPT2Config(**ARCH_PRESETS[cfg.name], vocab_size=GPT2_VOCABULARY)
    return hub_model_config(run)


def hub_model_config(run: RunConfig):
    """The transformers config of model.name at model.revision, from the local cache or the hub (kilobytes)."""
    from transformers import AutoConfig

    from utils.hub import load_from_hub

    cfg = run.model
    return load_from_hub(AutoConfig.from_pretrained, cfg.name, "model config",
                         **({"revision": cfg.revision} if cfg.revision else {}))


def model_on_meta(run: RunConfig, adapter: bool = True):
    """The run's model (with its adapter, unless `adapter` is False: a LoRA run's merged model) as shapes only."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(run))
    return add_adapter(model, run.model.adapter, 0) if adapter and run.model.adapter.type != "none" else model


_SEQUENCE_FLOPS: dict[tuple, tuple[float, float]] = {}  # by (model settings, merged, max_length)


def sequence_flops(run: RunConfig, merged: bool = False) -> tuple[float, float]:
    """(forward, gradient) FLOPs of one sequence of data.max_length tokens, counted once per model and length (a report
    and the stage estimates ask for every run of an experiment, and most share both)."""
    key = (repr(run.model), merged, run.data.max_length)
    if key not in _SEQUENCE_FLOPS:
        model = model_on_meta(run, adapter=not merged)
        _SEQUENCE_FLOPS[key] = (forward_flops(model, 1, run.data.max_length), step_flops(model, 1, run.data.max_length))
    return _SEQUENCE_FLOPS[key]


def estimate(run: RunConfig) -> dict:
    """Steps, FLOPs per step (at most) and training FLOPs (at most) of one run (optimization.estimate's table)."""
    try:
        per_step = run.train.batch_size * sequence_flops(run)[1]
    except ValueError as err:
        raise UserError(f"run {run.name}: no FLOP estimate: {err}") from None
    steps = run.train.epochs * math.ceil(run.data.n_train / run.train.batch_size)
    if run.train.budget.flops:
        steps = min(steps, math.ceil(run.train.budget.flops / per_step))
    return {"steps": steps, "flops_per_step": per_step, "flops": steps * per_step}


# Reverse-over-reverse HVPs against one gradient on the same batch, timed side by side on a CPU (bench/README.md,
# "Sharpness: HVP cost and eigen-solvers") at DistilGPT2's shape: an HVP that builds its batch's gradient graph (a
# forward and a backward with create_graph) costs 3.0 gradients, one that differentiates a kept graph again 1.8
# (optimization.objective keeps them between products at the same weights; on a tiny model with GPT-2's vocabulary
# 2.3 and 1.4). So a graph costs 1.2 gradients and each product on it 1.8.
HVP_PER_GRADIENT = 1.81
GRAPH_PER_GRADIENT = 1.2


def kind_flops(run: RunConfig, kind: str, merged: bool = False) -> float:
    """FLOPs of one pass of `kind` over one sequence of data.max_length tokens ("graph": the forward and backward an
    HVP builds to differentiate again, "hvp": that second differentiation)."""
    forward, gradient = sequence_flops(run, merged)
    return {"forward": forward, "gradient": gradient, "graph": GRAPH_PER_GRADIENT * gradient,
            "hvp": HVP_PER_GRADIENT * gradient, "step": gradient}[kind]


# ----------------------------------------------------------------------------------------------
# Device peaks.

# Dense peak FLOP/s (no 2:4 sparsity). fp32: plain FP32, not TF32 (PyTorch's default fp32 matmul
# precision is "highest"). bf16: BF16 tensor cores with FP32 accumulation, as autocast runs them, or
# FP16 tensor cores on cards without BF16 (V100, T4).
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "V100 SXM2": {"fp32": 15.7e12, "bf16": 125e12},    # NVIDIA V100 datasheet (FP16 tensor)
    "V100 PCIe": {"fp32": 14e12, "bf16": 112e12},      # NVIDIA V100 datasheet (FP16 tensor)
    "T4": {"fp32": 8.1e12, "bf16": 65e12},             # NVIDIA T4 datasheet (FP16/FP32 mixed precision)
    "A10": {"fp32": 31.2e12, "bf16": 125e12},          # NVIDIA A10 datasheet
    "A10G": {"fp32": 35e12, "bf16": 70e12},            # no NVIDIA datasheet: AWS's figures (Baseten, "A10 vs A10G")
    "A100": {"fp32": 19.5e12, "bf16": 312e12},         # NVIDIA A100 datasheet (SXM and PCIe, 40 and 80 GB)
    "L4": {"fp32": 30.3e12, "bf16": 121e12},           # NVIDIA L4 datasheet (242 with sparsity)
    "L40S": {"fp32": 91.6e12, "bf16": 362.05e12},      # NVIDIA L40S datasheet (733 with sparsity)
    "H100 SXM": {"fp32": 67e12, "bf16": 989.5e12},     # NVIDIA H100 datasheet (1,979 with sparsity)
    "H100 PCIe": {"fp32": 51e12, "bf16": 756.5e12},    # NVIDIA H100 datasheet (1,513 with sparsity)
    "H100 NVL": {"fp32": 60e12, "bf16": 835.5e12},     # NVIDIA H100 datasheet (1,671 with sparsity)
    "H200": {"fp32": 67e12, "bf16": 989.5e12},         # NVIDIA H200 datasheet, H200 SXM (1,979 with sparsity)
    "H200 NVL": {"fp32": 60e12, "bf16": 835.5e12},     # NVIDIA H200 datasheet (1,671 with sparsity)
    "RTX 3090": {"fp32": 35.6e12, "bf16": 71e12},      # NVIDIA Ampere GA102 architecture whitepaper
    "RTX 4090": {"fp32": 82.6e12, "bf16": 165.2e12},   # NVIDIA Ada Lovelace architecture whitepaper
}
for _peaks in PEAK_FLOPS.values():  # dense fp16 tensor peaks equal bf16's from Ampere on; V100's and T4's
    _peaks["fp16"] = _peaks["bf16"]  # "bf16" figures above are their fp16 ones (they have no bf16 units)

# torch.cuda.get_device_name patterns (case-insensitive) and their PEAK_FLOPS key, most specific first;
# e.g. "NVIDIA H100 80GB HBM3" is the SXM card, "NVIDIA H100 PCIe" the PCIe one, "Tesla V100-SXM2-16GB".
GPU_NAMES: list[tuple[str, str]] = [
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe"),
    (r"\bH100\b.*\bNVL\b", "H100 NVL"),
    (r"\bH100\b", "H100 SXM"),
    (r"\bH200\b.*\bNVL\b", "H200 NVL"),
    (r"\bH200\b", "H200"),
    (r"\bA100\b", "A100"),
    (r"\bA10G\b", "A10G"),
    (r"\bA10\b", "A10"),
    (r"\bL40S\b", "L40S"),
    (r"\bL4\b", "L4"),
    (r"\bV100-PCIE\b", "V100 PCIe"),
    (r"\bV100-SXM2\b", "V100 SXM2"),
    (r"\bT4\b", "T4"),
    (r"\bRTX 3090$", "RTX 3090"),
    (r"\bRTX 4090$", "RTX 4090"),
]


def gpu_peak_key(name: str) -> str | None:
    """The PEAK_FLOPS key of a GPU named as torch.cuda.get_device_name names it; None if unknown."""
    for pattern, key in GPU_NAMES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return key
    return None


def peak_for_name(name: str, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from) of a GPU named as torch.cuda.get_device_name names it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    key = gpu_peak_key(name)
    if key is None:
        return None, f"unknown GPU {name}: add it to optimization.cost.PEAK_FLOPS"
    return PEAK_FLOPS[key][precision], f"datasheet: {key}, dense {precision}"


@functools.cache
def _matmul_rate(threads: int) -> float:
    """The best FLOP/s of a few 1024² fp32 matmuls after a warm-up (about 0.2 s on one core)."""
    size, best = 1024, math.inf
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def cpu_matmul_peak() -> float:
    """The CPU's fp32 matmul FLOP/s with the current torch thread count, measured once per process."""
    return _matmul_rate(torch.get_num_threads())


def device_peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from) of the device a run trains on; None where it is not known."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if device.type == "cuda":
        return peak_for_name(torch.cuda.get_device_name(device), precision)
    if device.type == "cpu":
        if precision != "fp32":
            return None, f"no {precision} peak for the CPU: the probe measures fp32"
        threads = torch.get_num_threads()
        return cpu_matmul_peak(), f"measured: fp32 matmul probe, {threads} thread{'s' if threads > 1 else ''}"
    return None, f"no peak known for {device.type} devices"


def mfu(flops: float, seconds: float, peak: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilisation: the share of its devices' peak (`peak` each) that a job's FLOPs used in `seconds`;
    None without a peak."""
    if peak is None or seconds <= 0:
        return None
    return flops / (seconds * peak * devices)


# ----------------------------------------------------------------------------------------------
# Prices.


@dataclass(frozen=True)
class DevicePrice:
    usd_per_hour: float
    as_of: str
    source: str
    peak: str | None  # its PEAK_FLOPS key; None for a CPU


@dataclass(frozen=True)
class Prices:
    assumed_mfu: float  # for extrapolating a run to a device it did not run on
    devices: dict[str, DevicePrice]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _device_price(path: Path, name, entry) -> DevicePrice:
    where = f"{path}: device {name!r}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping of usd_per_hour, as_of, source and peak")
    unknown = set(entry) - {"usd_per_hour", "as_of", "source", "peak"}
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(map(str, unknown))}")
    price = entry.get("usd_per_hour")
    if not _is_number(price) or price < 0:
        raise ConfigError(f"{where} needs usd_per_hour, a number ≥ 0 (got {price!r})")
    for key in ("as_of", "source"):
        if not str(entry.get(key) or "").strip():
            raise ConfigError(f"{where} needs {key}: every price names its date and source")
    peak = entry.get("peak")
    if peak is not None and peak not in PEAK_FLOPS:
        raise ConfigError(f"{where} has peak {peak!r}, which is not a key of optimization.cost.PEAK_FLOPS")
    return DevicePrice(float(price), str(entry["as_of"]), str(entry["source"]), peak)


def load_prices(path: Path = PRICES_FILE) -> Prices:
    """The price table; a missing or malformed file is reported with its path."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: price table not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a readable YAML file ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("devices"), dict):
        raise ConfigError(f"{path}: expected a mapping with assumed_mfu and devices")
    assumed = raw.get("assumed_mfu")
    if not _is_number(assumed) or not 0 < assumed <= 1:
        raise ConfigError(f"{path}: assumed_mfu must be a number in (0, 1] (got {assumed!r})")
    devices = {str(name): _device_price(path, name, entry) for name, entry in raw["devices"].items()}
    return Prices(float(assumed), devices)


def usd(seconds: float, usd_per_hour: float, devices: int = 1) -> float:
    """What `devices` devices at `usd_per_hour` each cost for `seconds`."""
    return seconds / 3600 * usd_per_hour * devices


def extrapolated_seconds(total_flops: float, peak_flops: float, mfu: float) -> float:
    """How long total_flops would take on a device of this peak at this utilisation."""
    return total_flops / (peak_flops * mfu)


def priced_gpus(prices: Prices) -> list[str]:
    """The GPUs of the price table (entries with a peak), in the file's order."""
    return [name for name, price in prices.devices.items() if price.peak]


def on_priced_gpus(prices: Prices, flops: float | None, precision: str) -> dict[str, tuple[float, float] | None]:
    """{GPU: (seconds on one such GPU, dollars)} for `flops` at `precision`, at its peak × assumed_mfu, for each of
    priced_gpus; None where there are no FLOPs or the GPU has no peak at that precision."""
    priced = {}
    for name in priced_gpus(prices):
        price = prices.devices[name]
        peak = PEAK_FLOPS[price.peak].get(precision)
        if flops is None or not peak:
            priced[name] = None
            continue
        seconds = extrapolated_seconds(flops, peak, prices.assumed_mfu)
        priced[name] = (seconds, usd(seconds, price.usd_per_hour))
    return priced


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def price_for_device(prices: Prices, device_description: str) -> tuple[str, DevicePrice] | None:
    """The price entry of a run's device ("NVIDIA A100-SXM4-80GB", "cpu", or an entry's own name);
    None when it is not priced. Among entries of the same GPU, the one sharing most words with the
    description wins (A100-80GB for an 80GB card), then the first in the file."""
    description = device_description.strip()
    for name, price in prices.devices.items():
        if name.lower() == description.lower():
            return name, price
    if description.lower() == "cpu":
        candidates = [(name, price) for name, price in prices.devices.items()
                      if price.peak is None and "cpu" in _words(name)]
    else:
        key = gpu_peak_key(description)
        candidates = [(name, price) for name, price in prices.devices.items() if key and price.peak == key]
    if not candidates:
        return None
    words = _words(description)
    return max(candidates, key=lambda item: len(_words(item[0]) & words))
