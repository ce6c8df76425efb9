"""The prune stage on architectures other than GPT-2 (a tiny Llama and a tiny GPT-NeoX, LoRA on peft's default
targets for each): every measurement of prune.json, and the report's adapter table naming the modules adapted."""

from __future__ import annotations

import json

import pytest

from config.loading import load_experiment
from models.runs import experiment_dir, run_dir
from pipeline import run_experiment

pytestmark = pytest.mark.usefixtures("figures_not_drawn")  # what the figures show is test_report's to check
ARCHITECTURES = """
experiment: prune-any
device: cpu
stages: [train, prune, report]
data: {source: builtin, n_train: 32, n_val: 16, n_test: 16, max_length: 32}
model: {init: scratch, tokenizer: bpe, bpe_vocab_size: 300, adapter: {type: lora, r: 2, alpha: 4}}
train: {optimizer: adamw, lr: 0.01, batch_size: 8, epochs: 1, eval_batch_size: 8}
sharpness: {batches: 1, batch_size: 4, max_iter: 6}
prune: {fractions: [0.0, 0.5], random_seeds: 1, lambda_max_fractions: [0.5], rewind: true, rewind_fractions: [0.5]}
runs:
  llama:
    model: {config: {model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
                     num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 32}}
  neox:
    model: {config: {model_type: gpt_neox, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
                     num_attention_heads: 4, max_position_embeddings: 32}}
"""


def test_llama_and_gpt_neox_lora_runs_are_pruned_and_reported_with_the_modules_adapted(write_config, tmp_path):
    experiment = load_experiment(write_config(ARCHITECTURES, tiny=False), [])
    run_experiment(experiment, ["train", "prune", "report"], tmp_path)
    adapted = {"llama": ["q_proj", "v_proj"], "neox": ["query_key_value"]}  # peft's defaults for each
    for run in experiment.runs:
        folder = run_dir(tmp_path, experiment, run)
        metrics = json.loads((folder / "metrics.json").read_text())
        prune = json.loads((folder / "prune.json").read_text())
        assert metrics["adapted_modules"] == adapted[run.name]
        assert prune["n_weights"] == metrics["trainable_parameters"]
        assert prune["magnitude"][0]["val_loss"] == metrics["val_loss"][-1]  # p = 0 is the trained adapter, exactly
        assert prune["magnitude"][1]["pruned_fraction"] == round(0.5 * prune["n_weights"]) / prune["n_weights"]
        assert prune["lambda_max"][0]["lambda_max"] > 0 and prune["random"][1]["seeds"][0]["val_loss"] > 0
        assert prune["rewind"][0]["pruned_weights_nonzero"] == 0
    report = (experiment_dir(tmp_path, experiment) / "report.md").read_text()
    assert "LoRA r=2, α=4, on q_proj, v_proj |" in report and "LoRA r=2, α=4, on query_key_value |" in report
    assert "c_attn" not in report and "## Missing" not in report
