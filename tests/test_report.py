"""The report stage and results.ipynb: every table and figure from saved results, with the right numbers."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from pipeline import run_experiment
from utils.layout import run_dir

REPO = Path(__file__).resolve().parents[1]

SMALL = """
seeds: [1, 2]
train: {epochs: 1}
sharpness: {max_iter: 6, epsilons: [1e-3, 1e-1], random_directions: 2, worst_case_steps: 2, trace_samples: 2}
landscape: {resolution: 3, points: 5, eval_batches: 1, eval_batch_size: 4}
runs:
  small: {train: {batch_size: 4}}
  large: {train: {batch_size: 16}}
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results folder made by the project's own stages: 2 runs x 2 seeds, every stage."""
    from utils.config import load_experiment
    from tests.conftest import TINY

    folder = tmp_path_factory.mktemp("report")
    (folder / "tiny.yaml").write_text(TINY)
    (folder / "small.yaml").write_text("extends: tiny.yaml\n" + SMALL)
    experiment = load_experiment(folder / "small.yaml")
    run_experiment(experiment, ["train", "sharpness", "landscape", "report"], folder / "out")
    return experiment, folder / "out"


def _mean_stderr(values):
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def test_summary_holds_per_seed_values_means_and_standard_errors(results):
    experiment, out = results
    summary = json.loads((out / "small" / "summary.json").read_text())
    assert list(summary["runs"]) == ["small", "large"]
    for run in experiment.runs:
        folders = [run_dir(out, experiment, replace(run, seed=s)) for s in (1, 2)]
        metrics = [json.loads((f / "metrics.json").read_text()) for f in folders]
        sharp = [json.loads((f / "sharpness.json").read_text()) for f in folders]
        expected = {
            "test_perplexity": [m["test_perplexity"] for m in metrics],
            "val_loss": [m["val_loss"][-1] for m in metrics],
            "lambda_max": [s["lambda_max"] for s in sharp],
            "eps_sharpness_eigvec@0.1": [s["eps_sharpness"]["0.1"]["eigvec"] for s in sharp],
            "worst_case@0.001": [s["worst_case"]["0.001"]["value_pct"] for s in sharp],
            "taylor_abs_diff@0.1": [s["taylor_check"]["0.1"]["abs_diff_pct"] for s in sharp],
            "trace": [s["trace"]["mean"] for s in sharp],
        }
        for name, values in expected.items():
            got = summary["runs"][run.name]["quantities"][name]
            mean, stderr = _mean_stderr(values)
            assert got["per_seed"] == {"1": values[0], "2": values[1]}, name
            assert got["mean"] == pytest.approx(mean, rel=1e-12) and got["stderr"] == pytest.approx(stderr, rel=1e-12)
            assert got["n"] == 2
    assert [(p["runs"], p["seed"]) for p in summary["pairs"]] == [(["small", "large"], 1), (["small", "large"], 2)]
    assert summary["missing"] == []


def test_report_shows_the_tables_with_standard_errors_and_links_existing_figures(results):
    experiment, out = results
    report = (out / "small" / "report.md").read_text()
    summary = json.loads((out / "small" / "summary.json").read_text())
    ppl = summary["runs"]["large"]["quantities"]["test_perplexity"]
    assert f"{ppl['mean']:.4g} ± {ppl['stderr']:.2g}" in report
    for heading in ("Generalization", "Sharpness", "ε = 0.001", "ε = 0.1", "Curvature", "between runs", "Cost"):
        assert heading in report
    for link in ("figures/learning_curves.png", "figures/interpolation.png", "figures/surfaces_2d.png"):
        assert f"]({link})" in report and (out / "small" / link).stat().st_size > 1000


def test_one_seed_prints_no_plus_minus_and_missing_stages_are_named(tiny_experiment, tmp_path):
    exp = tiny_experiment("train: {epochs: 1}\n")
    run_experiment(exp, ["train", "report"], tmp_path)
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "±" not in report.split("## Generalization")[1].split("##")[0]
    assert "- sharpness of default/seed-42 (no sharpness.json)" in report
    assert "- 2D surface of default/seed-42 (no landscape_2d.npz)" in report


def execute_notebook(output: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(REPO / "results.ipynb", as_version=4)
    assert notebook.cells[1].source.startswith('OUTPUT = "results"')
    notebook.cells[1].source = f"OUTPUT = {str(output)!r}\nEXPERIMENTS = None"
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    return notebook


def test_notebook_runs_clean_and_shows_every_figure_and_table(results):
    _, out = results
    notebook = execute_notebook(out)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # learning curves, interpolation, 2D surfaces
    tables = "\n".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    for text in ("val perplexity", "ε-sharpness, eigenvector %", "λ_max", "barrier (train)", "tokens/s", " ± "):
        assert text in tables


def test_notebook_names_what_is_missing_without_a_traceback(tmp_path):
    notebook = execute_notebook(tmp_path / "nothing-here")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("No experiments under" in o.get("text", "") for o in outputs)


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(REPO / "results.ipynb", as_version=4)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in notebook.cells if cell.cell_type == "code")
