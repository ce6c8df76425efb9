"""Any decoder-only causal LM end to end, offline: config/anymodel-small.yaml (a tiny Llama and a tiny GPT-NeoX
trained from scratch, GPT-NeoX measured as is) through every measuring stage to the report, and published models
measured as is (train.epochs: 0) in a sweep over model.name, local folders standing in for hub revisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import run
from tests.conftest import shipped_config_args
from utils.io import load_torch

pytestmark = pytest.mark.usefixtures("checked_figures")  # every figure drawn passes visualization.figure_check
TRIMMED = ["data.n_train=64", "sharpness.max_iter=12", "sharpness.trace_samples=2", "geometry.cauchy_vectors=8",
           "geometry.bootstrap=5", "geometry.frobenius_probes=4", "landscape.resolution=3", "landscape.points=5"]


def metrics_of(folder: Path, name: str) -> dict:
    return json.loads((folder / name / "seed-42" / "metrics.json").read_text())


def test_anymodel_small_trains_llama_and_gpt_neox_and_measures_one_as_is(tmp_path):
    out = tmp_path / "results"
    # the config's stages: train, sharpness, geometry, landscape, report
    assert run.main(shipped_config_args("anymodel-small.yaml", out, TRIMMED)) == 0
    folder = out / "anymodel-small"
    for name, model_type in (("llama", "llama"), ("neox", "gpt_neox")):
        metrics = metrics_of(folder, name)
        assert metrics["train_flops"] > 0 and metrics["mfu"] > 0 and metrics["val_loss"][-1] < metrics["init_val_loss"]
        assert load_torch(folder / name / "seed-42" / "checkpoint.pt")["model_config"]["model_type"] == model_type
    as_is = metrics_of(folder, "neox-as-is")
    assert as_is["optimizer_steps"] == 0 and as_is["train_flops"] == 0 and as_is["distance_from_init"] == 0
    assert as_is["init_val_loss"] == metrics_of(folder, "neox")["init_val_loss"]  # the same initial weights
    report = (folder / "report.md").read_text()
    assert "## Missing" not in report
    assert not (folder / "neox-as-is" / "seed-42" / "interpolation.json").exists()  # no training path: no flat line
    assert "no training path and no init → final line: neox-as-is." in report
    shown = json.loads((folder / "summary.json").read_text())["runs"]["neox-as-is"]["quantities"]
    assert shown["val_loss"]["mean"] == as_is["init_val_loss"] and shown["test_loss"]["mean"] == as_is["test_loss"]
    for name in ("llama", "neox", "neox-as-is"):
        assert f"| {name} |" in report.split("## Sharpness")[1]
        assert json.loads((folder / name / "seed-42" / "sharpness.json").read_text())["lambda_max"] > 0


def save_model(folder: Path, seed: int) -> None:
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    from models.models import byte_tokenizer

    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_a_sweep_over_saved_checkpoints_measures_each_as_is(tmp_path, write_config):
    """Two folders saved with save_pretrained stand in for a model family's public checkpoints (model.revision
    on the hub): each is measured as saved, with no training, through sharpness and the report."""
    steps = [tmp_path / "step1000", tmp_path / "step2000"]
    for seed, folder in enumerate(steps):
        save_model(folder, seed)
    config = write_config(f"""
        experiment: family
        model: {{init: pretrained, name: '', tokenizer: '', config: {{}}}}
        train: {{epochs: 0}}
        sweep: {{grid: {{model.name: [{steps[0]}, {steps[1]}]}}}}
        sharpness: {{max_iter: 8}}
        """)
    out = tmp_path / "results"
    assert run.main(["--config", str(config), "--output", str(out), "--stages", "train,sharpness,report"]) == 0
    runs = sorted(p.parent.name for p in (out / "family").glob("*/seed-42"))
    assert len(runs) == 2
    for name, folder in zip(runs, steps):
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(folder)
        measured = load_torch(out / "family" / name / "seed-42" / "checkpoint.pt")
        assert all(torch.equal(measured["model"][key], value) for key, value in saved.state_dict().items()
                   if key in measured["model"])
        metrics = metrics_of(out / "family", name)
        assert metrics["optimizer_steps"] == 0 and metrics["epochs"] == 0 and metrics["test_loss"] > 0
        assert json.loads((out / "family" / name / "seed-42" / "sharpness.json").read_text())["lambda_max"] > 0
    assert "## Sharpness" in (out / "family" / "report.md").read_text()
