"""Estimating a config's training FLOPs and dollars before it runs (optimization.estimate)."""

from __future__ import annotations

import math
from pathlib import Path

from transformers import AutoModelForCausalLM, GPT2Config

from models.adapters import add_adapter
from optimization.cost import estimate, step_flops
from optimization.estimate import main

REPO = Path(__file__).resolve().parents[3]


def test_the_estimate_counts_every_step_at_the_largest_batch_shape(tiny_experiment):
    for text in ("", "model: {adapter: {type: lora, r: 2}}\n"):
        run = tiny_experiment(text).runs[0]
        # the bpe tokenizer has at most bpe_vocab_size tokens: the estimate's vocabulary
        model = AutoModelForCausalLM.from_config(GPT2Config(**run.model.config, vocab_size=run.model.bpe_vocab_size))
        if run.model.adapter.type != "none":
            model = add_adapter(model, run.model.adapter, 0)
        per_step = step_flops(model, run.train.batch_size, run.data.max_length)
        steps = run.train.epochs * math.ceil(run.data.n_train / run.train.batch_size)
        assert estimate(run) == {"steps": steps, "flops_per_step": per_step, "flops": steps * per_step}
        budgeted = tiny_experiment(text, overrides=[f"train.budget.flops={2.5 * per_step}"]).runs[0]
        assert estimate(budgeted)["steps"] == 3  # the step that spends the budget


def test_the_paper_scale_config_is_priced_offline(capsys, monkeypatch):
    # Its stages at the CPU's matmul peak × assumed_mfu, as for a model too large to time: timing DistilGPT2's
    # passes here takes seconds (test_stage_cost times tiny models)
    monkeypatch.setattr("optimization.throughput.CALIBRATION_WEIGHTS", 1e6)
    assert main(["--config", str(REPO / "config/exp6-peft.yaml")]) == 0
    out = capsys.readouterr().out
    assert "| full | " in out and "| lora-r8 | " in out and "H100-SXM" in out and "$" in out
    # and each stage of the file, timed on this CPU
    assert "| train | " in out and "| sharpness | " in out and "| prune | " in out and "| all | " in out


def test_an_unknown_stage_is_one_line_and_exit_2(capsys):
    assert main(["--config", str(REPO / "config/quickstart.yaml"), "--stages", "train,sharpnes"]) == 2
    assert capsys.readouterr().err.strip().endswith("--stages: unknown stage 'sharpnes' (stages: train, search, "
                                                    "sharpness, geometry, landscape, prune, correlate, report)")


def test_the_estimate_is_what_training_spends_when_every_text_fills_max_length(write_config, tmp_path):
    """The builtin corpus's texts are longer than the tiny max_length (32 tokens), so no batch is padded: the
    estimate's steps and FLOPs are then exactly those training counts, for full fine-tuning and LoRA, with and
    without a FLOP budget; the report shows the two side by side."""
    from optimization.train_stage import train_stage
    from config.loading import load_experiment
    from models.runs import run_dir
    from report.reader import load_results
    from report.cost_tables import estimate_table

    path = write_config("runs:\n  full: {}\n  lora: {model: {adapter: {type: lora, r: 2}}}\n"
                        "  budgeted: {train: {budget: {flops: 3.0e+8}}}\n")
    experiment = load_experiment(path)
    train_stage(experiment, tmp_path, force=False)
    for run in experiment.jobs():
        metrics = read_metrics(run_dir(tmp_path, experiment, run))
        predicted = estimate(run)
        assert (predicted["steps"], predicted["flops"]) == (metrics["optimizer_steps"], metrics["train_flops"]), run.name
    assert read_metrics(run_dir(tmp_path, experiment, experiment.runs[2]))["budget"]["stopped_by"] == "flops"
    table = estimate_table(load_results(tmp_path, experiment.name))
    assert table.count("| 1.000 |") == 3


def read_metrics(folder: Path) -> dict:
    import json

    return json.loads((folder / "metrics.json").read_text())
