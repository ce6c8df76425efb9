"""report.sections: the one list of sections, which report.md and results.ipynb both show (the two are compared on
a real experiment in tests/unit/report/test_report_stage.py)."""

from __future__ import annotations

from pathlib import Path

from report.experiment_results import ExperimentResults
from report.sections import SECTIONS, Figure, Shown, report_blocks
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
    assert headings(blocks) == ["# Experiment `exp`", "## Learning curves", "## Generalization (the study's Table II)",
                                "## Loss along the line between runs", "## 2D loss surfaces (one colour scale)",
                                "## Cost", "## Missing"]
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
