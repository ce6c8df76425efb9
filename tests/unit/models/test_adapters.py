"""LoRA runs (model.adapter): the adapter and merged spaces agree, the adapter's HVP is the Hessian's adapter
block, checkpoints hold only the adapter and check their base, and every stage runs on a LoRA run."""

from __future__ import annotations

import json

import pytest
import torch

from data.batches import fixed_batches, tokenize
from models.adapters import adapted_modules, add_adapter, merged
from models.checkpoint import load_trained
from optimization.train_stage import train_stage
from optimization.objective import Objective
from pipeline import run_experiment
from config.schema import AdapterConfig
from utils.errors import CorruptFileError, UserError
from utils.io import save_torch
from models.runs import run_dir, training_fingerprint

LORA = "model: {adapter: {type: lora, r: 4, alpha: 8}}\ntrain: {optimizer: adamw, lr: 0.01, epochs: 2}\n"
pytestmark = pytest.mark.usefixtures("figures_not_drawn")  # what the figures show is test_report's to check
TEXTS = ["the cat sat on the mat", "a dog ran in the park today", "loss landscapes of language models", "lo ra"]


def _batches(tokenizer):
    return fixed_batches(tokenize(TEXTS, tokenizer, 32), 2, tokenizer.eos_token_id)


def _adapted(tiny_model_and_tokenizer, dtype=torch.float32, targets=("c_attn", "c_proj", "c_fc"), r=4):
    model, tokenizer = tiny_model_and_tokenizer
    model = add_adapter(model.to(dtype), AdapterConfig(type="lora", r=r, alpha=2 * r, target_modules=list(targets)), seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B starts at zero; give it weights so that the adapter changes the function
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator, dtype=dtype))
    return model, tokenizer


def test_only_the_adapter_trains_and_the_merged_model_computes_the_same_loss(tiny_model_and_tokenizer):
    model, tokenizer = _adapted(tiny_model_and_tokenizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapter_loss = Objective(model, _batches(tokenizer)).loss()
    plain = merged(model)
    assert all(p.requires_grad for p in plain.parameters()) and not any("lora" in n for n, _ in plain.named_parameters())
    assert abs(Objective(plain, _batches(tokenizer)).loss() - adapter_loss) < 1e-5


def test_the_modules_adapted_are_named_once_each_in_the_models_order(tiny_model_and_tokenizer):
    """GPT-2's c_proj is adapted in attention and in the MLP: named once, where the model first has it."""
    model, _ = _adapted(tiny_model_and_tokenizer, targets=("c_fc", "c_proj", "c_attn"))
    assert adapted_modules(model) == ["c_attn", "c_proj", "c_fc"]


def test_adapter_hvp_is_the_hessian_block_of_the_adapter_weights(tiny_model_and_tokenizer):
    """The full Hessian over the adapter and a base matrix, formed explicitly in float64: its adapter block is
    what the adapter-space Objective's HVP multiplies by."""
    from torch.func import functional_call

    model, tokenizer = _adapted(tiny_model_and_tokenizer, torch.float64, targets=("c_attn",), r=1)
    objective = Objective(model, _batches(tokenizer))
    extra = "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias"  # a frozen weight, also in the Hessian
    names = list(objective.names) + [extra]
    shapes = [dict(model.named_parameters())[n].shape for n in names]
    start = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names])

    def loss(flat):
        chunks = flat.split([s.numel() for s in shapes])
        weights = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        total = 0.0
        for b in objective.batches:
            logits = functional_call(model, weights, (), {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}).logits
            targets = torch.nn.functional.pad(b["labels"][:, 1:], (0, 1), value=-100)
            total = total + torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
                                                              reduction="sum")
        return total / objective.n_tokens

    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        full = torch.autograd.functional.hessian(loss, start)
    d = objective.dim
    block = full[:d, :d]
    assert float(full[:d, d:].abs().max()) > 1e-6  # the block is a block of a larger, coupled Hessian
    hvps = torch.stack([objective.hvp(e) for e in torch.eye(d, dtype=torch.float64)], dim=1)
    assert torch.allclose(hvps, block, atol=1e-10, rtol=1e-8)


def test_a_lora_checkpoint_holds_the_adapter_and_checks_its_base(tiny_experiment, tmp_path):
    exp = tiny_experiment(LORA)
    train_stage(exp, tmp_path, force=False)
    folder = run_dir(tmp_path, exp, exp.runs[0])
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
    init = torch.load(folder / "init.pt", weights_only=True)
    assert set(ckpt["model"]) < set(init["model"]) and all("lora_" in k for k in ckpt["model"])
    assert ckpt["base"]["file"] == "init.pt"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["trainable_parameters"] == sum(v.numel() for v in ckpt["model"].values())
    assert metrics["trainable_parameters"] < metrics["n_parameters"]
    # The base stays as it was: the frozen weights of the trained model are init.pt's.
    trained = load_trained(folder / "checkpoint.pt")
    state = trained.model.state_dict()
    assert all(torch.equal(state[k], init["model"][k]) for k in init["model"] if "lora_" not in k)
    # Metrics agree: the loaded adapter gives the training's test loss.
    assert metrics["fingerprint"] == training_fingerprint(exp.runs[0])
    adapter = load_trained(folder / "checkpoint.pt", space="adapter").model
    plain = load_trained(folder / "checkpoint.pt", space="merged").model
    assert sum(p.numel() for p in plain.parameters() if p.requires_grad) == metrics["n_parameters"] - \
        metrics["trainable_parameters"]
    batches = _batches(trained.tokenizer)
    assert abs(Objective(adapter, batches).loss() - Objective(plain, batches).loss()) < 1e-5

    save_torch(folder / "init.pt", {**init, "model": {k: v + 1 for k, v in init["model"].items()}})  # intact, other
    with pytest.raises(CorruptFileError, match="base weights"):
        load_trained(folder / "checkpoint.pt")


def test_adapter_settings_enter_the_fingerprint_only_when_on(tiny_experiment):
    plain, lora = tiny_experiment().runs[0], tiny_experiment(LORA).runs[0]
    assert training_fingerprint(plain) != training_fingerprint(lora)
    off = tiny_experiment("model: {adapter: {type: none, r: 16}}").runs[0]
    assert training_fingerprint(off) == training_fingerprint(plain)


def test_lora_and_rotation_do_not_combine(tiny_experiment):
    with pytest.raises(UserError, match="rotation"):
        tiny_experiment(LORA, overrides=["train.rotation=global"])


def test_a_target_module_that_the_model_lacks_is_one_clear_error(tiny_experiment, tmp_path):
    exp = tiny_experiment(LORA, overrides=["model.adapter.target_modules=[q_proj]"])
    with pytest.raises(UserError, match="target_modules"):
        train_stage(exp, tmp_path, force=False)


def test_every_stage_runs_on_a_lora_run_in_both_spaces(tiny_experiment, tmp_path):
    text = LORA + """
sharpness: {batches: 2, batch_size: 4, max_iter: 12, random_directions: 2, worst_case_steps: 2, trace_samples: 2,
            merged: true}
landscape: {resolution: 3, points: 5, eval_batches: 2, eval_batch_size: 4}
prune: {fractions: [0.0, 0.5, 0.9], random_seeds: 2, lambda_max_fractions: [0.0, 0.9], rewind: true,
        rewind_fractions: [0.5]}
runs:
  full: {model: {adapter: {type: none}}}
  lora: {}
  lora-merged: {landscape: {space: merged}}
"""
    exp = tiny_experiment(text)
    run_experiment(exp, ["train", "sharpness", "landscape", "prune", "report"], tmp_path)
    folders = {run.name: run_dir(tmp_path, exp, run) for run in exp.runs}
    adapter = json.loads((folders["lora"] / "sharpness.json").read_text())
    merged_space = json.loads((folders["lora"] / "sharpness_merged.json").read_text())
    full = json.loads((folders["full"] / "sharpness.json").read_text())
    assert (adapter["space"], merged_space["space"], full["space"]) == ("adapter", "merged", "full")
    assert adapter["dimension"] < merged_space["dimension"] == full["dimension"]
    assert not (folders["full"] / "sharpness_merged.json").exists() and not (folders["full"] / "prune.json").exists()
    prune = json.loads((folders["lora"] / "prune.json").read_text())
    metrics = json.loads((folders["lora"] / "metrics.json").read_text())
    assert prune["magnitude"][0]["val_loss"] == metrics["val_loss"][-1]  # p = 0 is the trained adapter, exactly
    assert prune["magnitude"][0]["test_loss"] == metrics["test_loss"]
    assert [m["pruned_fraction"] for m in prune["magnitude"]] == [round(f * prune["n_weights"]) / prune["n_weights"]
                                                                  for f in (0.0, 0.5, 0.9)]
    assert prune["rewind"][0]["pruned_weights_nonzero"] == 0
    assert len(prune["lambda_max"]) == 2 and len(prune["random"][1]["seeds"]) == 2
    # init -> final in each run's space; the line between runs in the merged space, where they share coordinates
    between = json.loads((tmp_path / exp.name / "interpolation.json").read_text())
    assert {tuple(p["runs"]) for p in between["pairs"]} == {("full", "lora"), ("full", "lora-merged"), ("lora", "lora-merged")}
    report = (tmp_path / exp.name / "report.md").read_text()
    assert "perplexity_vs_pruned" in report


@pytest.mark.parametrize("targets, unmatched", [("[c_attn, nope]", "nope"), ("[q_proj, v_proj]", "q_proj, v_proj")])
def test_every_target_module_must_match_and_a_miss_exits_2(write_config, tmp_path, capsys, targets, unmatched):
    """peft adapts what matches and ignores the rest: [c_attn, nope] would silently adapt c_attn alone."""
    import run

    code = run.main(["--config", str(write_config(LORA)), "--output", str(tmp_path / "out"), "--stages", "train",
                     "--set", f"model.adapter.target_modules={targets}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"model.adapter.target_modules: {unmatched} match" in err[0]
    assert "(its layers LoRA can adapt: c_attn, c_fc, c_proj, lm_head, wpe, wte)" in err[0]
    assert not list((tmp_path / "out").rglob("*.pt"))
