"""report.sections: the one list of sections, which report.md and results.ipynb both show (the two are compared on
a real experiment in tests/unit/report/test_report_stage.py)."""

from __future__ import annotations

from pathlib import Path

from optimization.cost import load_prices
from report.experiment_results import ExperimentResults
from report.sections import (LONG_TABLE_ROWS, SECTIONS, Figure, LongTable, Shown, appendix_markdown, dollars_asked,
                             report_blocks)
from report.summary import summarize

CONFIG = {"train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 4, "weight_decay": 0.0, "epochs": 1},
          "data": {"order": "random"}, "model": {}}


def untrained(tmp_path: Path, stages: list[str]) -> ExperimentResults:
    """An experiment whose one run has no trained seed yet."""
    results = ExperimentResults(name="exp", folder=tmp_path, runs=["a"], seeds={"a": []}, configs={"a": CONFIG},
                                listed_seeds=[1], stages=stages)
    results.lack("training of run a (no finished seed; run the train stage)", "train")
    return results


def headings(blocks: list) -> list[str]:
    return [block for block in blocks if isinstance(block, str) and block.startswith("#")]


def test_only_the_sections_that_apply_are_shown_in_the_lists_order(tmp_path):
    results = untrained(tmp_path, ["train", "landscape", "report"])
    blocks = report_blocks(Shown(results, summarize(results)))
    assert headings(blocks) == ["# Experiment `exp`", "## Findings", "## Runs", "## Learning curves",
                                "## Generalization (the study's Table II)", "## Loss along the line between runs",
                                "## 2D loss surfaces", "## Cost", "## Missing"]
    assert len({section.title for section in SECTIONS if section.title}) == len([s for s in SECTIONS if s.title])


def test_a_figure_without_current_data_says_so_and_is_not_drawn(tmp_path):
    results = untrained(tmp_path, ["train", "report"])
    figures = [block for block in report_blocks(Shown(results, summarize(results))) if isinstance(block, Figure)]
    assert [(f.stem, f.draw, f.path) for f in figures] == [("learning_curves", None, None)]
    assert figures[0].markdown() == "(learning curves: no figure of the current results; see Missing)"
    assert Figure("interpolation", "interpolation", path=tmp_path / "interpolation.png").markdown() == \
        "![interpolation](figures/interpolation.png)"


def test_the_missing_section_names_the_command_that_makes_them_where_one_is_known(tmp_path):
    results = untrained(tmp_path, ["train", "report"])
    blocks = report_blocks(Shown(results, summarize(results), redo="python run.py --stages train,report"))
    missing = blocks[blocks.index("## Missing") + 1:]
    assert missing == ["- training of run a (no finished seed; run the train stage)",
                       "To make them: `python run.py --stages train,report`"]
    assert report_blocks(Shown(results, summarize(results)))[-1].startswith("- training of run a")  # the notebook's


def test_dollars_only_where_a_gpu_trained_or_the_config_asks():
    prices = load_prices()
    results = untrained(Path("."), ["train", "report"])
    cost = report_blocks(Shown(results, summarize(results), prices))
    cost = cost[cost.index("## Cost") + 1:]
    assert any(block.startswith("No dollars: every run trained on the CPU. Set `report.prices: true`") for block in cost)
    assert not any("| ran on |" in block for block in cost)
    asked = untrained(Path("."), ["train", "report"])
    asked.configs["a"] = {**CONFIG, "report": {"prices": True}}
    cost = report_blocks(Shown(asked, summarize(asked), prices))
    assert any(block.startswith("| run | ran on |") for block in cost[cost.index("## Cost"):])
    on_gpu = untrained(Path("."), ["train", "report"])
    on_gpu.metrics = {"a": {1: {"device": "cuda:0"}}}
    assert dollars_asked(on_gpu) and not dollars_asked(untrained(Path("."), ["train"]))


def many_runs(tmp_path: Path, runs: int) -> ExperimentResults:
    names = [f"run-{i:02d}" for i in range(runs)]
    return ExperimentResults(name="exp", folder=tmp_path, runs=names, seeds={run: [] for run in names},
                             configs={run: CONFIG for run in names}, listed_seeds=[1], stages=["train", "report"])


def test_tables_of_more_than_twelve_rows_go_to_the_appendix_under_their_section_and_caption(tmp_path):
    blocks = report_blocks(Shown(many_runs(tmp_path, 13), summarize(many_runs(tmp_path, 13))))
    long = [block for block in blocks if isinstance(block, LongTable)]
    assert long and all(table.rows() == 13 and table.table.startswith("| run |") for table in long)
    assert not [b for b in blocks if isinstance(b, str) and b.startswith("|") and b.count("\n") - 1 > LONG_TABLE_ROWS]
    runs = long[0]
    assert runs.section == "Runs" and runs.caption == blocks[blocks.index(runs) - 1]  # the notation before it
    assert runs.markdown() == "13 rows: see [report_appendix.md](report_appendix.md), Runs."
    appendix = appendix_markdown("exp", blocks)
    assert appendix.startswith("# Experiment `exp`: appendix to report.md")
    after_runs = appendix.split("\n\n## Runs\n\n")[1].split("\n\n## ")[0]
    assert after_runs == f"{runs.caption}\n\n{runs.table}"
    assert [line for line in appendix.splitlines() if line.startswith("## ")] == [f"## {t.section}" for t in long]

    twelve = report_blocks(Shown(many_runs(tmp_path, 12), summarize(many_runs(tmp_path, 12))))
    assert not [block for block in twelve if isinstance(block, LongTable)]
    assert appendix_markdown("exp", twelve) is None
    assert len(next(b for b in twelve if isinstance(b, str) and b.startswith("| run |")).splitlines()) == 12 + 2
