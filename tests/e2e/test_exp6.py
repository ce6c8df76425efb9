"""Experiment 6 (parameter-efficient fine-tuning and cost) end to end, offline: config/exp6-peft-small.yaml through
run.py to report.md and the notebook, on a trimmed budget: full fine-tuning and two LoRA ranks under one FLOP
budget, geometry in both weight spaces, the pruning figure, the cost table in dollars."""

from __future__ import annotations

import json

import pytest

import run
from optimization.cost import PEAK_FLOPS, load_prices
from tests.conftest import execute_notebook, shipped_config_args

pytestmark = pytest.mark.usefixtures("checked_figures")  # every figure drawn passes visualization.figure_check
TRIMMED = ["train.budget.flops=1.5e9", "data.n_train=64", "sharpness.max_iter=8", "landscape.resolution=3",
           "landscape.points=5", "landscape.eval_batches=2", "prune.fractions=[0.0,0.5,0.9]", "prune.random_seeds=2",
           "prune.lambda_max_fractions=[0.0,0.9]", "prune.rewind_fractions=[0.5]", "prune.rewind_epochs=1"]
# exp6-peft.yaml sets report.prices (a CPU run is priced in dollars only when asked): its dollar table is checked


def test_exp6_small_runs_end_to_end_with_its_figures_tables_and_notebook(tmp_path):
    out = tmp_path / "results"
    # the config's stages: train, sharpness, landscape, prune, report
    assert run.main(shipped_config_args("exp6-peft-small.yaml", out, TRIMMED)) == 0
    folder = out / "exp6-peft-small"
    report = (folder / "report.md").read_text()
    assert "## Missing" not in report
    assert json.loads((folder / "full" / "seed-42" / "metrics.json").read_text())["started_from"]["run"] == "base"
    section = report.split("## Parameter-efficient fine-tuning")[1].split("\n## ")[0]
    for text in ("figures/perplexity_vs_budget.png", "figures/perplexity_vs_pruned.png", "λ_max (merged)",
                 "LoRA r=2", "LoRA r=8", "full fine-tuning", "val ppl, random"):
        assert text in section, text
    cost = report.split("## Cost")[1]
    assert "on H100-SXM" in cost and "cpu-2vcpu" in cost
    # Each dollar figure from its definition: FLOPs / (peak × assumed_mfu) hours at the GPU's price; the seconds
    # to the best validation are those recorded at the validation with the lowest perplexity.
    prices = load_prices()
    full = json.loads((folder / "full" / "seed-42" / "metrics.json").read_text())
    h100 = prices.devices["H100-SXM"]
    seconds = full["train_flops"] / (PEAK_FLOPS[h100.peak]["fp32"] * prices.assumed_mfu)
    row = next(line for line in cost.splitlines() if line.startswith("| full | cpu"))
    assert f"${seconds / 3600 * h100.usd_per_hour:.3g} ({seconds:.3g} s)" in row
    best = min(range(len(full["val_perplexity"])), key=full["val_perplexity"].__getitem__)
    cpu = prices.devices["cpu-2vcpu"].usd_per_hour
    assert f"${full['at_seconds'][best] / 3600 * cpu:.3g}" in row.split(" | ")[3]
    summary = json.loads((folder / "summary.json").read_text())["runs"]["full"]["quantities"]
    assert summary["best_val_perplexity"]["mean"] == full["val_perplexity"][best]
    assert summary["flops_to_best"]["mean"] == full["at_flops"][best]
    steps = {}
    for name in ("full", "lora-r2", "lora-r8"):
        metrics = json.loads((folder / name / "seed-42" / "metrics.json").read_text())
        assert metrics["budget"]["stopped_by"] == "flops" and metrics["train_flops"] >= 1.5e9
        steps[name] = metrics["optimizer_steps"]
    assert steps["lora-r2"] > steps["full"]  # equal FLOPs buy the small adapter more steps
    for name in ("lora-r2", "lora-r8"):
        seed_dir = folder / name / "seed-42"
        assert json.loads((seed_dir / "sharpness_merged.json").read_text())["space"] == "merged"
        prune = json.loads((seed_dir / "prune.json").read_text())
        assert [m["fraction"] for m in prune["magnitude"]] == [0.0, 0.5, 0.9]
        assert prune["rewind"][0]["pruned_weights_nonzero"] == 0

    notebook = execute_notebook(out)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o.metadata.get("figure") for o in outputs if "image/png" in o.get("data", {})]
    assert {"perplexity_vs_budget", "perplexity_vs_pruned"} <= set(figures)
    tables = "\n".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    assert "| FLOPs in all |" in tables and "| measured / estimate |" in tables  # as report.md shows them
