"""The one Lanczos recurrence (lanczos_steps) that the eigen-solver and SLQ share, against exact answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimization.curvature import STALL_STEPS, warm_eigenpair, lanczos, lanczos_steps, lanczos_tridiagonal
from sharpness.density import slq


def three_distinct(dtype) -> tuple[callable, int]:
    d = torch.tensor([-2.0] * 10 + [1.0] * 25 + [4.0] * 15, dtype=torch.float64)
    return (lambda v: d.to(v) * v), len(d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_eigen_solver_stops_on_the_same_breakdown_as_slq(dtype):
    """Three distinct eigenvalues: the Krylov space is invariant after 3 steps in either precision, and the
    eigen-solver, like SLQ, stops there with exact, converged Ritz values."""
    matvec, n = three_distinct(dtype)
    result = lanczos(matvec, n, k=2, max_iter=30, tol=1e-9, dtype=dtype)
    assert result.matvecs == 3 and result.converged
    assert result.eigenvalues == pytest.approx([4.0, 1.0], abs=1e-5) and result.lambda_min == pytest.approx(-2.0, abs=1e-5)
    density = slq(matvec, n, probes=1, steps=30, dtype=dtype)
    assert density.matvecs == 3


@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_slq_probe_is_the_quadrature_of_the_shared_recurrence(reorthogonalize):
    n = 80
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = (a + a.T) / 2
    density = slq(lambda v: h @ v, n, probes=1, steps=12, seed=3, reorthogonalize=reorthogonalize, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    start = (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).double() / n**0.5  # slq's first probe
    t = lanczos_tridiagonal(lambda v: h @ v, start, 12, reorthogonalize=reorthogonalize)
    nodes, weights = t.quadrature()
    assert np.array_equal(nodes, density.nodes[0]) and np.array_equal(weights, density.weights[0])
    assert t.steps == 12 and len(t.betas) == 11 and len(t.basis) == (12 if reorthogonalize else 0)


def test_the_steps_yield_a_growing_tridiagonal_whose_basis_is_orthonormal():
    n = 50
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    h = (a + a.T) / 2
    start = torch.ones(n, dtype=torch.float64) / n**0.5
    seen = []
    for t in lanczos_steps(lambda v: h @ v, start, 10):
        seen.append(t.steps)
        if t.steps == 6:
            break  # the caller's stopping rule
    assert seen == [1, 2, 3, 4, 5, 6]
    q = torch.stack(t.basis, dim=1)
    assert torch.allclose(q.T @ q, torch.eye(6, dtype=torch.float64), atol=1e-12)
    alphas, betas = torch.tensor(t.alphas, dtype=torch.float64), torch.tensor(t.betas, dtype=torch.float64)
    tridiagonal = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
    assert torch.allclose(q.T @ h @ q, tridiagonal, atol=1e-10)  # QᵀHQ = T: the recurrence's defining identity


def _rotated(eigenvalues: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q @ torch.diag(eigenvalues) @ q.T, q


def test_lanczos_returns_the_top_ritz_vectors_asked_for_top_first():
    h, q = _rotated(torch.cat([torch.linspace(-1.0, 1.0, 58, dtype=torch.float64),
                               torch.tensor([5.0, 8.0], dtype=torch.float64)]), seed=1)
    result = lanczos(lambda v: h @ v, 60, max_iter=60, tol=1e-10, dtype=torch.float64, bottom=False, vectors=2)
    assert len(result.vectors) == 2 and result.vectors[0] is result.eigenvector
    assert abs(float(result.vectors[0] @ q[:, -1])) == pytest.approx(1.0, abs=1e-8)
    assert abs(float(result.vectors[1] @ q[:, -2])) == pytest.approx(1.0, abs=1e-8)


def test_warm_eigenpair_finds_a_top_direction_orthogonal_to_the_previous_ones():
    """The previous top two eigenvectors stay eigenvectors (of 1 and 0.9); a direction from the middle of the
    spectrum rises to 1.001, 0.1% above: the exploring Krylov space finds it, the Rayleigh
    quotient gives it to rounding, and the residual is ‖Hx − θx‖ as measured."""
    eigenvalues = torch.cat([torch.linspace(-0.1, 0.3, 198, dtype=torch.float64),
                             torch.tensor([0.9, 1.0], dtype=torch.float64)])
    h, q = _rotated(eigenvalues, seed=2)
    rising = q[:, 100]
    h = h + (1.001 - float(eigenvalues[100])) * torch.outer(rising, rising)
    start = torch.randn(200, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    calls = []
    result = warm_eigenpair(lambda v: calls.append(v) or h @ v, q[:, [-1, -2]].T, start, max_iter=60, tol=1e-6,
                              gap_share=0.05, vectors=2)
    assert result.lambda_max == pytest.approx(1.001, rel=1e-10) and result.top[0].converged
    assert abs(float(result.eigenvector @ rising)) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(result.vectors[1] @ q[:, -1])) == pytest.approx(1.0, abs=1e-6)  # the old top, now second
    x = result.eigenvector
    assert result.top[0].residual == pytest.approx(float((h @ x - result.lambda_max * x).norm()), rel=1e-3, abs=1e-14)
    assert result.matvecs == len(calls) == 2 + len(result.history) - 1 < 20


def test_warm_eigenpair_stops_at_the_tolerance_when_nothing_rose():
    """The previous eigenvectors, a little off the new ones: refined to a residual within tol·λ_max."""
    eigenvalues = torch.cat([torch.linspace(-0.1, 0.3, 198, dtype=torch.float64),
                             torch.tensor([0.9, 1.0], dtype=torch.float64)])
    h, q = _rotated(eigenvalues, seed=4)
    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    previous = (q[:, [-1, -2]] + 1e-2 * noise).T
    start = torch.randn(200, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    result = warm_eigenpair(lambda v: h @ v, previous, start, max_iter=60, tol=1e-4, gap_share=0.05)
    assert result.top[0].converged and result.top[0].residual <= 1e-4 * 1.0
    assert abs(result.lambda_max - 1.0) <= result.top[0].residual


def test_warm_eigenpair_stops_where_noisy_products_stall_its_refinement():
    """Products carrying noise of norm δ = 1e-6 (a float32 layer in a float64 model) cannot show a residual below
    about δ: at tol 1e-12 the refinement stalls there and stops STALL_STEPS steps later, where it once ran to
    max_iter. θ is within δ of λ_max = 1, and the residual, measured with one more product, is √(δ² + δ²)
    (‖Hx − θx‖ ≈ δ plus that product's own noise). Without noise the same solve converges to tol."""
    eigenvalues = torch.cat([torch.linspace(-0.1, 0.3, 198, dtype=torch.float64),
                             torch.tensor([0.9, 1.0], dtype=torch.float64)])
    h, q = _rotated(eigenvalues, seed=4)
    previous = (q[:, [-1, -2]] + 1e-2 * torch.randn(200, 2, generator=torch.Generator().manual_seed(5),
                                                     dtype=torch.float64)).T
    start = torch.randn(200, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def solve(delta: float, tol: float):
        generator, calls = torch.Generator().manual_seed(7), []

        def noisy(v):
            calls.append(v)
            noise = torch.randn(200, generator=generator, dtype=torch.float64)
            return h @ v + delta * noise / noise.norm()

        return warm_eigenpair(noisy, previous, start, max_iter=120, tol=tol, gap_share=0.05), len(calls)

    exact, exact_calls = solve(0.0, 1e-12)
    assert exact.top[0].converged and not exact.top[0].stalled and exact_calls == exact.matvecs
    to_noise, _ = solve(0.0, 1e-6)  # the products it takes without noise to reach a residual of δ
    noisy, noisy_calls = solve(1e-6, 1e-12)
    estimate = noisy.top[0]
    assert estimate.stalled and not estimate.converged
    assert abs(estimate.value - 1.0) <= 1e-6
    assert 1e-6 <= estimate.residual <= 2e-6
    assert noisy_calls == noisy.matvecs + 1  # the measured residual's product
    assert noisy.matvecs <= to_noise.matvecs + STALL_STEPS + 1 < 120
