"""Extreme eigenvalues of a symmetric operator known only through matrix-vector products (HVPs).

power    the study's method: random start, v <- Hv/||Hv||, stop when the Rayleigh quotient changes by
         less than tol (relative) between iterations. Finds the eigenvalue of largest magnitude.
lanczos  Lanczos with full reorthogonalization (twice, against every earlier basis vector): the top-k
         eigenvalues and the most negative one from the same Krylov space. Stops when every reported
         Ritz value has a residual below tol·|λ_max|, which bounds its error by the same amount.

Both record the λ_max estimate after every product, so their cost to a given accuracy can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EigenResult:
    eigenvalues: list[float]          # descending (top-k for Lanczos, one for power)
    eigenvector: torch.Tensor         # unit vector of eigenvalues[0]
    matvecs: int
    converged: bool
    lambda_min: float | None = None   # most negative (smallest) Ritz value; Lanczos only
    history: list[float] = field(default_factory=list)  # λ_max estimate after each product

    @property
    def lambda_max(self) -> float:
        return self.eigenvalues[0]


def _start_vector(dim: int, seed: int, device, dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    return v / v.norm()


def power_iteration(matvec: MatVec, dim: int, *, max_iter: int, tol: float, seed: int = 0, device="cpu",
                    dtype=torch.float32, progress=None) -> EigenResult:
    v = _start_vector(dim, seed, device, dtype)
    history, converged = [], False
    for _ in range(max_iter):
        w = matvec(v)
        estimate = float(v @ w)
        history.append(estimate)
        if progress is not None:
            progress.update(1)
        if len(history) > 1 and abs(estimate - history[-2]) <= tol * abs(estimate):
            converged = True
            break
        norm = w.norm()
        if norm == 0:  # v lies in the null space: every eigenvalue it touches is 0
            converged = True
            break
        v = w / norm
    return EigenResult([history[-1]], v, len(history), converged, history=history)


def lanczos(matvec: MatVec, dim: int, *, k: int = 1, max_iter: int, tol: float, seed: int = 0, device="cpu",
            dtype=torch.float32, progress=None) -> EigenResult:
    basis: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    q = _start_vector(dim, seed, device, dtype)
    converged = False
    for _ in range(min(max_iter, dim)):
        basis.append(q)
        w = matvec(q)
        alphas.append(float(q @ w))
        for _ in range(2):  # full reorthogonalization; twice is enough in floating point
            for b in basis:
                w -= (b @ w) * b
        beta = float(w.norm())
        ritz_values, ritz_vectors = _tridiagonal_eigh(alphas, betas)
        history.append(float(ritz_values[-1]))
        if progress is not None:
            progress.update(1)
        scale = float(ritz_values.abs().max())
        residuals = beta * ritz_vectors[-1, :].abs()
        wanted = list(range(len(alphas) - 1, max(len(alphas) - 1 - k, -1), -1)) + [0]
        exhausted = beta <= 1e-12 * max(scale, 1e-30)  # an invariant subspace: the Ritz values are exact
        if exhausted or (len(alphas) > k and all(residuals[i] <= tol * scale for i in wanted)):
            converged = True
            break
        betas.append(beta)
        q = w / beta
    top = ritz_vectors[:, -1].to(device=device, dtype=dtype)
    eigenvector = sum(c * b for c, b in zip(top, basis))
    eigenvalues = ritz_values.flip(0)[:k].tolist()
    return EigenResult(eigenvalues, eigenvector / eigenvector.norm(), len(alphas), converged,
                       lambda_min=float(ritz_values[0]), history=history)


def _tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition (ascending) of the Lanczos tridiagonal matrix, in float64."""
    n = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(t)
