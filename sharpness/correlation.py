"""Does flatness predict generalization? Rank correlation of a sharpness measure with the generalization gap
over many training runs (Jiang et al., "Fantastic Generalization Measures and Where to Find Them", ICLR 2020;
Andriushchenko et al., "A Modern Look at the Relationship between Sharpness and Generalization", ICML 2023).

τ (Kendall's tau-b)  (concordant − discordant pairs) / √((pairs − pairs tied in x)(pairs − pairs tied in y)):
                     +1 when sharper runs always generalize worse, −1 when always better, 0 when unrelated.
ρ (Spearman's rho)   the Pearson correlation of the ranks (ties get their mean rank); like τ, only the order
                     of the values counts, so a monotone rescaling of the measure does not change it.
Bootstrap interval   paired percentile bootstrap: resample the runs with replacement, recompute the statistic,
                     and take the central `confidence` quantiles; how much τ or ρ depends on which runs were
                     trained.
ψ_i                  Jiang et al.'s granulated Kendall coefficient for hyperparameter axis i: the mean of τ
                     over groups of runs that differ only in axis i, so it asks whether the measure tracks
                     the gap when that one hyperparameter changes, rather than across unrelated runs.
Ψ                    the mean of the ψ_i over the hyper-parameter axes. A seed is not one: runs of several seeds
                     are grouped by seed too (a group: one seed, the other settings fixed) and get no ψ.

An undefined correlation (fewer than 2 points, or constant input) is nan, never a warning.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D sequences of the same length, got shapes {x.shape} and {y.shape}.")
    return x, y


def _defined(x: np.ndarray, y: np.ndarray) -> bool:
    # A rank correlation needs at least two points and some variation in each variable.
    return len(x) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0


def kendall_tau(x, y) -> float:
    """Kendall's tau-b over all pairs i < j: Σ sign(xᵢ − xⱼ)·sign(yᵢ − yⱼ) / √(pairs untied in x · untied in y),
    as scipy.stats.kendalltau, in numpy (O(n²) memory; ten times faster for the tens of runs of a bootstrap)."""
    x, y = _pair(x, y)
    if not _defined(x, y):
        return float("nan")
    upper = np.triu_indices(len(x), 1)
    dx, dy = np.sign(x[:, None] - x[None, :])[upper], np.sign(y[:, None] - y[None, :])[upper]
    return float((dx * dy).sum() / math.sqrt(np.count_nonzero(dx) * np.count_nonzero(dy)))


def spearman_rho(x, y) -> float:
    """The Pearson correlation of the ranks (ties get their mean rank), as scipy.stats.spearmanr."""
    x, y = _pair(x, y)
    if not _defined(x, y):
        return float("nan")
    rx, ry = _mean_ranks(x), _mean_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float(rx @ ry / math.sqrt((rx @ rx) * (ry @ ry)))


def _mean_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank (by pairwise comparison: fast for tens of values)."""
    return (v[None, :] < v[:, None]).sum(axis=1) + ((v[None, :] == v[:, None]).sum(axis=1) + 1) / 2


def bootstrap_interval(x, y, statistic: Callable[[np.ndarray, np.ndarray], float], resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    if resamples < 2:
        raise ValueError(f"resamples must be at least 2, got {resamples}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
    x, y = _pair(x, y)
    n = len(x)
    if n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)  # the same runs for x and y: the pairs stay together
        values.append(statistic(x[idx], y[idx]))
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]  # a resample that repeats too few runs has no defined statistic
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def _kept(measure: Sequence, gap: Sequence) -> list[int]:
    """Indices of the points whose measure and gap are both present and finite (a failed or diverged run)."""
    if len(measure) != len(gap):
        raise ValueError(f"measure and gap must have the same length, got {len(measure)} and {len(gap)}.")
    return [i for i in range(len(measure)) if _finite(measure[i]) and _finite(gap[i])]


def rank_correlations(measure, gap, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    measure, gap = list(measure), list(gap)
    kept = _kept(measure, gap)
    x = np.array([float(measure[i]) for i in kept])
    y = np.array([float(gap[i]) for i in kept])
    return {
        "n": len(kept),
        "dropped": len(measure) - len(kept),
        "kendall_tau": kendall_tau(x, y),
        "kendall_interval": list(bootstrap_interval(x, y, kendall_tau, resamples, confidence, seed)),
        "spearman_rho": spearman_rho(x, y),
        "spearman_interval": list(bootstrap_interval(x, y, spearman_rho, resamples, confidence, seed)),
    }


def _lengths(axes: dict[str, list]) -> set[int]:
    return {len(values) for values in axes.values()}


def is_grid(axes: dict[str, list]) -> bool:
    if len(_lengths(axes)) > 1:
        raise ValueError(f"every axis must list one value per point, got lengths {sorted(_lengths(axes))}.")
    if not axes:
        return False
    distinct = [set(values) for values in axes.values()]
    if any(len(d) < 2 for d in distinct):
        return False
    points = list(zip(*axes.values()))
    # n points, all distinct, and n equal to the number of combinations: every combination exactly once.
    return len(set(points)) == len(points) == math.prod(len(d) for d in distinct)


def granulated_kendall(measure, gap, axes: dict[str, list], held: dict[str, list] | None = None) -> dict:
    """ψ per hyper-parameter axis and their mean Ψ. `held`: settings that vary but are no axis of their own (the
    seed: Jiang et al. average over hyper-parameter axes only), the same within each group of an axis."""
    measure, gap = list(measure), list(gap)
    held = held or {}
    if not axes:
        raise ValueError("granulated_kendall needs at least one axis.")
    if _lengths({**axes, **held}) != {len(measure)} or len(gap) != len(measure):
        raise ValueError(f"measure, gap and every axis must have the same length, got {len(measure)}, "
                         f"{len(gap)} and {sorted(_lengths({**axes, **held}))}.")
    kept = _kept(measure, gap)
    settings = {**axes, **held}
    per_axis = {}
    for axis in axes:
        others = [name for name in settings if name != axis]
        groups: dict[tuple, list[int]] = {}
        for i in kept:
            groups.setdefault(tuple(settings[name][i] for name in others), []).append(i)
        taus = [kendall_tau([measure[i] for i in g], [gap[i] for i in g]) for g in groups.values()]
        taus = [t for t in taus if not math.isnan(t)]  # a group of one run, or constant within it, says nothing
        per_axis[axis] = {"psi": float(np.mean(taus)) if taus else float("nan"), "groups": len(groups),
                          "used": len(taus)}
    psis = [a["psi"] for a in per_axis.values() if not math.isnan(a["psi"])]
    return {"per_axis": per_axis, "overall": float(np.mean(psis)) if psis else float("nan")}
