"""report.summary's curves for the figures."""

from __future__ import annotations

from pathlib import Path

from report.experiment_results import ExperimentResults
from report.summary import step_loss_curves


def test_a_rotated_run_is_grouped_with_the_run_it_differs_from_only_in_the_rotation():
    def config(name, width, rotation="none"):
        return {"name": name, "seed": 42, "model": {"config": {"n_embd": width}},
                "train": {"optimizer": "adam", "rotation": rotation, "rotation_seed": 0}}

    configs = {"adam": config("adam", 64), "adam-width32": config("adam-width32", 32),
               "adam-rotated": config("adam-rotated", 64, "global"),
               "adam-width32-rotated": config("adam-width32-rotated", 32, "global")}
    results = ExperimentResults("exp4", Path("."), list(configs), {run: [42] for run in configs}, configs,
                                metrics={run: {42: {"step_loss": [3.0, 2.0]}} for run in configs})
    curves = step_loss_curves(results)
    assert {run: (curve["group"], curve["rotation"]) for run, curve in curves.items()} == {
        "adam": ("adam", "none"), "adam-width32": ("adam-width32", "none"),
        "adam-rotated": ("adam", "global"), "adam-width32-rotated": ("adam-width32", "global")}
