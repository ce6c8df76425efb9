"""report.findings: the report's summary in words claims a difference only where the seed spreads allow it, and
names the differences in training that confound a comparison of sharpness."""

from __future__ import annotations

from types import SimpleNamespace

from report.findings import comparison, confounds, findings
from report.summary import mean_and_stderr

LARGE, SMALL = [1.50, 1.52, 1.54], [3.90, 3.96, 4.02]  # means 1.52 and 3.96, s.e. 0.02/√3 and 0.06/√3


def summary_of(**quantities: dict[str, list]) -> dict:
    """{"runs": {run: {"quantities": {name: stats}}}} from {name: {run: per-seed values}}."""
    runs: dict = {}
    for name, by_run in quantities.items():
        for run, values in by_run.items():
            runs.setdefault(run, {"quantities": {}})["quantities"][name] = mean_and_stderr(values)
    return {"runs": runs}


def test_two_runs_apart_by_more_than_their_spread_are_said_to_differ_with_n_and_intervals():
    assert comparison("val loss", {"small": mean_and_stderr(SMALL), "large": mean_and_stderr(LARGE)}) == (
        "val loss: large 1.52 ± 0.012 vs small 3.96 ± 0.035 (n=3 each): a difference beyond the seed spread "
        "(mean ± 2 s.e. do not overlap).")


def test_overlapping_spreads_and_single_seeds_claim_no_difference():
    close = {"a": mean_and_stderr([1.0, 1.2]), "b": mean_and_stderr([1.1, 1.3, 1.2])}
    assert comparison("λ_max", close) == "λ_max: a 1.1 ± 0.1 vs b 1.2 ± 0.058 (n=2/3): within the seed spread " \
                                         "(mean ± 2 s.e. overlap)."
    single = {"a": mean_and_stderr([1.0]), "b": mean_and_stderr([5.0])}
    assert comparison("trace of H", single) == "trace of H: a 1 vs b 5 (n=1 each): one seed: the seed spread is " \
                                               "unknown, so no difference is claimed."
    assert comparison("trace of H", {"a": mean_and_stderr([1.0]), "b": mean_and_stderr([None])}) is None


def test_many_runs_are_summed_up_by_the_lowest_and_the_highest():
    runs = {"a": mean_and_stderr([2.0, 2.0]), "b": mean_and_stderr(LARGE), "c": mean_and_stderr(SMALL)}
    assert comparison("val loss", runs) == (
        "val loss: lowest b 1.52 ± 0.012, highest c 3.96 ± 0.035 of 3 runs (n=3 each): a difference beyond the seed "
        "spread (mean ± 2 s.e. do not overlap).")


def test_findings_cover_the_headline_quantities_the_runs_have_and_the_search_methods():
    summary = summary_of(val_loss={"small": SMALL, "large": LARGE}, lambda_max={"small": [1.0], "large": [None]})
    study = lambda sampler, value: {"sampler": sampler, "best": {"value": value}}  # noqa: E731
    search = {"studies": {"r0": study("random", 3.0), "r1": study("random", 3.2), "t0": study("tpe", 2.0),
                          "t1": study("tpe", 2.1)}}
    lines = findings(SimpleNamespace(search=search), summary)
    assert lines == [
        "- val loss: large 1.52 ± 0.012 vs small 3.96 ± 0.035 (n=3 each): a difference beyond the seed spread "
        "(mean ± 2 s.e. do not overlap).",
        "- search, best value found (over the studies of each method): tpe 2.05 ± 0.05 vs random 3.1 ± 0.1 "
        "(n=2 each): a difference beyond the seed spread (mean ± 2 s.e. do not overlap)."]


def test_runs_that_differ_in_steps_or_final_training_loss_get_a_confound_note():
    note = confounds(summary_of(optimizer_steps={"small": [384, 384], "large": [66, 66]},
                                final_train_loss={"small": [1.52, 1.50], "large": [3.96, 3.98]}))
    assert note.startswith("Confound: the runs differ in optimizer steps from 66 (large) to 384 (small) and in final "
                           "training loss from 1.51 (small) to 3.97 (large). Their sharpness differs also")
    same = summary_of(optimizer_steps={"a": [10, 10], "b": [10, 10]}, final_train_loss={"a": [1.0, 1.2], "b": [1.1, 1.3]})
    assert confounds(same) is None  # equal steps, losses within the seed spread
    one_seed = summary_of(optimizer_steps={"a": [10], "b": [10]}, train_loss={"a": [1.0], "b": [1.05]})
    assert confounds(one_seed) is None  # one seed: a loss 5% apart is not called a difference
    assert "final training loss from 1 (a) to 2 (b)" in confounds(
        summary_of(optimizer_steps={"a": [10], "b": [10]}, train_loss={"a": [1.0], "b": [2.0]}))
