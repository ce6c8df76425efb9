"""How often tracked λ_max misses a new top eigenvalue, before and after issue 21 (figures, not a test).

Synthetic crossings (`crossing`): a symmetric 300 × 300 matrix with a bulk of 290 eigenvalues in [−0.05, 0.2]
and 10 outliers from 0.25 up to 1, as a Hessian's; between two tracked points its eigenvectors turn a little
(a random rotation exp(A), ‖A‖_F = 1e-3) and one direction rises to (1 + gap) × the old top eigenvalue: the
old second one (`outlier`) or one from the middle of the bulk (`bulk`). A point misses when its value is off
the new λ_max by more than tol·λ_max (tol = 1e-3, train.track's default); a miss is silent when the point
says converged. Columns, on the same matrices:

before  the rule until issue 21: Lanczos from the previous top vector plus a 10% share of a random unit vector,
        stopped once the top Ritz value stayed put over 2 steps (and half of them), with no residual test.
warm    SharpnessTracker's second point (a warm start: the previous point's top Ritz vectors and the Krylov
        space of H deflated of them, optimization.curvature.warm_eigenpair).
cold    a point that starts from the random vector alone (the tracker's first).

The last rows (`none`) leave the spectrum alone (only the turn, ‖A‖_F = 1e-3 and 1): the HVPs a warm start
still saves against a cold one where nothing crosses.

    python bench/tracking_misses.py [--cases 40]
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from optimization.curvature import lanczos
from optimization.tracking import SharpnessTracker
from config.schema import TrackConfig, TrainConfig

DIM, BULK = 300, 290
TOL = 1e-3
GAPS = (0.003, 0.01, 0.1, 0.3, 1.0)


class MatrixObjective:
    """What the tracker needs of an Objective (optimization.objective), for L(θ) = ½θᵀAθ or any hvp."""

    def __init__(self, hvp, dim: int, dtype=torch.float64):
        self._hvp, self.dim, self.hvp_count = hvp, dim, 0
        self.base = torch.zeros(dim, dtype=dtype)

    def hvp(self, v):
        self.hvp_count += 1
        return self._hvp(v)


def crossing(seed: int, gap: float | None, riser: str = "outlier", turn: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(H before, H after): after, the eigenvectors turned by a random rotation exp(A) with ‖A‖_F = `turn` and,
    unless `gap` is None, the `riser` direction (the second outlier, or one from the middle of the bulk) at
    (1 + gap) × the old top eigenvalue 1."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=generator, dtype=torch.float64))
    eigenvalues = torch.empty(DIM, dtype=torch.float64)
    eigenvalues[:BULK] = torch.rand(BULK, generator=generator, dtype=torch.float64) * 0.25 - 0.05
    eigenvalues[BULK:] = torch.logspace(math.log10(0.25), 0.0, DIM - BULK, dtype=torch.float64)
    before = q @ torch.diag(eigenvalues) @ q.T
    skew = torch.randn(DIM, DIM, generator=generator, dtype=torch.float64)
    skew = skew - skew.T
    turned = torch.linalg.matrix_exp(turn * skew / skew.norm()) @ q
    if gap is not None:
        eigenvalues[-2 if riser == "outlier" else BULK // 2] = 1.0 + gap
    return before, turned @ torch.diag(eigenvalues) @ turned.T


def old_rule(h: torch.Tensor, previous_top: torch.Tensor, seed: int):
    """The tracked point as computed until issue 21 (see the module's docstring)."""
    noise = torch.randn(DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    start = previous_top / previous_top.norm() + 0.1 * noise / noise.norm()
    return lanczos(lambda v: h @ v, DIM, k=1, max_iter=40, tol=TOL, dtype=torch.float64, stable_steps=2,
                   bottom=False, residual_test=False, start=start)


def tracked_pair(before: torch.Tensor, after: torch.Tensor, seed: int) -> tuple[dict, dict]:
    """(a warm point, a cold point) on `after`: the tracker's second point (its first was on `before`), and
    a fresh tracker's first."""
    cfg = TrackConfig(every=1, metrics=["lambda_max"], iters=40, tol=TOL, seed=seed)
    tracker = SharpnessTracker(cfg, TrainConfig())
    tracker.measure(0, 0.1, MatrixObjective(lambda v: before @ v, DIM))
    warm = tracker.measure(1, 0.1, MatrixObjective(lambda v: after @ v, DIM))
    cold = SharpnessTracker(cfg, TrainConfig()).measure(1, 0.1, MatrixObjective(lambda v: after @ v, DIM))
    return warm, cold


def missed(value: float, exact: float) -> bool:
    return abs(value - exact) > TOL * abs(exact)


def row(gap: float | None, riser: str, cases: int, turn: float = 1e-3) -> dict:
    counts = {name: {"missed": 0, "silent": 0, "hvps": []} for name in ("before", "warm", "cold")}
    for case in range(cases):
        before, after = crossing(case, gap, riser, turn)
        exact = float(torch.linalg.eigvalsh(after)[-1])
        first = lanczos(lambda v: before @ v, DIM, k=1, max_iter=40, tol=TOL, dtype=torch.float64, seed=case,
                        bottom=False)  # the previous point's top vector
        old = old_rule(after, first.eigenvector, case + 1)
        warm, cold = tracked_pair(before, after, case)
        for name, value, converged, hvps in (
                ("before", old.lambda_max, old.top[0].converged, old.matvecs),
                ("warm", warm["lambda_max"], warm["lambda_max_converged"], warm["lambda_max_hvps"]),
                ("cold", cold["lambda_max"], cold["lambda_max_converged"], cold["lambda_max_hvps"])):
            miss = missed(value, exact)
            counts[name]["missed"] += miss
            counts[name]["silent"] += miss and converged
            counts[name]["hvps"].append(hvps)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40)
    args = parser.parse_args()
    print(f"# {args.cases} cases per row, d = {DIM}, tol {TOL:g}; missed (silent: flagged converged) / mean HVPs "
          f"(a cold point's include one for the true residual)")
    print("| riser | gap | before | warm | cold |")
    print("|---|---|---|---|---|")
    rows = [(riser, gap, 1e-3) for riser in ("outlier", "bulk") for gap in GAPS]
    rows += [("none", None, 1e-3), ("none", None, 1.0)]
    for riser, gap, turn in rows:
        counts = row(gap, riser, args.cases, turn)
        cells = [f"{c['missed']}/{args.cases} ({c['silent']}) / {statistics.mean(c['hvps']):.1f}" for c in counts.values()]
        label = f"{gap:.1%}" if gap is not None else f"turn {turn:g}"
        print(f"| {riser} | {label} | " + " | ".join(cells) + " |")
        if gap is None:
            warm, cold = statistics.mean(counts["warm"]["hvps"]), statistics.mean(counts["cold"]["hvps"])
            print(f"|  | saving | | cold/warm {cold / warm:.2f} | |")


if __name__ == "__main__":
    main()
