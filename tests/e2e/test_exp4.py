"""Experiment 4 (ℓ∞ geometry) end to end, offline: config/exp4-geometry-small.yaml through run.py to report.md
and the notebook, on a trimmed budget."""

from __future__ import annotations

import json

import pytest

import run
from tests.conftest import execute_notebook, shipped_config_args

pytestmark = pytest.mark.usefixtures("checked_figures")  # every figure drawn passes visualization.figure_check
TRIMMED = ["train.epochs=1", "geometry.cauchy_vectors=6", "geometry.bootstrap=5", "geometry.frobenius_probes=3",
           "sharpness.max_iter=8", "data.n_train=32"]


def test_exp4_small_runs_end_to_end_with_its_table_figures_and_notebook(tmp_path, capsys):
    out = tmp_path / "results"
    args = shipped_config_args("exp4-geometry-small.yaml", out, TRIMMED, "--runs", "sgd", "sgd-rotated", "adam",
                               "adam-rotated")
    assert run.main(args) == 0  # the config's stages: train, geometry, report
    folder = out / "exp4-geometry-small"
    assert json.loads((folder / "experiment.json").read_text())["stages"] == ["train", "geometry", "report"]
    report = (folder / "report.md").read_text()
    section = report.split("## ℓ∞ geometry")[1].split("\n## ")[0]
    for text in ("‖H‖₁,₁/(d‖H‖₂)", "‖RᵀHR‖₁,₁/d", "figures/loss_per_step.png", "figures/geometry_norms.png",
                 "rotated (global, seed 0)", "Cauchy vectors"):
        assert text in section, text
    assert "## Missing" not in report  # nothing of sharpness or landscapes: not stages of this experiment
    assert "## Sharpness" not in report and "## 2D loss surfaces" not in report
    for name in ("loss_per_step", "geometry_norms"):
        assert (folder / "figures" / f"{name}.png").is_file()
    summary = json.loads((folder / "summary.json").read_text())["runs"]
    # SGD cannot tell the rotated loss from the loss: the same path, the same minimum
    assert summary["sgd"]["quantities"]["train_loss"]["mean"] == \
        pytest.approx(summary["sgd-rotated"]["quantities"]["train_loss"]["mean"], rel=1e-4)
    assert summary["adam"]["quantities"]["original_spectral_norm"]["mean"] == pytest.approx(
        summary["adam"]["quantities"]["rotated_spectral_norm"]["mean"], rel=0.05)

    notebook = execute_notebook(out)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 3  # learning curves, loss per step, norms
    tables = "\n".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    assert "‖·‖₁,₁ by median [CI]" in tables and "‖·‖₁,₁ by half-IQR [CI]" in tables  # the geometry detail table
