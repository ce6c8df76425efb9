"""Stochastic Lanczos quadrature against exact answers: diagonal spectra (on which a Rademacher probe
gives every eigenvalue the weight 1/n, so zᵀHᵖz/n = tr(Hᵖ)/n exactly) and Gauss quadrature's exactness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sharpness.density import SpectralDensity, lanczos_memory_bytes, slq
from optimization.curvature import rademacher

OUTLIERS = [15.0, 30.0, 60.0]


def diagonal(values) -> callable:
    d = torch.as_tensor(values, dtype=torch.float64)
    return lambda v: d.to(v) * v


def recorded(matvec, calls: list):
    """`matvec` that appends a copy of every vector it is given to `calls`."""
    def wrapped(v):
        calls.append(v.clone())
        return matvec(v)
    return wrapped


class Counter:
    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k


def bulk_and_outliers(n: int = 2000) -> torch.Tensor:
    """n − 3 eigenvalues spread over [−0.5, 2] (a fifth of them negative) and three outliers."""
    bulk = torch.linspace(-0.5, 2.0, n - 3, dtype=torch.float64)
    return torch.cat([bulk, torch.tensor(OUTLIERS, dtype=torch.float64)])


@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_moments_and_outliers_of_bulk_plus_outliers(reorthogonalize):
    d = bulk_and_outliers()
    density = slq(diagonal(d), len(d), probes=10, steps=80, reorthogonalize=reorthogonalize)  # float32
    assert density.matvecs == 800 and density.probes == 10 and density.steps == 80
    for power in (1, 2, 3):  # exact up to float32 rounding on a diagonal; 2% is the brief's bound
        assert density.moment(power) == pytest.approx(float((d**power).sum()), rel=1e-4)
    assert density.mass_below(0.0) == pytest.approx(float((d < 0).double().mean()), abs=0.02)
    for nodes, weights in zip(density.nodes, density.weights):
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
        if reorthogonalize:  # without it the top outlier shows up several times (ghost copies)
            np.testing.assert_allclose(nodes[-3:], OUTLIERS, atol=1e-3)


@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_gauss_quadrature_is_exact_up_to_degree_2k_minus_1(reorthogonalize):
    n, k = 60, 8
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = (a + a.T) / (2 * n) ** 0.5  # spectrum about [−2, 2]
    radius = float(torch.linalg.eigvalsh(h).abs().max())
    calls = []
    density = slq(recorded(lambda v: h @ v, calls), n, probes=1, steps=k, reorthogonalize=reorthogonalize,
                  dtype=torch.float64)
    v = calls[0]
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-14)
    nodes, weights = density.nodes[0], density.weights[0]

    def error(power):  # |Σ wⱼ θⱼᵖ − vᵀHᵖv| relative to ||H||ᵖ
        exact = float(v @ torch.linalg.matrix_power(h, power) @ v)
        return abs(float(weights @ nodes**power) - exact) / radius**power

    assert max(error(p) for p in range(2 * k)) < 1e-10
    assert error(2 * k) > 1e-6  # the first degree it is not exact for: the test can tell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_lanczos_on_a_diagonal_gives_the_exact_spectrum_and_mass_below_zero(dtype):
    d = torch.linspace(-1.3, 2.7, 40, dtype=torch.float64)  # 13 negative of 40 distinct
    density = slq(diagonal(d), 40, probes=3, steps=40, dtype=dtype)
    for nodes, weights in zip(density.nodes, density.weights):
        np.testing.assert_allclose(nodes, d.numpy(), atol=1e-5 if dtype == torch.float32 else 1e-12)
        np.testing.assert_allclose(weights, 1 / 40, atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert density.mass_below(0.0) == pytest.approx(13 / 40, abs=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("reorthogonalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_probe_stops_when_its_krylov_space_is_invariant(dtype, reorthogonalize):
    d = torch.tensor([-2.0] * 10 + [1.0] * 25 + [4.0] * 15, dtype=torch.float64)  # 3 distinct eigenvalues
    progress = Counter()
    density = slq(diagonal(d), 50, probes=4, steps=20, reorthogonalize=reorthogonalize, dtype=dtype,
                  progress=progress)
    assert density.matvecs == progress.n == 12 and density.steps == 3
    for nodes, weights in zip(density.nodes, density.weights):
        np.testing.assert_allclose(nodes, [-2.0, 1.0, 4.0], atol=1e-5)
        np.testing.assert_allclose(weights, [10 / 50, 25 / 50, 15 / 50], atol=1e-5)
    assert density.mass_below(0.0) == pytest.approx(10 / 50, abs=1e-5)


def test_smoothed_density_integrates_to_one_and_keeps_the_mean():
    d = bulk_and_outliers()
    density = slq(diagonal(d), len(d), probes=4, steps=40)
    grid, sigma = density.default_grid()
    every = np.concatenate(density.nodes)
    assert sigma == pytest.approx(2e-3 * (every.max() - every.min()))
    assert grid[0] == pytest.approx(every.min() - 5 * sigma) and grid[-1] == pytest.approx(every.max() + 5 * sigma)
    values = density.smoothed(grid, sigma)
    assert np.trapezoid(values, grid) == pytest.approx(1.0, abs=1e-6)
    # Smoothing with a symmetric kernel keeps the mean: ∫ t φ_σ(t) dt = tr(H)/n.
    assert np.trapezoid(grid * values, grid) == pytest.approx(density.moment(1) / len(d), rel=1e-6)
    wide = np.linspace(-1, 61, 20000)
    assert np.trapezoid(density.smoothed(wide, 0.05), wide) == pytest.approx(1.0, abs=1e-6)


def test_default_grid_when_every_node_is_the_same():
    density = slq(lambda v: 3.0 * v, 30, probes=2, steps=10, dtype=torch.float64)  # H = 3·I: one step
    assert density.matvecs == 2 and [n.tolist() for n in density.nodes] == [[3.0], [3.0]]
    grid, sigma = density.default_grid(points=500)
    assert sigma == pytest.approx(2e-3 * 3.0) and len(grid) == 500
    assert np.trapezoid(density.smoothed(grid, sigma), grid) == pytest.approx(1.0, abs=1e-6)


def test_to_dict_round_trip():
    d = torch.tensor([-2.0] * 3 + [1.0] * 5 + [4.0] * 2 + list(np.linspace(5, 9, 30)), dtype=torch.float64)
    density = slq(diagonal(d), len(d), probes=3, steps=12)
    saved = json.loads(json.dumps(density.to_dict()))
    assert saved["probes"] == 3 and saved["steps"] == 12 and saved["dim"] == len(d)
    assert saved["trace"] == density.moment(1) and saved["trace_sq"] == density.moment(2)
    assert saved["tau"] == density.sigma() == density.default_grid()[1]
    assert saved["mass_below_minus_tau"] == density.mass_below(-density.sigma())
    back = SpectralDensity.from_dict(saved)
    assert back.dim == density.dim and back.matvecs == density.matvecs
    for a, b in zip(back.nodes + back.weights, density.nodes + density.weights):
        assert a.dtype == np.float64 and np.array_equal(a, b)
    assert back.to_dict() == saved


def test_lanczos_memory_bytes():
    assert lanczos_memory_bytes(1000, 80, True, torch.float32) == 81 * 1000 * 4  # the basis and the new vector
    assert lanczos_memory_bytes(1000, 80, False, torch.float32) == 3 * 1000 * 4
    assert lanczos_memory_bytes(1000, 80, False, torch.float64) == 3 * 1000 * 8
    assert lanczos_memory_bytes(10, 50, True, torch.float64) == 11 * 10 * 8  # at most dim steps


def test_probes_depend_only_on_the_seed():
    def starts(seed, dtype):
        calls = []
        slq(recorded(lambda v: 2.0 * v, calls), 64, probes=5, steps=1, seed=seed, dtype=dtype)
        return torch.stack(calls).double()

    generator = torch.Generator().manual_seed(7)
    expected = torch.stack([rademacher(64, generator, torch.empty(0, dtype=torch.float64)) for _ in range(5)]) / 8
    assert torch.equal(starts(7, torch.float32), expected) and torch.equal(starts(7, torch.float64), expected)
    assert not torch.equal(starts(8, torch.float64), expected)


def test_rejects_no_probes_or_no_steps():
    with pytest.raises(ValueError, match="probes >= 1 and steps >= 1"):
        slq(lambda v: v.clone(), 10, probes=0, steps=5)
    with pytest.raises(ValueError, match="probes >= 1 and steps >= 1"):
        slq(lambda v: v.clone(), 10, probes=2, steps=0)


def test_the_mass_below_minus_tau_does_not_depend_on_reorthogonalization_and_is_the_exact_one():
    """A spectrum like a trained model's: 38 % below 0, 23 % exactly at 0, a positive bulk and three outliers, in
    a random basis. At 0 the answer depends on which side of 0 the node of the zero cluster falls (it differs by
    0.05 here between the two Lanczos variants, 0.29 on a trained model); below −τ it does not."""
    n = 600
    generator = np.random.default_rng(0)
    negative = -generator.gamma(1.0, 0.5, 228)
    positive = generator.gamma(1.0, 1.0, n - 228 - 138 - 3)
    spectrum = np.concatenate([negative, np.zeros(138), positive, OUTLIERS])
    basis, _ = np.linalg.qr(generator.normal(size=(n, n)))
    hessian = torch.tensor((basis * spectrum) @ basis.T, dtype=torch.float32)
    measured = {reorthogonalize: slq(lambda v: hessian @ v, n, probes=10, steps=80, reorthogonalize=reorthogonalize)
                for reorthogonalize in (True, False)}
    tau = measured[True].sigma()
    assert measured[False].sigma() == pytest.approx(tau, rel=1e-3)  # σ: 1/500 of the span the outliers set
    masses = {key: density.to_dict()["mass_below_minus_tau"] for key, density in measured.items()}
    assert masses[True] == pytest.approx(masses[False], abs=0.02)
    assert masses[True] == pytest.approx(float((spectrum < -tau).mean()), abs=0.03)  # 10 probes of n = 600
