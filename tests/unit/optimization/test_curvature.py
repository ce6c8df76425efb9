"""The one Lanczos recurrence (lanczos_steps) that the eigen-solver and SLQ share, against exact answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimization.curvature import lanczos, lanczos_steps, lanczos_tridiagonal
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
