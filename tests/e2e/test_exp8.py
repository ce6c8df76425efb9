"""The correlate stage on config/exp8-flatness-small.yaml (shortened): 16 runs on a full grid of optimizer ×
learning rate × batch size × seed, and what correlation.json says about them, checked against its own points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import run_experiment
from sharpness.correlation import kendall_tau, rank_correlations
from config.loading import load_experiment
from utils.io import read_json, write_json
from report.reader import load_results

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("checked_figures")  # every figure drawn passes visualization.figure_check
SHORT = ["train.epochs=2", "train.warmup_steps=0", "data.n_train=48", "data.n_val=16", "data.n_test=16",
         "sharpness.batches=1", "sharpness.max_iter=8",
         "sharpness.worst_case_steps=2", "sharpness.trace_samples=2", "sharpness.random_directions=2",
         "correlate.resamples=200"]


@pytest.fixture(scope="module")
def exp8(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp8")
    experiment = load_experiment(ROOT / "config" / "exp8-flatness-small.yaml", SHORT)
    run_experiment(experiment, ["train", "sharpness", "correlate", "report"], out)
    return out / "exp8-flatness-small"


def test_the_grid_and_its_points(exp8):
    data = read_json(exp8 / "correlation.json")
    assert data["axes"] == ["train.optimizer", "train.lr", "train.batch_size", "seed"] and data["grid"]
    assert len(data["points"]) == 16
    for point in data["points"]:
        metrics = read_json(exp8 / point["run"] / f"seed-{point['seed']}" / "metrics.json")
        assert point["gap"] == pytest.approx(metrics["test_loss"] - metrics["final_train_loss"])
        assert point["axes"]["train.lr"] == metrics["config"]["train"]["lr"]
    assert {"lambda_max", "trace", "worst_case@0.001", "final_train_loss", "weight_norm"} <= set(data["measures"])


def test_stored_statistics_are_those_of_the_points(exp8):
    """Each τ is Kendall's τ of the stored values; a measure against itself gives 1, reversed −1; each bootstrap
    interval contains its estimate."""
    data = read_json(exp8 / "correlation.json")
    gap = [p["gap"] for p in data["points"]]
    for name, stats in data["measures"].items():
        values = [p["measures"][name] for p in data["points"]]
        kept = [(v, g) for v, g in zip(values, gap) if v is not None]
        assert stats["vs_gap"]["n"] == len(kept)
        assert stats["vs_gap"]["kendall_tau"] == pytest.approx(kendall_tau(*zip(*kept)))
        if len(set(values) - {None}) > 1:
            itself = rank_correlations(values, values, resamples=50)
            reversed_ = rank_correlations(values, [None if v is None else -v for v in values], resamples=50)
            assert itself["kendall_tau"] == pytest.approx(1) and itself["spearman_rho"] == pytest.approx(1)
            assert reversed_["kendall_tau"] == pytest.approx(-1) and reversed_["spearman_rho"] == pytest.approx(-1)
        low, high = stats["vs_gap"]["kendall_interval"]
        if stats["vs_gap"]["n"] >= 8:
            assert low <= stats["vs_gap"]["kendall_tau"] <= high


def test_granulated_kendall_by_hand(exp8):
    """ψ for the batch-size axis: each group of runs that differ only in batch size has two points, whose τ is
    the sign of (Δ measure · Δ gap); ψ is their mean."""
    data = read_json(exp8 / "correlation.json")
    groups = {}
    for p in data["points"]:
        key = tuple(v for k, v in p["axes"].items() if k != "train.batch_size")
        groups.setdefault(key, []).append(p)
    signs = []
    for a, b in groups.values():
        d_measure = b["measures"]["trace"] - a["measures"]["trace"]
        d_gap = b["gap"] - a["gap"]
        signs.append((d_measure > 0) - (d_measure < 0) if d_gap > 0 else (d_measure < 0) - (d_measure > 0))
    granulated = data["measures"]["trace"]["granulated"]["per_axis"]["train.batch_size"]
    assert granulated["groups"] == 8 and granulated["psi"] == pytest.approx(sum(signs) / len(signs))


def test_report_shows_it_and_notices_when_it_is_stale(exp8):
    report = (exp8 / "report.md").read_text()
    assert "## Flatness and generalization" in report and "granulated Kendall" in report
    assert (exp8 / "figures" / "correlation.png").is_file()
    point = read_json(exp8 / "correlation.json")["points"][0]
    metrics_path = exp8 / point["run"] / f"seed-{point['seed']}" / "metrics.json"
    metrics = read_json(metrics_path)
    try:
        write_json(metrics_path, {**metrics, "final_train_loss": metrics["final_train_loss"] + 1})
        results = load_results(exp8.parent, exp8.name)
        assert results.correlation is None
        assert any("correlation.json (computed from other results" in item for item in results.missing)
    finally:
        write_json(metrics_path, metrics)
    assert load_results(exp8.parent, exp8.name).correlation is not None


def test_notebook_shows_the_table_and_figure(exp8):
    from tests.conftest import execute_notebook

    notebook = execute_notebook(exp8.parent)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("ψ train.batch_size" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert any(o.get("metadata", {}).get("figure") == "correlation" for o in outputs if "image/png" in o.get("data", {}))


# ----------------------------------------------------------------------------------------------
# Its input: no run is left out silently.

FOUR_RUNS = """
stages: [train, correlate, report]
train: {epochs: 1}
correlate: {resamples: 20}
runs: {a: {train: {lr: 0.1}}, b: {train: {lr: 0.2}}, c: {train: {lr: 0.3}}, d: {train: {lr: 0.4}}}
"""


def test_a_damaged_input_stops_correlate_with_the_command_and_a_left_out_run_is_named(write_config, tmp_path, capsys):
    import shlex

    import run

    config, out = write_config(FOUR_RUNS), tmp_path / "out"
    assert run.main(["--config", str(config), "--output", str(out), "--stages", "train"]) == 0
    metrics = out / "exp" / "d" / "seed-42" / "metrics.json"
    metrics.write_text('{"fingerprint": ')
    capsys.readouterr()
    assert run.main(["--config", str(config), "--output", str(out), "--stages", "correlate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{metrics} is corrupt" in err[0] and "--stages train,correlate,report" in err[0]
    assert not (out / "exp" / "correlation.json").exists()
    command = err[0].split("regenerate it with: python run.py ")[1].split(" (with the same")[0]
    assert run.main(shlex.split(command)) == 0  # what the line says: every run again in the correlation
    assert len(read_json(out / "exp" / "correlation.json")["points"]) == 4

    for name in ("metrics.json", "checkpoint.pt"):  # a run not trained (diverged, say) is left out, by name
        (metrics.parent / name).unlink()
    capsys.readouterr()
    assert run.main(["--config", str(config), "--output", str(out), "--stages", "correlate,report"]) == 0
    assert "d/seed-42 left out (not trained (no metrics.json or checkpoint.pt))" in capsys.readouterr().out
    data = read_json(out / "exp" / "correlation.json")
    assert len(data["points"]) == 3
    assert data["left_out"] == [{"run": "d", "seed": 42, "why": "not trained (no metrics.json or checkpoint.pt)"}]
    assert "Left out of the correlation: d/seed-42 (not trained" in (out / "exp" / "report.md").read_text()
