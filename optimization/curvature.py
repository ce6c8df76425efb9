"""Curvature of a symmetric operator known only through matrix-vector products (HVPs): its extreme
eigenvalues, and Hutchinson's trace. Training (optimization.tracking) and the measuring stages use them.

power    the study's method: random start, v <- Hv/||Hv||. Finds the eigenvalue of largest magnitude and
         nothing about the most negative one.
lanczos  Lanczos with full reorthogonalization (twice, against every earlier basis vector): the top-k
         Ritz values and the smallest one from the same Krylov space.
warm_eigenpair  the top one from a nearby matrix's top eigenvectors (the tracker's points after its first):
         Rayleigh–Ritz on them and the Krylov space of the operator deflated of them.

Both `lanczos` and the spectral density (sharpness.density's SLQ) run the one recurrence of `lanczos_steps`,
which yields the tridiagonal matrix T after every step and leaves the caller to decide when to stop (the
eigen-solver: when its estimates converge; SLQ: after a fixed number of steps). It breaks down, and stops by
itself, when β ≤ BREAKDOWN·eps(dtype)·s, s the largest |α| or β so far (an estimate of ‖T‖): the Krylov space
is invariant up to rounding (n small, or few distinct eigenvalues), and T's Ritz values are exact eigenvalues.

Convergence. For a unit vector x and θ = xᵀHx, the residual r = ||Hx − θx|| proves that SOME eigenvalue
lies within r of θ (within r²/γ when no other eigenvalue lies within γ of θ), not that θ is near the
extreme one: a Krylov space that has not yet met the bottom of a spectrum gives a small residual to a
Ritz value sitting on an inner eigenvalue. So every estimate carries its own residual and flag:

- power: converged when r <= tol·|θ|.
- lanczos: a Ritz value is converged when r <= tol·s, with s = max |Ritz value| (the estimate of ||H||, so
  λ_min too is judged relative to the largest eigenvalue), AND the Ritz value of the same rank moved by at
  most tol·s over the last max(10, m/2) of the m steps so far. Ritz values of a fixed rank only move toward
  the spectrum's end (Cauchy interlacing); one that has settled on an inner eigenvalue sits still until
  the Krylov space meets the extreme one, so the wait grows with the run. Lanczos stops when every
  estimate it was asked for (the top k and the smallest) has converged, or after max_iter steps.

No rule that sees only a Krylov space can exclude an eigenvalue whose eigenvector the space has not met
yet. On 400 runs on quadratics with clustered negative spectra (tol 1e-2 and 1e-3), the residual rule
alone stopped with λ_min off by more than tol·s 22 times (up to 11 tol·s); this rule once (by 1.09 tol·s),
for 18 instead of 9 HVPs on average.

The residuals in the loop come from the Lanczos recurrence; `true_residuals` measures each one as ‖Hx − θx‖
after the loop (one product per estimate): what the sharpness stage and the tracker record.

Both record the λ_max estimate after every product, so their cost to a given accuracy can be compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]

MIN_STABLE_STEPS = 10  # Lanczos: a converged Ritz value moved by at most tol·s over max(10, m/2) of its m steps
STALL_STEPS, STALL_DROP = 5, 0.5  # warm_eigenpair: refinement stalled when 5 steps left its residual above half its best
BREAKDOWN = 100  # the recurrence stops when β <= BREAKDOWN·eps(dtype)·‖T‖: its Krylov space is invariant


@dataclass
class Estimate:
    value: float
    residual: float   # ||Hx − θx|| of its unit vector x
    converged: bool
    stalled: bool = False  # stopped short of tol: the residual stopped falling where the products' rounding shows


@dataclass
class EigenResult:
    top: list[Estimate]          # descending: top-k for Lanczos, the largest-magnitude one for power
    bottom: Estimate | None      # the smallest Ritz value (Lanczos); power iteration has none
    eigenvector: torch.Tensor    # unit vector of top[0]
    matvecs: int
    history: list[float] = field(default_factory=list)  # λ_max estimate after each product
    vectors: list[torch.Tensor] = field(default_factory=list)  # the top Ritz vectors asked for, top first

    @property
    def eigenvalues(self) -> list[float]:
        return [e.value for e in self.top]

    @property
    def lambda_max(self) -> float:
        return self.top[0].value

    @property
    def lambda_min(self) -> float | None:
        return None if self.bottom is None else self.bottom.value

    @property
    def converged(self) -> bool:
        """Every estimate the solver was asked for has converged."""
        return all(e.converged for e in self.top) and (self.bottom is None or self.bottom.converged)


def _start_vector(dim: int, seed: int, device, dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    return v / v.norm()


def power_iteration(matvec: MatVec, dim: int, *, max_iter: int, tol: float, seed: int = 0, device="cpu",
                    dtype=torch.float32, progress=None) -> EigenResult:
    v = _start_vector(dim, seed, device, dtype)
    history = []
    for step in range(1, max_iter + 1):
        w = matvec(v)
        estimate = float(v @ w)
        residual = float((w - estimate * v).norm())
        history.append(estimate)
        if progress is not None:
            progress.update(1)
        converged = residual <= tol * abs(estimate)  # also when Hv = 0: v is an exact eigenvector of 0
        if converged or step == max_iter:
            break
        v = w / w.norm()
    return EigenResult([Estimate(estimate, residual, converged)], None, v, len(history), history)


@dataclass
class Tridiagonal:
    """The Lanczos tridiagonal matrix T so far: its diagonal (`alphas`) and off-diagonal (`betas`, one fewer),
    the Lanczos vectors (`basis`, kept only with reorthogonalization), and β = ‖w‖ of the step just run (the
    next off-diagonal; β·|last component| of a Ritz vector is its residual)."""

    alphas: list[float] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)
    basis: list[torch.Tensor] = field(default_factory=list)
    beta: float = 0.0
    invariant: bool = False  # β broke down: the Krylov space is invariant and the Ritz values are exact

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        return tridiagonal_eigh(self.alphas, self.betas)

    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        """The Gauss quadrature of the start vector's spectral measure: the Ritz values (nodes, ascending) and
        the squared first components of T's eigenvectors (weights, summing to 1), float64."""
        values, vectors = self.eigh()
        return values.numpy(), (vectors[0, :] ** 2).numpy()


def lanczos_steps(matvec: MatVec, start: torch.Tensor, steps: int, *, reorthogonalize: bool = True,
                  progress=None) -> Iterator[Tridiagonal]:
    """The Lanczos recurrence from the unit vector `start`: yields T (the same object, grown) after each of at
    most `steps` steps; the caller stops by leaving the loop. It stops by itself on breakdown (`invariant`).

    `reorthogonalize`: orthogonalize each new vector against every earlier one (twice, enough in floating
    point; it removes the α and β terms too), holding all of them; without it, the plain three-term recurrence
    holds three vectors, and T may hold ghost copies of converged eigenvalues (see sharpness.density).
    `matvec` must return a new tensor (it is updated in place). `progress.update(1)` after every product."""
    t = Tridiagonal()
    q, previous, scale = start, None, 0.0
    breakdown = BREAKDOWN * torch.finfo(start.dtype).eps
    for step in range(steps):
        w = matvec(q)
        alpha = float(q @ w)
        t.alphas.append(alpha)
        if reorthogonalize:
            t.basis.append(q)
            for _ in range(2):
                for b in t.basis:
                    w -= (b @ w) * b
        else:
            w -= alpha * q
            if previous is not None:
                w -= t.beta * previous
        t.beta = float(w.norm())
        scale = max(scale, abs(alpha), t.beta)
        t.invariant = t.beta <= breakdown * scale
        if progress is not None:
            progress.update(1)
        yield t
        if t.invariant or step == steps - 1:
            return
        t.betas.append(t.beta)
        w /= t.beta  # in place: without reorthogonalization only q, previous and w are held
        previous, q = q, w


def lanczos_tridiagonal(matvec: MatVec, start: torch.Tensor, steps: int, *, reorthogonalize: bool = True,
                        progress=None) -> Tridiagonal:
    """T after `steps` Lanczos steps from the unit vector `start` (fewer on breakdown): `lanczos_steps` run out."""
    for t in lanczos_steps(matvec, start, steps, reorthogonalize=reorthogonalize, progress=progress):
        pass
    return t


def lanczos(matvec: MatVec, dim: int, *, k: int = 1, max_iter: int, tol: float, seed: int = 0, device="cpu",
            dtype=torch.float32, progress=None, start: torch.Tensor | None = None, stable_steps: int = MIN_STABLE_STEPS,
            bottom: bool = True, residual_test: bool = True, true_residuals: bool = False,
            vectors: int = 1) -> EigenResult:
    """`start`: the first Krylov vector (e.g. the top eigenvector of a nearby matrix, a warm start that
    converges in a few products); a random one drawn from `seed` when None. `stable_steps`: the shortest
    window over which a converged Ritz value must have stayed put (see the module's docstring). `bottom`:
    whether the smallest eigenvalue is estimated too (and must converge before Lanczos stops).
    `residual_test`: whether a converged Ritz value's residual must also be within tol·s (without it, a value
    that stayed put converges: an eigenvalue's error is about the residual squared over the gap, so a warm
    start near the eigenvector has its value long before its residual is small). Every stage and the tracker
    use these two at their defaults, the rule of the module's docstring; bench/tracking_misses.py sets them
    to the tracker's old rule for its "before" column. `true_residuals`: whether every
    estimate (the top k and the smallest) carries ‖Hx − θx‖ measured with one more product each, instead of
    the recurrence's β·|last component of the Ritz vector|: the two agree in exact arithmetic, but the
    recurrence's keeps falling (to 1e-22 and below) where a float32 product cannot show a residual below
    about 1e-7·‖H‖. Either way the stopping rule uses the recurrence's (it is free at every step); the extra
    products are not in `matvecs` (one per Lanczos step, as `history`). `vectors`: how many top Ritz vectors
    the result's `vectors` holds (the tracker's next warm start)."""
    history: list[float] = []
    ritz_by_step: list[torch.Tensor] = []  # ascending Ritz values after every step, for the stability test
    q = _start_vector(dim, seed, device, dtype) if start is None else (start / start.norm()).to(device=device, dtype=dtype)
    for t in lanczos_steps(matvec, q, min(max_iter, dim), progress=progress):
        ritz_values, ritz_vectors = t.eigh()
        ritz_by_step.append(ritz_values)
        history.append(float(ritz_values[-1]))
        residuals = t.beta * ritz_vectors[-1, :].abs()  # ||Hx − θx|| of each Ritz pair
        tolerance = tol * float(ritz_values.abs().max())
        residual_tolerance = tolerance if residual_test else float("inf")
        top = [_estimate(ritz_by_step, residuals, rank, tolerance, residual_tolerance, t.invariant, stable_steps,
                         from_top=True) for rank in range(min(k, t.steps))]
        smallest = [_estimate(ritz_by_step, residuals, 0, tolerance, residual_tolerance, t.invariant, stable_steps,
                              from_top=False)] if bottom else []
        if t.steps > k and all(e.converged for e in top + smallest):
            break

    def ritz_vector(column: int) -> torch.Tensor:
        x = sum(c * b for c, b in zip(ritz_vectors[:, column].to(device=device, dtype=dtype), t.basis))
        return x / x.norm()

    def measured(estimate: Estimate, x: torch.Tensor) -> Estimate:
        return Estimate(estimate.value, float((matvec(x) - estimate.value * x).norm()), estimate.converged)

    if true_residuals:
        top = [measured(estimate, ritz_vector(-1 - rank)) for rank, estimate in enumerate(top)]
        smallest = [measured(estimate, ritz_vector(0)) for estimate in smallest]
    leading = [ritz_vector(-1 - rank) for rank in range(min(vectors, t.steps))]
    return EigenResult(top, smallest[0] if bottom else None, leading[0], t.steps, history, leading)


def warm_eigenpair(matvec: MatVec, previous: torch.Tensor, start: torch.Tensor, *, max_iter: int, tol: float,
                   gap_share: float, vectors: int = 1, progress=None) -> EigenResult:
    """λ_max of H from the top eigenvectors of a nearby matrix (`previous`, k rows) and a random `start`:
    Rayleigh–Ritz on a space that grows one product at a time from span(previous), every product kept. Two
    kinds of vectors are added, each orthogonalized against the space:

    explore  the random start, then the last exploring vector's product: the Krylov space of H deflated of
             everything found so far. A direction that overtook the old top ones is the top of that operator,
             well above the rest of its spectrum, so it shows in a few steps however close it is to the old
             top eigenvalue (a single Krylov space from a start holding the old top vector must first tell the
             two apart). Until the exploration has settled: its top Ritz value t (H on the exploring vectors)
             rose over the last step by at most max(gap_share·(θ − t), tol·s), θ the top Ritz value, s the
             largest |Ritz value|. Ritz values rise toward their limit ever slower; one rising by a small share
             of its distance below θ is settling below it.
    refine   then the top Ritz pair's residual Hx − θx (where the top eigenvector moved; a Krylov step from x),
             until its norm, measured as a combination of the kept products, is within tol·s.

    It stops early when a vector has no direction outside the space (an invariant space, to rounding), and when
    the refinement stalls (`_stalled`: its residual stopped falling, at the rounding of the products, a tol
    below what their arithmetic can show, e.g. a float32 RMSNorm inside a float64 model): then the estimate is
    not converged but `stalled`, its residual measured as ‖Hx − θx‖ with one more product (not in `matvecs`),
    since the residual from the kept products has absorbed part of their rounding and understates it. It holds
    two vectors of d floats per product (the space and its image), where lanczos holds one per step.
    `matvecs`: k + the vectors added (at most `max_iter`); `history`: θ before each addition and at the end;
    `vectors`: how many top Ritz vectors the result holds, top first."""
    basis, products, history, explored, refined = [], [], [], [], []

    def add(v: torch.Tensor) -> bool:
        """Whether v had a direction outside the space (else the space is invariant to rounding)."""
        norm = float(v.norm())
        if basis:
            space = torch.stack(basis, dim=1)
            for _ in range(2):  # twice, enough in floating point
                v = v - space @ (space.T @ v)
        if float(v.norm()) <= BREAKDOWN * torch.finfo(v.dtype).eps * norm:
            return False
        basis.append(v / v.norm())
        products.append(matvec(basis[-1]))
        if progress is not None:
            progress.update(1)
        return True

    for v in previous.to(start):
        add(v)
    k, explore, exploration_before, settled, exhausted = len(basis), start, None, False, False
    while True:
        space, image = torch.stack(basis, dim=1), torch.stack(products, dim=1)
        quotient = (space.T @ image).double()
        values, ritz = torch.linalg.eigh((quotient + quotient.T) / 2)
        value, scale, top = float(values[-1]), float(values.abs().max()), ritz[:, -1].to(start)
        residual = image @ top - value * (space @ top)
        history.append(value)
        if explored:
            exploration = float(torch.linalg.eigvalsh(quotient[explored][:, explored])[-1])
            settled = exploration_before is not None and \
                exploration - exploration_before <= max(gap_share * (value - exploration), tol * scale)
            exploration_before = exploration
        converged = (settled or exhausted) and float(residual.norm()) <= tol * scale
        if settled:
            refined.append(float(residual.norm()))
        # at max_iter it has run out, not stalled: no product for a measured residual beyond the k + max_iter
        stalled = not converged and len(basis) - k < max_iter and _stalled(refined)
        if converged or stalled or exhausted or len(basis) - k >= max_iter:
            break
        if settled:
            exhausted = not add(residual)
        else:
            exhausted = not add(explore)
            if not exhausted:
                explored.append(len(basis) - 1)
                explore = products[-1]
    leading = [space @ ritz[:, -1 - rank].to(start) for rank in range(min(vectors, len(basis)))]
    if stalled:  # the kept products' residual has absorbed their own rounding: measure it as a product shows it
        residual = matvec(leading[0]) - value * leading[0]
    return EigenResult([Estimate(value, float(residual.norm()), converged, stalled)], None, leading[0], len(basis),
                       history, leading)


def _stalled(residuals: list[float]) -> bool:
    """Whether a refinement's residuals (one per step) stopped falling: the last STALL_STEPS stayed above
    STALL_DROP of the smallest before them. In exact arithmetic each step shrinks the residual by a factor set
    by the gap below λ_max; once it reaches the rounding of the products (the noise they carry, which no
    further step removes), it wanders at that level instead."""
    if len(residuals) <= STALL_STEPS:
        return False
    return min(residuals[-STALL_STEPS:]) > STALL_DROP * min(residuals[:-STALL_STEPS])


def _estimate(ritz_by_step: list[torch.Tensor], residuals: torch.Tensor, rank: int, tolerance: float,
              residual_tolerance: float, exact: bool, stable_steps: int, from_top: bool) -> Estimate:
    """The rank-th largest (from_top) or smallest Ritz value now, and whether it has converged."""
    index = -1 - rank if from_top else rank
    now = ritz_by_step[-1]
    value, residual = float(now[index]), float(residuals[index])
    if exact:
        return Estimate(value, residual, True)
    window = max(stable_steps, len(ritz_by_step) // 2)
    stable = False
    if len(ritz_by_step) > window:
        before = ritz_by_step[-1 - window]
        stable = len(before) > rank and abs(value - float(before[index])) <= tolerance
    return Estimate(value, residual, stable and residual <= residual_tolerance)


def tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition (ascending) of the Lanczos tridiagonal matrix, in float64."""
    n = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(t)


def rademacher(dim: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """A vector of independent ±1 entries, typed and placed like `like`."""
    return (torch.randint(0, 2, (dim,), generator=generator) * 2 - 1).to(like)


def hutchinson_trace(objective, samples: int, seed: int, progress=None) -> dict:
    """tr(H) ≈ mean of zᵀHz over Rademacher vectors z, with its standard error (`objective`: hvp, dim, base)."""
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(samples):
        z = rademacher(objective.dim, generator, objective.base)
        values.append(float(z @ objective.hvp(z)))
        if progress is not None:
            progress.update(1)
    values_t = torch.tensor(values, dtype=torch.float64)
    stderr = float(values_t.std() / math.sqrt(samples)) if samples > 1 else math.nan
    return {"mean": float(values_t.mean()), "stderr": stderr, "samples": samples}
