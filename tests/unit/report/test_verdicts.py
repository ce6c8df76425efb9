"""report.verdicts: each verdict form judges its claim from saved numbers by the mean ± 2 s.e. rule (seen, not seen,
not resolvable), on hand-made summaries and files with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from report.verdicts import CorrelationMeasure, EdgeMeasure, Measure, PrunedMeasure, SameMeasure, number, verdict


def stat(mean, stderr, n=3, **left_out):
    return {"mean": mean, "stderr": stderr, "n": n, "non_finite": 0, "below_resolution": 0, "missing": 0, **left_out}


@pytest.mark.parametrize("lower, higher, expected", [
    (stat(1.0, 0.1), stat(2.0, 0.1), "seen"),                      # 1.2 < 1.8
    (stat(2.0, 0.1), stat(1.0, 0.1), "not seen"),                  # apart, the other way
    (stat(1.0, 0.25), stat(2.0, 0.25), "not resolvable"),          # 1.5 = 1.5: touching is not apart
    (stat(1.0, 0.3), stat(2.0, 0.3), "not resolvable"),            # overlapping: 1.6 > 1.4
    (stat(1.0, None, n=1), stat(2.0, 0.1), "not resolvable"),      # one seed: no interval
    (stat(None, None, n=0, missing=3), stat(2.0, 0.1), "not resolvable"),
])
def test_verdict_compares_two_standard_error_intervals(lower, higher, expected):
    assert verdict(lower, higher) == expected


def test_a_number_says_its_seeds_and_what_was_left_out():
    assert number(stat(12.3456, 0.0123)) == "12.35 ± 0.012 (n = 3)"
    assert number(stat(5.0, None, n=1, missing=2)) == "5 (n = 1; 2 missing)"
    assert number(stat(None, None, n=0, below_resolution=3)) == "– (n = 0; 3 below resolution)"
    assert number(stat(2.0, 0.5, n=2, non_finite=1, missing=1)) == "2 ± 0.5 (n = 2; 1 not finite, 1 missing)"
    assert number({}) == "– (n = 0)"  # a quantity the runs lack (results_doc's tables)


def pruned(folder, run, by_seed):
    """Hand-made prune.json files: {seed: (magnitude val perplexity at 0.9, [random masks' val perplexities])}."""
    for seed, (magnitude, random) in by_seed.items():
        path = folder / run / f"seed-{seed}" / "prune.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({
            "magnitude": [{"fraction": 0.0, "val_perplexity": 1.0}, {"fraction": 0.9, "val_perplexity": magnitude}],
            "random": [{"fraction": 0.0, "seeds": [{"seed": 0, "val_perplexity": 1.0}]},
                       {"fraction": 0.9, "seeds": [{"seed": s, "val_perplexity": v} for s, v in enumerate(random)]}]}))


@pytest.mark.parametrize("by_seed, expected", [
    ({1: (10.0, [19.0, 21.0]), 2: (11.0, [20.0, 22.0]), 3: (12.0, [21.0, 23.0])}, "seen"),  # 11 ± 0.58 < 21 ± 0.58
    ({1: (30.0, [19.0, 21.0]), 2: (31.0, [20.0, 22.0]), 3: (32.0, [21.0, 23.0])}, "not seen"),
    ({1: (10.0, [10.0, 12.0]), 2: (20.0, [20.0, 22.0]), 3: (30.0, [30.0, 32.0])}, "not resolvable"),
    ({1: (10.0, [19.0, 21.0])}, "not resolvable"),  # one seed: no interval
])
def test_magnitude_against_random_pruning_is_judged_over_seeds_on_each_seeds_mean_random_mask(tmp_path, by_seed, expected):
    pruned(tmp_path, "lora", by_seed)
    claimed, magnitude, random = PrunedMeasure("lora", 0.9).judged({}, tmp_path)
    assert claimed == "val_perplexity of lora with 90% of its adapter zeroed lower by magnitude than at random"
    assert verdict(magnitude, random) == expected and magnitude["n"] == random["n"] == len(by_seed)
    assert random["mean"] == pytest.approx(sum(sum(r) / len(r) for _, r in by_seed.values()) / len(by_seed))


@pytest.mark.parametrize("first, second, expected", [
    ({"1": 2.0, "2": 3.0, "3": 4.0}, {"1": 2.001, "2": 2.999, "3": 4.002}, "seen"),  # |d| 0.0013 ± 0.00033 < 0.01
    ({"1": 2.0, "2": 3.0, "3": 4.0}, {"1": 2.5, "2": 3.6, "3": 4.4}, "not seen"),     # |d| 0.5 ± 0.058 > 0.01
    ({"1": 2.0, "2": 3.0, "3": 4.0}, {"1": 2.0, "2": 3.0, "3": 4.03}, "not resolvable"),  # 0.01 ± 0.01 straddles it
    ({"1": 2.0, "2": 3.0, "3": None}, {"1": 2.0, "2": 3.5}, "not resolvable"),          # one seed has both: no spread
])
def test_the_same_in_two_runs_is_judged_on_each_seeds_difference_against_the_tolerance(first, second, expected):
    runs = {name: {"quantities": {"final_train_loss": {"per_seed": values}}}
            for name, values in (("sgd", first), ("sgd-rotated", second))}
    claimed, difference, tolerance = SameMeasure("final_train_loss", "sgd", "sgd-rotated", 0.01).judged(runs, None)
    assert claimed == "final_train_loss the same in sgd and sgd-rotated (each seed's |difference| below 0.01)"
    assert verdict(difference, tolerance) == expected and number(tolerance) == "0.01 (fixed)"


def tracked(folder, run, by_seed, value="lambda_max", limit="threshold"):
    """Hand-made track.json files: {seed: [λ over its threshold 20 at each tracked point]}."""
    for seed, ratios in by_seed.items():
        path = folder / run / f"seed-{seed}" / "track.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"points": [{"step": 10 * i, value: 20.0 * r, limit: 20.0}
                                               for i, r in enumerate(ratios)]}))


RISING = {1: [0.5, 0.3, 0.8, 1.2, 1.1], 2: [0.6, 0.35, 0.9, 1.3, 1.0], 3: [0.55, 0.3, 0.85, 1.25, 1.05]}


@pytest.mark.parametrize("by_seed, lower, higher, expected", [
    (RISING, "first", 1.0, "seen"),                      # 0.55 ± 0.029 below 1
    (RISING, 1.0, "highest", "seen"),                    # 1 below 1.25 ± 0.029
    (RISING, "highest", "first", "not seen"),
    ({1: [0.5, 0.7], 2: [0.6, 0.8], 3: [0.5, 0.6]}, 1.0, "highest", "not seen"),   # peaks 0.7 ± 0.058 below 1
    ({1: [0.5, 0.9], 2: [0.6, 1.1], 3: [0.5, 1.0]}, 1.0, "highest", "not resolvable"),  # 1.0 ± 0.058 straddles 1
    ({1: [0.5, 1.5]}, 1.0, "highest", "not resolvable"),  # one seed: no interval
])
def test_tracked_lambda_max_is_judged_over_seeds_against_its_threshold(tmp_path, by_seed, lower, higher, expected):
    tracked(tmp_path, "gd", by_seed)
    claimed, low, high = EdgeMeasure("gd", lower, higher).judged({}, tmp_path)
    assert verdict(low, high) == expected
    assert claimed.startswith("lambda_max / threshold of gd: ")


def test_the_preconditioned_edge_reads_the_preconditioned_points_and_says_its_sides(tmp_path):
    tracked(tmp_path, "adam", RISING, "preconditioned_lambda_max", "preconditioned_threshold")
    claimed, low, high = EdgeMeasure("adam", 1.0, "highest", preconditioned=True).judged({}, tmp_path)
    assert claimed == "preconditioned_lambda_max / preconditioned_threshold of adam: 1 below its highest point"
    assert number(low) == "1 (fixed)" and high["mean"] == pytest.approx(1.25) and high["n"] == 3


@pytest.mark.parametrize("correlation, expected, shown", [
    ({"n": 24, "kendall_tau": 0.4, "kendall_interval": [0.1, 0.6]}, "seen", "0.4, interval [0.1, 0.6] (n = 24)"),
    ({"n": 24, "kendall_tau": -0.4, "kendall_interval": [-0.6, -0.1]}, "not seen", "-0.4, interval [-0.6, -0.1] (n = 24)"),
    ({"n": 24, "kendall_tau": 0.2, "kendall_interval": [-0.05, 0.45]}, "not resolvable", "0.2, interval [-0.05, 0.45] (n = 24)"),
    ({"n": 24, "kendall_tau": None, "kendall_interval": [None, None]}, "not resolvable", "– (n = 24)"),  # undefined
])
def test_a_rank_correlation_is_judged_by_its_bootstrap_interval_against_0(tmp_path, correlation, expected, shown):
    (tmp_path / "correlation.json").write_text(json.dumps({"measures": {"trace": {"vs_gap": correlation}}}))
    claimed, zero, tau = CorrelationMeasure("trace").judged({}, tmp_path)
    assert claimed == "Kendall τ of trace with the generalization gap above 0"
    assert verdict(zero, tau) == expected and number(tau) == shown


def test_magnitude_against_random_pruning_seed_by_seed_judges_each_seeds_difference(tmp_path):
    # the seeds' levels differ by far more than magnitude and random differ within a seed: apart only seed by seed
    pruned(tmp_path, "lora", {1: (10.0, [11.0, 13.0]), 2: (20.0, [22.0, 22.0]), 3: (30.0, [32.0, 33.0])})
    assert verdict(*PrunedMeasure("lora", 0.9).judged({}, tmp_path)[1:]) == "not resolvable"
    claimed, difference, zero = PrunedMeasure("lora", 0.9, paired=True).judged({}, tmp_path)
    assert claimed.endswith("at random, seed by seed (the difference against 0)")
    assert difference["mean"] == pytest.approx(-13 / 6) and difference["n"] == 3 and verdict(difference, zero) == "seen"


@pytest.mark.parametrize("lora, expected", [
    ({"1": 99.0, "2": 198.0, "3": 297.0}, "seen"),             # 1, 2, 3 lower: -2 ± 0.58
    ({"1": 101.0, "2": 202.0, "3": 303.0}, "not seen"),
    ({"1": 99.0, "2": 202.0, "3": 297.0}, "not resolvable"),   # -1, +2, -3
    ({"1": 99.0, "2": None, "3": "below resolution"}, "not resolvable"),  # one seed both measured: no interval
])
def test_a_paired_measure_judges_each_seeds_difference_against_0(lora, expected):
    runs = {name: {"quantities": {"test_perplexity": {"per_seed": values}}}
            for name, values in (("lora", lora), ("full", {"1": 100.0, "2": 200.0, "3": 300.0}))}
    claimed, difference, zero = Measure("test_perplexity", "lora", "full", paired=True).judged(runs, Path())
    assert claimed == "test_perplexity lower in lora than in full, seed by seed (the difference against 0)"
    assert verdict(difference, zero) == expected
