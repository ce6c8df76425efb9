"""The report stage and results.ipynb: every table and figure from saved results, with the right numbers."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import nbformat
import numpy as np
import pytest

from pipeline import run_experiment
from tests.conftest import TINY, execute_notebook
from config.loading import load_experiment
from utils.io import save_npz
from models.runs import run_dir
from report.summary import BELOW_RESOLUTION, mean_and_stderr
from report.tables import format_value

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.usefixtures("checked_figures")  # every figure drawn passes visualization.figure_check

SMALL = """
seeds: [1, 2]
train: {epochs: 1}
sharpness: {max_iter: 6, epsilons: [1e-3, 1e-1], random_directions: 2, worst_case_steps: 2, trace_samples: 2}
landscape: {resolution: 3, points: 5, eval_batches: 1, eval_batch_size: 4}
runs:
  small: {train: {batch_size: 4}}
  large: {train: {batch_size: 16}, sharpness: {random_directions: 3, ball: adaptive}, landscape: {resolution: 5}}
"""


def small_experiment(folder: Path, text: str = SMALL):
    """The experiment `small` (2 runs x 2 seeds), its files written to `folder`."""
    (folder / "tiny.yaml").write_text(TINY)
    (folder / "small.yaml").write_text("extends: tiny.yaml\n" + text)
    return load_experiment(folder / "small.yaml")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results folder made by the project's own stages: 2 runs x 2 seeds, every stage."""
    folder = tmp_path_factory.mktemp("report")
    experiment = small_experiment(folder)
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
            assert (got["n"], got["non_finite"], got["missing"]) == (2, 0, 0)
    assert [(p["runs"], p["seed"]) for p in summary["pairs"]] == [(["small", "large"], 1), (["small", "large"], 2)]
    assert summary["missing"] == [] and summary["ignored"] == []


def test_report_shows_the_tables_with_standard_errors_and_links_existing_figures(results):
    experiment, out = results
    report = (out / "small" / "report.md").read_text()
    summary = json.loads((out / "small" / "summary.json").read_text())
    ppl = summary["runs"]["large"]["quantities"]["test_perplexity"]
    assert f"{ppl['mean']:.4g} ± {ppl['stderr']:.2g} (n=2)" in report
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


@pytest.fixture(scope="module")
def notebook_outputs(results):
    """The outputs of results.ipynb run once on `results` (a kernel start and every figure: seconds)."""
    notebook = execute_notebook(results[1])
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def test_notebook_runs_clean_and_shows_every_figure_and_table(notebook_outputs):
    outputs = notebook_outputs
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # learning curves, interpolation, 2D surfaces
    tables = "\n".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    for text in ("val perplexity", "ε-sharpness, eigenvector %", "λ_max", "barrier (train)", "tokens/s", " ± ",
                 "(n=2)", "random directions", "5 × 5 over"):
        assert text in tables


def shown_in(markdown: str) -> dict[str, list[str]]:
    """The headings, tables and images (figure stems) of Markdown text, in order."""
    paragraphs = [paragraph.strip() for paragraph in markdown.split("\n\n")]
    return {"headings": [p for p in paragraphs if p.startswith("#")],
            "tables": [p for p in paragraphs if p.startswith("|")],
            "figures": re.findall(r"!\[[^]]*\]\(figures/([^)]+)\.png\)", markdown)}


def test_the_notebook_shows_the_reports_sections_tables_and_figures(results, notebook_outputs):
    report = shown_in((results[1] / "small" / "report.md").read_text())
    outputs = notebook_outputs
    shown = shown_in("\n\n".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})))
    assert shown["headings"] == report["headings"] and len(report["headings"]) == 9
    assert shown["tables"] == report["tables"] and len(report["tables"]) == 11  # no dollars: a CPU run
    assert [o.metadata["figure"] for o in outputs if "image/png" in o.get("data", {})] == report["figures"] == \
        ["learning_curves", "interpolation", "surfaces_2d"]


def test_notebook_names_what_is_missing_without_a_traceback(tmp_path):
    notebook = execute_notebook(tmp_path / "nothing-here")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("No experiments under" in o.get("text", "") for o in outputs)


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(REPO / "results.ipynb", as_version=4)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in notebook.cells if cell.cell_type == "code")


# ----------------------------------------------------------------------------------------------
# What a number stands for: n, diverged and missing values, each run's settings, current results only.

def test_means_count_and_name_every_value_left_out():
    stats = mean_and_stderr([1.0, math.nan, None, 3.0, -math.inf])
    assert stats == {"mean": 2.0, "stderr": 1.0, "n": 2, "non_finite": 2, "below_resolution": 0, "missing": 1}
    assert format_value(stats) == "2 ± 1 (n=2, 2 diverged, 1 missing)"
    assert format_value(mean_and_stderr([2.0, BELOW_RESOLUTION, None])) == "2 (n=1, 1 below resolution, 1 missing)"
    assert format_value(mean_and_stderr([BELOW_RESOLUTION, BELOW_RESOLUTION])) == "< res."
    assert format_value(mean_and_stderr([3.21])) == "3.21"  # one value, nothing left out: just the value
    assert format_value(mean_and_stderr([3.2, 3.3, 3.1])) == "3.2 ± 0.058 (n=3)"
    assert format_value(mean_and_stderr([math.nan])) == "– (n=0, 1 diverged)"
    assert format_value(mean_and_stderr([None, None])) == "–"


def copy_of(results, tmp_path) -> tuple:
    experiment, out = results
    shutil.copytree(out, tmp_path / "out")
    return experiment, tmp_path / "out"


def rewrite_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # json writes NaN as NaN, which json reads back


def test_a_diverged_seed_is_counted_in_the_summary_and_the_report(results, tmp_path):
    experiment, out = copy_of(results, tmp_path)
    large = [run_dir(out, experiment, replace(experiment.runs[1], seed=s)) for s in (1, 2)]
    rewrite_json(large[1] / "sharpness.json", lambda d: d.update(lambda_max=math.nan, trace=None))
    run_experiment(experiment, ["report"], out)
    summary = json.loads((out / "small" / "summary.json").read_text())
    quantities = summary["runs"]["large"]["quantities"]
    first = json.loads((large[0] / "sharpness.json").read_text())
    assert quantities["lambda_max"] == {"per_seed": {"1": first["lambda_max"], "2": "nan"}, "mean": first["lambda_max"],
                                        "stderr": None, "n": 1, "non_finite": 1, "below_resolution": 0, "missing": 0}
    assert (quantities["trace"]["n"], quantities["trace"]["non_finite"], quantities["trace"]["missing"]) == (1, 0, 1)
    report = (out / "small" / "report.md").read_text()
    assert f"| {first['lambda_max']:.4g} (n=1, 1 diverged) |" in report
    assert f"| {first['trace']['mean']:.4g} (n=1, 1 missing) |" in report


def test_a_value_below_resolution_is_named_not_missing(results, tmp_path):
    experiment, out = copy_of(results, tmp_path)
    large = [run_dir(out, experiment, replace(experiment.runs[1], seed=s)) for s in (1, 2)]
    eps = "0.1"

    def below(data):
        entry = data["eps_sharpness"][eps]
        entry["random_symmetric_mean_pct"] = None
        entry["below_resolution"] = sorted({*entry["below_resolution"], "random_symmetric_mean_pct"})

    for folder in large:
        rewrite_json(folder / "sharpness.json", below)
    run_experiment(experiment, ["report"], out)
    summary = json.loads((out / "small" / "summary.json").read_text())
    stats = summary["runs"]["large"]["quantities"][f"eps_sharpness_random_symmetric_mean@{eps}"]
    assert stats["per_seed"] == {"1": BELOW_RESOLUTION, "2": BELOW_RESOLUTION}
    assert (stats["n"], stats["below_resolution"], stats["missing"]) == (0, 2, 0)
    assert "| < res. |" in (out / "small" / "report.md").read_text()


def test_diverged_surface_points_are_counted_per_seed_in_the_report(results, tmp_path):
    experiment, out = copy_of(results, tmp_path)
    surface = run_dir(out, experiment, replace(experiment.runs[1], seed=2)) / "landscape_2d.npz"
    with np.load(surface) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["train_loss"][0, :2] = [math.nan, math.inf]  # diverged, and done
    save_npz(surface, **arrays)
    run_experiment(experiment, ["report"], out)
    surfaces = (out / "small" / "report.md").read_text().split("## 2D loss surfaces")[1].split("##")[0]
    assert "![2D loss surfaces](figures/surfaces_2d.png)" in surfaces
    rows = {line.split(" | ")[0]: line for line in surfaces.splitlines() if line.startswith("| small |")
            or line.startswith("| large |")}
    assert rows["| small"].endswith("| 0 |") and rows["| large"].endswith("| 0 (seed 1) / 2 (seed 2) |")


def test_each_run_shows_its_own_measurement_settings(results):
    _, out = results
    report = (out / "small" / "report.md").read_text()
    sharpness = report.split("## Sharpness")[1].split("ε = ")[0]
    small = next(line for line in sharpness.splitlines() if line.startswith("| small |"))
    large = next(line for line in sharpness.splitlines() if line.startswith("| large |"))
    assert small.endswith("| l2 ball, 2 steps | 2 | 2 |") and large.endswith("| adaptive ball, 2 steps | 3 | 2 |")
    assert "3 × 4 texts" in small and "lanczos, top 3, ≤ 6 HVPs" in large
    surfaces = report.split("## 2D loss surfaces")[1].split("##")[0]
    assert "| small | full model | random, layer-normalised, landscape.seed 0 | 3 × 3 over [−1, 1]² | 1 × 4 texts" \
        in surfaces
    assert "| large | full model | random, layer-normalised, landscape.seed 0 | 5 × 5 over [−1, 1]² | 1 × 4 texts" \
        in surfaces


def test_only_the_manifests_runs_and_seeds_with_their_current_training_are_used(results, tmp_path, capsys):
    experiment, out = copy_of(results, tmp_path)
    folder = out / "small"
    shutil.copytree(folder / "small" / "seed-1", folder / "small" / "seed-7")  # a seed of another invocation
    shutil.copytree(folder / "large", folder / "older")                        # a run no longer in the config
    rewrite_json(folder / "large" / "seed-2" / "metrics.json", lambda d: d.update(fingerprint="other settings"))
    capsys.readouterr()
    run_experiment(experiment, ["report"], out)
    printed = capsys.readouterr().out
    ignored = ["older/ (run not in experiment.json)", "small/seed-7 (seed not in experiment.json)",
               "large/seed-2 (trained with other settings than experiment.json lists)"]
    for item in ignored:
        assert printed.count(f"small: warning: ignoring {item}") == 1
    summary = json.loads((folder / "summary.json").read_text())
    assert list(summary["runs"]) == ["small", "large"] and summary["ignored"] == ignored
    assert summary["runs"]["small"]["seeds"] == [1, 2] and summary["runs"]["large"]["seeds"] == [1]
    ppl = summary["runs"]["large"]["quantities"]["test_perplexity"]
    assert (ppl["per_seed"]["2"], ppl["n"], ppl["missing"]) == (None, 1, 1)
    assert [p["seed"] for p in summary["pairs"]] == [1]
    report = (folder / "report.md").read_text()
    assert "- training of large/seed-2 with the settings of experiment.json (run the train stage)" in report
    assert "- interpolation small → large, seed 2 (computed from other weights than the current checkpoints)" in report
    assert f"{ppl['mean']:.4g} (n=1, 1 missing)" in report and "## Ignored" in report
    notebook = execute_notebook(out)
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    for item in ignored:
        assert f"small: ignoring {item}" in printed
    tables = "\n".join(o["data"]["text/markdown"] for cell in notebook.cells if cell.cell_type == "code"
                       for o in cell.outputs if "text/markdown" in o.get("data", {}))
    assert f"{ppl['mean']:.4g} (n=1, 1 missing)" in tables
    (folder / "interpolation.json").unlink()
    run_experiment(experiment, ["report"], out)
    assert "- interpolation small → large, seed 1 (not computed; run the landscape stage)" in \
        (folder / "report.md").read_text()


def test_the_report_shows_no_interpolation_or_figure_of_other_weights(results, tmp_path):
    experiment, out = copy_of(results, tmp_path)
    folder = out / "small"
    retrained = small_experiment(tmp_path, SMALL.replace("batch_size: 16}", "batch_size: 16, lr: 0.1}"))
    # The config edited where it lies: the folder is still its file's (another file is refused, test_search_faults)
    rewrite_json(folder / "experiment.json", lambda d: d.update({"config_path": str(retrained.source.resolve())}))
    run_experiment(retrained, ["train", "report"], out)  # large is retrained; nothing measured on it yet
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["pairs"] == [] and summary["runs"]["large"]["seeds"] == [1, 2]
    report = (folder / "report.md").read_text()
    assert "(interpolation: no figure of the current results; see Missing)" in report
    assert "barrier (train) |" not in report and "surface_2d_large" not in report
    for item in ("- interpolation small → large, seed 1 (computed from other weights than the current checkpoints)",
                 "- 2D surface of large/seed-1 (no landscape_2d.npz)"):
        assert item in report
    assert "figures/surface_2d_small_seed-1.png" in report
    rewrite_json(folder / "figures" / "index.json", lambda d: d.update({"surface_2d_small_seed-1": "other data"}))
    run_experiment(retrained, ["report"], out)
    report = (folder / "report.md").read_text()
    assert "figures/surface_2d_small_seed-1.png" not in report and "figures/surface_2d_small_seed-2.png" in report
    assert "- figure surface_2d_small_seed-1 (not drawn from the current landscape_2d.npz" in report


def test_the_report_opens_with_its_findings_and_qualifies_its_tables(results):
    _, out = results
    report = (out / "small" / "report.md").read_text()
    summary = json.loads((out / "small" / "summary.json").read_text())["runs"]
    findings = report.split("## Findings")[1].split("\n## ")[0]
    assert report.index("## Findings") < report.index("\n|")  # before every table
    val = {run: summary[run]["quantities"]["val_loss"] for run in ("small", "large")}
    low, high = sorted(val, key=lambda run: val[run]["mean"])
    assert (f"- val loss: {low} {val[low]['mean']:.3g} ± {val[low]['stderr']:.2g} vs {high} {val[high]['mean']:.3g} ± "
            f"{val[high]['stderr']:.2g} (n=2 each): ") in findings
    sharpness = report.split("## Sharpness (the study's Table I)\n\n")[1].split("\n## ")[0]
    steps = {run: summary[run]["quantities"]["optimizer_steps"]["mean"] for run in ("small", "large")}
    assert sharpness.startswith(  # batch 4 and 16 over one epoch: the note above the tables it qualifies
        f"Confound: the runs differ in optimizer steps from {steps['large']:.4g} (large) to {steps['small']:.4g} (small)")
    generalization = report.split("## Generalization")[1].split("\n## ")[0]
    assert "| train loss (final weights) | gap (test − train loss) |" in generalization
    curvature = sharpness.split("Curvature")[1]
    header, _, *rows = [line for line in curvature.splitlines() if line.startswith("|")]
    converged = header.split(" | ").index("λ_max converged")
    assert all(row.split(" | ")[converged] in ("yes", "no", "1 of 2") for row in rows)
    assert "trace's s.e. (Hutchinson)" in header
    cost = report.split("## Cost")[1]
    assert "No dollars: every run trained on the CPU. Set `report.prices: true`" in cost and "| ran on |" not in cost


def test_a_key_added_to_the_schema_since_the_results_is_no_change_of_settings(results, tmp_path, capsys):
    experiment, out = copy_of(results, tmp_path)
    rewrite_json(out / "small" / "experiment.json", lambda d: [cfg.pop("report") for cfg in d["configs"].values()])
    capsys.readouterr()
    run_experiment(experiment, ["report"], out)  # results made before report.prices existed: made as its default
    assert "settings differ" not in capsys.readouterr().out


def test_an_appendix_of_an_earlier_report_with_more_runs_is_removed(results, tmp_path):
    experiment, out = copy_of(results, tmp_path)
    stale = out / "small" / "report_appendix.md"
    stale.write_text("# Experiment `small`: appendix to report.md\n\n| run |\n|---|\n" + "| a |\n" * 13)
    run_experiment(experiment, ["report"], out)  # 2 runs: every table fits in report.md
    assert not stale.exists() and "report_appendix.md" not in (out / "small" / "report.md").read_text()


def test_the_notebook_checks_each_figure_it_draws_before_showing_it(monkeypatch, tmp_path):
    """execute_notebook runs NOTEBOOK_FIGURES_CHECKED in the kernel: run here, a figure with a problem fails."""
    from matplotlib.figure import Figure as MatplotlibFigure

    from tests.conftest import NOTEBOOK_FIGURES_CHECKED

    monkeypatch.setattr(MatplotlibFigure, "savefig", MatplotlibFigure.savefig)  # undone after the test
    exec(NOTEBOOK_FIGURES_CHECKED, {})
    figure = MatplotlibFigure(layout="constrained")
    figure.subplots().plot([0, 1], [1, 0])
    figure.axes[0].set_title("unlabelled")
    with pytest.raises(AssertionError, match="the notebook's figure 'unlabelled'.*the x axis has no label"):
        figure.savefig(tmp_path / "figure.png")
    figure.axes[0].set(xlabel="step", ylabel="loss")
    figure.savefig(tmp_path / "figure.png")
    assert (tmp_path / "figure.png").is_file()
