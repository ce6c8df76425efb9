"""Experiment 5 (geometry along the way) end to end, offline: config/exp5-dynamics-small.yaml through run.py to
report.md and the notebook, on a trimmed budget: the tracked sharpness with its thresholds, the spectral density
and the PCA-path surface, for an SGD and an Adam run."""

from __future__ import annotations

import json

import numpy as np
import pytest

import run
from tests.conftest import execute_notebook, shipped_config_args

pytestmark = pytest.mark.usefixtures("checked_figures")  # every figure drawn passes visualization.figure_check
TRIMMED = ["train.epochs=2", "data.n_train=64", "sharpness.max_iter=8", "sharpness.density.probes=2",
           "sharpness.density.steps=12", "landscape.resolution=5", "landscape.points=5", "landscape.eval_batches=2"]


def test_exp5_small_runs_end_to_end_with_its_figures_tables_and_notebook(tmp_path):
    out = tmp_path / "results"
    # the config's stages: train, sharpness, landscape, report
    assert run.main(shipped_config_args("exp5-dynamics-small.yaml", out, TRIMMED)) == 0
    folder = out / "exp5-dynamics-small"
    report = (folder / "report.md").read_text()
    assert "## Missing" not in report
    section = report.split("## Along training")[1].split("\n## ")[0]
    for text in ("figures/sharpness_along_training.png", "figures/spectral_density.png", "2/η",
                 "figures/surface_2d_sgd_seed-42.png", "figures/surface_2d_adam_seed-42.png", "mass below −τ (τ = σ)"):
        assert text in section, text
    for name in ("sharpness_along_training", "spectral_density", "surface_2d_sgd_seed-42", "surface_2d_adam_seed-42"):
        assert (folder / "figures" / f"{name}.png").is_file()

    for run_name, lr in (("sgd", 0.3), ("adam", 3e-3)):
        seed_dir = folder / run_name / "seed-42"
        track = json.loads((seed_dir / "track.json").read_text())
        assert [p["step"] for p in track["points"]] == list(range(0, 16 + 1, 4))  # 8 steps per epoch
        if run_name == "sgd":
            assert track["points"][-1]["threshold"] == pytest.approx((2 + 2 * 0.9) / lr)
        else:
            assert track["points"][-1]["preconditioned_threshold"] == pytest.approx(38 / lr)
            assert track["points"][-1]["preconditioned_lambda_max"] > track["points"][-1]["lambda_max"]
        density = json.loads((seed_dir / "density.json").read_text())
        assert density["probes"] == 2 and density["matvecs"] == 24 and 0 <= density["mass_below_minus_tau"] <= 1
        assert density["tau"] == density["sigma"] > 0
        sharpness = json.loads((seed_dir / "sharpness.json").read_text())
        assert density["nodes"][0][-1] == pytest.approx(sharpness["lambda_max"], rel=0.05)  # the top outlier
        surface = np.load(seed_dir / "landscape_2d.npz")
        path = surface["path_coordinates"]
        assert path.shape == (9, 2) and np.abs(path[-1]).max() < 1e-3 * np.abs(path).max()  # it ends at the model
        assert 0 < surface["explained_variance"].sum() <= 1 + 1e-9
        assert surface["alphas"].max() >= np.abs(path[:, 0]).max()  # the grid holds the path
    quantities = json.loads((folder / "summary.json").read_text())["runs"]
    sgd_last = json.loads((folder / "sgd" / "seed-42" / "track.json").read_text())["points"][-1]
    assert quantities["sgd"]["quantities"]["track_edge_ratio"]["mean"] == \
        pytest.approx(sgd_last["lambda_max"] / sgd_last["threshold"])
    adam_last = json.loads((folder / "adam" / "seed-42" / "track.json").read_text())["points"][-1]
    assert quantities["adam"]["quantities"]["track_preconditioned_edge_ratio"]["mean"] == \
        pytest.approx(adam_last["preconditioned_lambda_max"] / adam_last["preconditioned_threshold"])
    assert quantities["adam"]["quantities"]["track_edge_ratio"]["mean"] is None  # Adam has no line for λ_max(H)
    assert quantities["sgd"]["quantities"]["density_mass_below_minus_tau"]["mean"] == pytest.approx(
        json.loads((folder / "sgd" / "seed-42" / "density.json").read_text())["mass_below_minus_tau"])
    metrics = json.loads((folder / "adam" / "seed-42" / "metrics.json").read_text())
    assert metrics["track"]["points"] == 5 and metrics["trajectory"]["rows"] == 9

    notebook = execute_notebook(out)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    tables = "\n".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    assert "÷ (2+2β)/η" in tables and "mass below −τ (τ = σ)" in tables
