"""The landscape of the Python API's Hessian, on a loss that is exactly quadratic in the weights (least squares on
a linear model), whose value anywhere on a plane is its second-order Taylor expansion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sharpness.hessian import Hessian
from visualization.hessian_landscape import landscape


def least_squares() -> Hessian:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 3, generator=generator, dtype=torch.float64),
                torch.randn(n, 2, generator=generator, dtype=torch.float64)) for n in (4, 2)]
    return Hessian(net, batches, loss=lambda net, batch: F.mse_loss(net(batch[0]), batch[1]))


def quadratic(hessian: Hessian, a: float, b: float, d1: torch.Tensor, d2: torch.Tensor) -> float:
    """L(θ + a·d₁ + b·d₂) = L + gᵀδ + ½δᵀHδ, exact for a quadratic loss."""
    loss, gradient = hessian.objective.loss_and_grad()
    delta = a * d1 + b * d2
    return loss + float(gradient @ delta) + 0.5 * float(delta @ hessian.hvp(delta))


def test_the_2d_landscape_is_the_quadratics_value_on_the_plane_of_normalised_orthogonal_directions():
    hessian = least_squares()
    weights = hessian.objective.base.clone()
    surface = landscape(hessian, resolution=5, extent=0.5)
    d1, d2 = surface.directions
    assert surface.loss.shape == (5, 5) and surface.alphas.tolist() == surface.betas.tolist() == [-0.5, -0.25, 0, 0.25, 0.5]
    assert abs(float(d1 @ d2)) <= 1e-6 * float(d1.norm() * d2.norm())  # drawn in float32, as the stage's
    for direction in (d1, d2):  # layer normalisation: each tensor of a direction has the norm of its weights
        for d, w in zip(hessian.objective.views(direction), hessian.objective.params):
            assert float(d.norm()) == pytest.approx(float(w.detach().norm()), rel=1e-6)
    expected = [[quadratic(hessian, a, b, d1, d2) for b in surface.betas] for a in surface.alphas]
    np.testing.assert_allclose(surface.loss, expected, rtol=1e-12)
    assert surface.loss[2, 2] == pytest.approx(hessian.loss(), rel=1e-15)
    assert torch.equal(hessian.objective.flatten([p.detach() for p in hessian.objective.params]), weights)


def test_the_1d_landscape_follows_a_given_direction_such_as_the_top_eigenvector():
    hessian = least_squares()
    top = hessian.eigenvalues(k=1, bottom=False, max_iter=8, tol=1e-12)
    line = landscape(hessian, dims=1, resolution=3, extent=2.0, directions=[top.eigenvector])
    assert line.betas is None and line.loss.shape == (3,)
    zero = torch.zeros(hessian.dim, dtype=torch.float64)
    np.testing.assert_allclose(line.loss, [quadratic(hessian, a, 0.0, top.eigenvector, zero) for a in (-2, 0, 2)],
                               rtol=1e-12)
    with pytest.raises(ValueError, match="1 flat vector"):
        landscape(hessian, dims=1, directions=[zero, zero])
