"""docs/results.md: regenerated from the saved summaries it equals the committed page, it lists every laptop config,
and each section shows its numbers, time, figure and verdicts (the verdict forms: test_verdicts.py)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from config.loading import load_experiment
from report import results_doc
from report.results_doc import CLAIMS, collect, configs, experiment_section, render
from tests.conftest import REPO


def stat(mean, stderr, n=3, **left_out):
    return {"mean": mean, "stderr": stderr, "n": n, "non_finite": 0, "below_resolution": 0, "missing": 0, **left_out}


def summary(**runs):
    return {"experiment": "exp1", "missing": [], "runs": {
        name: {"seeds": [1, 2, 3], "quantities": {
            "eps_sharpness_eigvec@0.001": stat(*values),
            "train_time_s": {"per_seed": {"1": 60.0, "2": 60.0, "3": 60.0}},
            "sharpness_time_s": {"per_seed": {"1": 30.0, "2": None, "3": 30.0}}}}
        for name, values in runs.items()}}


def test_a_section_shows_the_summary_numbers_the_time_the_figure_and_the_verdict():
    lines = experiment_section("exp1", results_doc.Path("config/laptop/exp1.yaml"), CLAIMS["exp1"],
                               summary(bs4=(20.0, 1.0), **{"bs24-wd": (10.0, 1.0)}))
    text = "\n".join(lines)
    assert "| eps_sharpness_eigvec@0.001 (%) | 20 ± 1 (n = 3) | 10 ± 1 (n = 3) |" in text
    assert "eps_sharpness_eigvec@0.001 lower in bs24-wd than in bs4: seen (10 ± 1 (n = 3) against 20 ± 1 (n = 3))" in text
    assert "Time: 8.0 min, the stages' seconds summed over 6 runs and seeds (train 6.0, sharpness 2.0)" in text
    assert "By design: at equal epochs" in text
    assert "![surfaces_2d](figures/exp1-surfaces_2d.png)" in text and "Not run yet" not in text


def test_a_quantity_no_run_measured_is_not_a_row():
    saved = summary(bs4=(20.0, 1.0), **{"bs24-wd": (10.0, 1.0)})
    for run in saved["runs"].values():  # no sharpness stage: the summary lists lambda_max with every seed missing
        run["quantities"]["lambda_max"] = stat(None, None, n=0, missing=3)
    text = "\n".join(experiment_section("exp1", results_doc.Path("config/laptop/exp1.yaml"), CLAIMS["exp1"], saved))
    assert "| eps_sharpness_eigvec@0.001 (%) |" in text and "| lambda_max |" not in text


def test_a_config_without_results_is_listed_as_not_run_yet_with_its_command():
    text = "\n".join(experiment_section("exp2", results_doc.Path("config/laptop/exp2.yaml"), CLAIMS["exp2"], None))
    assert "**Not run yet.**" in text and "python run.py --config config/laptop/exp2.yaml --output results/laptop" in text


def test_the_committed_page_is_what_the_saved_summaries_give_and_lists_every_config(monkeypatch):
    monkeypatch.chdir(REPO)
    page = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    assert page == render(), "docs/results.md is stale: run python -m report.results_doc"
    names = [name for name, _ in configs()]
    assert names and all(f"## {name}\n" in page for name in names)
    saved = sorted(p.name for p in (REPO / "docs" / "results").iterdir()) if (REPO / "docs" / "results").is_dir() else []
    assert set(saved) <= set(names), "docs/results/ holds an experiment no laptop config makes"
    for name in saved:  # each saved experiment is reported with its figure, not as not run yet
        section = page.split(f"## {name}\n")[1].split("\n## ")[0]
        assert "Not run yet" not in section and (REPO / "docs" / "figures" / f"{name}-{CLAIMS[name].figure}.png").is_file()


def test_every_claim_names_runs_of_its_laptop_config(monkeypatch):
    monkeypatch.chdir(REPO)
    for name, path in configs():
        runs = {run.name for run in load_experiment(path).runs}
        assert {r for m in CLAIMS[name].measures for r in m.runs} <= runs, path
        assert len(load_experiment(path).seeds) >= 3, path


def test_collect_copies_finished_experiments_only(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    results, saved, figures = tmp_path / "results", tmp_path / "saved", tmp_path / "figures"
    for name, missing in (("exp1", []), ("exp2", ["bs1/seed-42/sharpness.json"])):
        (results / name / "figures").mkdir(parents=True)
        (results / name / "summary.json").write_text(json.dumps({"runs": {}, "missing": missing}))
        Image.new("RGB", (2400, 1000), "white").save(results / name / "figures" / "surfaces_2d.png")
    done = collect(results, saved, figures)
    assert done["exp1"] == "copied" and done["exp2"] == "not finished (1 results missing, e.g. bs1/seed-42/sharpness.json)"
    assert done["exp3"].startswith("not finished (") and done["exp3"].endswith("summary.json is missing)")
    assert json.loads((saved / "exp1" / "summary.json").read_text())["missing"] == []
    with Image.open(figures / "exp1-surfaces_2d.png") as copied:  # shrunk to a page's width, the same aspect
        assert copied.size == (results_doc.FIGURE_WIDTH, 500)
    assert not (saved / "exp2").exists()


def test_collect_copies_the_prune_files_a_pruning_claim_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    results, saved = tmp_path / "results", tmp_path / "saved"
    (results / "exp6" / "figures").mkdir(parents=True)
    (results / "exp6" / "summary.json").write_text(json.dumps({"runs": {}, "missing": []}))
    Image.new("RGB", (20, 10), "white").save(results / "exp6" / "figures" / f"{CLAIMS['exp6'].figure}.png")
    prune_file = results / "exp6" / "lora-r8" / "seed-42" / "prune.json"
    prune_file.parent.mkdir(parents=True)
    prune_file.write_text(json.dumps({"magnitude": [{"fraction": 0.9, "val_perplexity": 10.0}], "random": []}))
    assert collect(results, saved, tmp_path / "figures")["exp6"] == "copied"
    assert (saved / "exp6" / "lora-r8" / "seed-42" / "prune.json").read_text() == prune_file.read_text()
