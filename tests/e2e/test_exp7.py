"""Experiment 7 (grid search, random search and TPE) end to end, offline: config/exp7-search-small.yaml through
run.py to report.md, so that the search figures are checked on real output: the learning curves of 18 trials
(more runs than one legend entry each: one band per search method) and the search convergence."""

from __future__ import annotations

import json

import pytest

import run
from tests.conftest import shipped_config_args

pytestmark = pytest.mark.usefixtures("checked_figures")  # every figure drawn passes visualization.figure_check


def test_exp7_small_searches_end_to_end_with_its_figures_and_report(tmp_path):
    out = tmp_path / "results"
    assert run.main(shipped_config_args("exp7-search-small.yaml", out)) == 0
    folder = out / "exp7-search-small"
    studies = json.loads((folder / "search.json").read_text())["studies"]
    assert sorted((s["sampler"], s["seed"]) for s in studies.values()) == [
        (sampler, seed) for sampler in ("grid", "random", "tpe") for seed in (0, 1)]
    for study in studies.values():
        assert [t["state"] for t in study["trials"]] == ["complete"] * 3
        if study["sampler"] == "grid":  # 3 trials on a 2 × 2 grid: 3 points, each once
            points = {tuple(sorted(t["params"].items())) for t in study["trials"]}
            assert len(points) == 3
    report = (folder / "report.md").read_text()
    assert "## Missing" not in report
    section = report.split("## Hyper-parameter search")[1].split("\n## ")[0]
    assert "figures/search_convergence.png" in section
    assert "search, best value found (over the studies of each method)" in report.split("## Runs")[0]  # a finding
    # 18 trials: the tables of one row per trial are in the appendix, report.md links them and keeps the studies'
    assert "18 rows: see [report_appendix.md](report_appendix.md), Runs." in report.split("## Runs")[1]
    assert "| sampler=grid_seed=0 | grid | 0 | 3 |" in section and "| sampler=grid_seed=0-t000 |" not in report
    appendix = (folder / "report_appendix.md").read_text()
    assert [line for line in appendix.splitlines() if line.startswith("## ")] == [
        "## Runs", "## Generalization (the study's Table II)", "## Cost"]
    assert len([line for line in appendix.split("## Runs")[1].split("\n## ")[0].splitlines()
                if line.startswith("| sampler=")]) == 18
    for name in ("learning_curves", "search_convergence"):
        assert (folder / "figures" / f"{name}.png").is_file()
