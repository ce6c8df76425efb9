"""Rank correlations and Jiang et al.'s granulated Kendall coefficient against answers computed by hand."""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest

from sharpness.correlation import (bootstrap_interval, granulated_kendall, is_grid, kendall_tau,
                                   rank_correlations, spearman_rho)


def test_perfect_agreement_and_reversal():
    x = np.random.default_rng(0).normal(size=20)  # continuous: no ties
    for statistic in (kendall_tau, spearman_rho):
        assert statistic(x, x) == pytest.approx(1.0)
        assert statistic(x, -x) == pytest.approx(-1.0)
        assert statistic(list(x), list(2 * x + 3)) == pytest.approx(1.0)


def test_kendall_tau_b_with_ties_by_hand():
    # Points (x, y): p0 (1,1), p1 (2,3), p2 (2,3), p3 (3,2), p4 (3,1); 10 pairs.
    # Concordant: p0p1, p0p2, p0p3                          C = 3
    # Discordant: p1p3, p1p4, p2p3, p2p4                    D = 4
    # Tied in y only: p0p4; tied in x only: p3p4; tied in both: p1p2.
    # Pairs tied in x: groups {2,2}, {3,3} -> n1 = 1 + 1 = 2; in y: groups {1,1}, {3,3} -> n2 = 2.
    # tau_b = (C - D) / sqrt((n0 - n1)(n0 - n2)) = (3 - 4) / sqrt(8 * 8) = -1/8.
    assert kendall_tau([1, 2, 2, 3, 3], [1, 3, 3, 2, 1]) == pytest.approx(-0.125)


def test_spearman_is_pearson_of_ranks_by_hand():
    # x ranks: [1, 3, 2, 5, 4]; y = [10, 20, 20, 40, 30] ranks: [1, 2.5, 2.5, 5, 4] (ties share their mean rank).
    # Both rank means are 3: deviations dx = [-2, 0, -1, 2, 1], dy = [-2, -.5, -.5, 2, 1].
    # sum dx*dy = 4 + 0 + .5 + 4 + 1 = 9.5; sum dx^2 = 10; sum dy^2 = 9.5; rho = 9.5 / sqrt(10 * 9.5) = sqrt(.95).
    assert spearman_rho([1, 3, 2, 5, 4], [10, 20, 20, 40, 30]) == pytest.approx(math.sqrt(0.95))


@pytest.mark.parametrize("statistic", [kendall_tau, spearman_rho])
@pytest.mark.parametrize("x, y", [([1, 2, 3], [5, 5, 5]), ([4, 4, 4], [1, 2, 3]), ([1], [2]), ([], [])])
def test_undefined_is_nan_without_warning(statistic, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(statistic(x, y))


def noisy_monotone(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = np.arange(n, dtype=float)
    return x, x + rng.normal(scale=8.0, size=n)


@pytest.mark.parametrize("statistic", [kendall_tau, spearman_rho])
def test_bootstrap_interval_contains_estimate_and_is_reproducible(statistic):
    x, y = noisy_monotone()
    estimate = statistic(x, y)
    assert 0.3 < estimate < 0.95  # noisy, so the interval has some width
    lo, hi = bootstrap_interval(x, y, statistic, resamples=300, seed=3)
    assert lo < estimate < hi
    assert (lo, hi) == bootstrap_interval(x, y, statistic, resamples=300, seed=3)
    assert (lo, hi) != bootstrap_interval(x, y, statistic, resamples=300, seed=4)
    narrow = bootstrap_interval(x, y, statistic, resamples=300, confidence=0.5, seed=3)
    assert lo <= narrow[0] <= narrow[1] <= hi


def test_bootstrap_of_monotone_sample_is_exactly_one():
    # Any resample with two distinct runs is still monotone: repeated runs are tied in both x and y, which
    # tau-b leaves out of numerator and denominator alike, so tau = 1 (a resample of a single run is nan, dropped).
    # scipy divides by two square roots, so 1 may come out as 1 - 1e-16; any tau < 1 from 12 points is >= 1e-3 off.
    x = np.arange(12.0)
    lo, hi = bootstrap_interval(x, x ** 3, kendall_tau, resamples=200)
    assert lo == pytest.approx(1.0, abs=1e-12) and hi == pytest.approx(1.0, abs=1e-12)


def test_bootstrap_degenerate_and_invalid():
    assert all(math.isnan(v) for v in bootstrap_interval([1.0], [2.0], kendall_tau))
    assert all(math.isnan(v) for v in bootstrap_interval([1, 2, 3], [7, 7, 7], kendall_tau, resamples=20))
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval([1, 2, 3], [1, 2, 3], kendall_tau, resamples=1)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval([1, 2, 3], [1, 2, 3], kendall_tau, confidence=1.0)


def test_rank_correlations_drops_missing_pairs():
    measure = [1.0, None, 3.0, 2.0, float("nan"), 5.0, 4.0]
    gap = [0.1, 0.5, 0.3, float("inf"), 0.2, 0.5, None]
    result = rank_correlations(measure, gap, resamples=50)
    # kept: (1, .1), (3, .3), (5, .5): perfectly monotone
    assert result["n"] == 3 and result["dropped"] == 4
    assert result["kendall_tau"] == pytest.approx(1.0) and result["spearman_rho"] == pytest.approx(1.0)
    assert result["kendall_interval"] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert all(type(v) is float for v in [result["kendall_tau"], result["spearman_rho"],
                                          *result["kendall_interval"], *result["spearman_interval"]])
    json.dumps(result)


def test_rank_correlations_of_too_few_points_is_nan():
    result = rank_correlations([1.0, None], [0.1, 0.2], resamples=10)
    assert result["n"] == 1 and result["dropped"] == 1
    assert math.isnan(result["kendall_tau"]) and all(math.isnan(v) for v in result["spearman_interval"])


def test_is_grid():
    combos = [(lr, bs) for lr in ("a", "b") for bs in (4, 8, 16)]
    random.Random(0).shuffle(combos)
    lrs, bss = [c[0] for c in combos], [c[1] for c in combos]
    assert is_grid({"lr": lrs, "bs": bss})
    assert not is_grid({"lr": lrs[:-1], "bs": bss[:-1]})  # one combination missing
    assert not is_grid({"lr": lrs + [lrs[0]], "bs": bss + [bss[0]]})  # one combination twice
    # one combination twice in place of another: still 6 points, as many as there are combinations
    assert not is_grid({"lr": lrs[:-1] + [lrs[0]], "bs": bss[:-1] + [bss[0]]})
    cube = [(a, b, c) for a in (0.1, 0.2) for b in (1, 2) for c in ("x", "y")]
    assert is_grid({"a": [p[0] for p in cube], "b": [p[1] for p in cube], "c": [p[2] for p in cube]})
    assert not is_grid({"lr": ["a", "a"], "bs": [4, 8]})  # an axis with a single value
    assert not is_grid({})
    with pytest.raises(ValueError):
        is_grid({"lr": ["a", "b"], "bs": [4]})


def test_granulated_kendall_2x2_by_hand():
    # (lr, bs): measure, gap
    #   (a, 4): 1, .10    (a, 8): 2, .30
    #   (b, 4): 3, .20    (b, 8): 5, .25
    # With two points in a group, tau_g = sign(dmeasure * dgap).
    # lr (groups by bs): bs=4: (a->b) dm=+2, dg=+.10 -> +1;  bs=8: dm=+3, dg=-.05 -> -1;  psi_lr = 0
    # bs (groups by lr): lr=a: (4->8) dm=+1, dg=+.20 -> +1;  lr=b: dm=+2, dg=+.05 -> +1;  psi_bs = 1
    # Psi = (0 + 1) / 2 = .5
    axes = {"lr": ["a", "a", "b", "b"], "bs": [4, 8, 4, 8]}
    result = granulated_kendall([1, 2, 3, 5], [0.10, 0.30, 0.20, 0.25], axes)
    assert result["per_axis"]["lr"] == {"psi": pytest.approx(0.0), "groups": 2, "used": 2}
    assert result["per_axis"]["bs"] == {"psi": pytest.approx(1.0), "groups": 2, "used": 2}
    assert result["overall"] == pytest.approx(0.5)


def test_granulated_kendall_3x2_with_constant_groups_by_hand():
    # (lr, bs): measure, gap
    #   (a, 4): 1, .1    (a, 8): 2, .2
    #   (b, 4): 2, .3    (b, 8): 2, .4
    #   (c, 4): 3, .2    (c, 8): 2, .1
    # lr (groups by bs):
    #   bs=4: m = [1, 2, 3], g = [.1, .3, .2]; pairs ab C, ac C, bc D (dm=+1, dg=-.1); no ties -> tau = (2-1)/3
    #   bs=8: m = [2, 2, 2] constant -> undefined, not used.                           psi_lr = 1/3
    # bs (groups by lr):
    #   lr=a: dm=+1, dg=+.1 -> +1;  lr=b: dm=0 -> undefined;  lr=c: dm=-1, dg=-.1 -> +1.   psi_bs = 1
    # Psi = (1/3 + 1) / 2 = 2/3
    lr = ["a", "b", "c", "a", "b", "c"]
    bs = [4, 4, 4, 8, 8, 8]
    measure = [1, 2, 3, 2, 2, 2]
    gap = [0.1, 0.3, 0.2, 0.2, 0.4, 0.1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = granulated_kendall(measure, gap, {"lr": lr, "bs": bs})
    assert result["per_axis"]["lr"] == {"psi": pytest.approx(1 / 3), "groups": 2, "used": 1}
    assert result["per_axis"]["bs"] == {"psi": pytest.approx(1.0), "groups": 3, "used": 2}
    assert result["overall"] == pytest.approx(2 / 3)


def test_granulated_kendall_drops_missing_points_and_checks_lengths():
    # Same 2x2 grid as above with (b, 8) missing: lr has groups bs=4 (+1) and bs=8 (only (a, 8): undefined);
    # bs has groups lr=a (+1) and lr=b (only (b, 4): undefined). Both psi = 1.
    axes = {"lr": ["a", "a", "b", "b"], "bs": [4, 8, 4, 8]}
    result = granulated_kendall([1, 2, 3, None], [0.10, 0.30, 0.20, 0.25], axes)
    assert result["per_axis"]["lr"] == {"psi": pytest.approx(1.0), "groups": 2, "used": 1}
    assert result["per_axis"]["bs"] == {"psi": pytest.approx(1.0), "groups": 2, "used": 1}
    assert result["overall"] == pytest.approx(1.0)
    nothing = granulated_kendall([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], axes)
    assert math.isnan(nothing["overall"]) and math.isnan(nothing["per_axis"]["lr"]["psi"])
    with pytest.raises(ValueError):
        granulated_kendall([1, 2, 3], [0.1, 0.2, 0.3, 0.4], axes)
    with pytest.raises(ValueError):
        granulated_kendall([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], {"lr": ["a", "b", "a", "b"], "bs": [4, 8, 4]})


def test_the_seed_is_held_fixed_in_each_group_but_is_no_axis_of_psi():
    """Jiang et al. average ψ over hyper-parameter axes. 2 learning rates × 2 seeds: ψ_lr is the mean over the
    two seeds of τ within a seed (seed 1: +1, seed 2: −1 → 0), and Ψ = ψ_lr, with no ψ_seed (here +1, which
    would have made Ψ = 0.5)."""
    from report.correlate_stage import correlate

    rows = [("a", 1, 1.0, 0.10), ("b", 1, 2.0, 0.20), ("a", 2, 3.0, 0.50), ("b", 2, 4.0, 0.40)]  # lr, seed, m, gap
    points = {"axes": ["train.lr", "seed"], "measures": ["m"],
              "points": [{"run": lr, "seed": seed, "gap": gap, "test_loss": gap, "measures": {"m": m},
                          "axes": {"train.lr": lr, "seed": seed}} for lr, seed, m, gap in rows]}
    granulated = correlate(points, resamples=20, confidence=0.95, seed=0)["measures"]["m"]["granulated"]
    assert set(granulated["per_axis"]) == {"train.lr"}
    assert granulated["per_axis"]["train.lr"] == {"psi": pytest.approx(0.0), "groups": 2, "used": 2}
    assert granulated["overall"] == pytest.approx(0.0)
    seeds_only = {**points, "axes": ["seed"], "points": [{**p, "axes": {"seed": p["seed"]}} for p in points["points"][:2]]
                  + [{**p, "axes": {"seed": 3}} for p in points["points"][2:3]]}
    assert correlate(seeds_only, resamples=20, confidence=0.95, seed=0)["measures"]["m"]["granulated"] is None


@pytest.mark.parametrize("n, r", [(16, 0.5), (40, 0.0)])
def test_the_bootstrap_intervals_cover_95_percent(n, r):
    """200 samples of n runs from a bivariate normal with correlation r, whose population τ = (2/π)·asin(r) and
    ρ = (6/π)·asin(r/2) are known: each 95 % interval holds them in 90–99 % of the samples (exp8 has 16 runs)."""
    truth = {kendall_tau: 2 / math.pi * math.asin(r), spearman_rho: 6 / math.pi * math.asin(r / 2)}
    generator = np.random.default_rng(0)
    hits = {statistic: 0 for statistic in truth}
    for draw in range(200):
        x = generator.normal(size=n)
        y = r * x + math.sqrt(1 - r * r) * generator.normal(size=n)
        for statistic, value in truth.items():
            low, high = bootstrap_interval(x, y, statistic, resamples=100, confidence=0.95, seed=draw)
            hits[statistic] += low <= value <= high
    for statistic, count in hits.items():
        assert 0.90 <= count / 200 <= 0.99, (statistic.__name__, count / 200)
