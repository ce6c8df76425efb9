"""PCA directions of a training trajectory (Li et al. 2018 §7): a known planar path, numpy's SVD,
chunking, and the error cases."""

from __future__ import annotations

import numpy as np
import pytest

from visualization.pca import trajectory_pca


def pairwise_distances(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)


def small_case(seed: int = 0, n_snapshots: int = 12, dim: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Snapshot deltas and a final delta whose values (multiples of 1/8) are exact in float16."""
    rng = np.random.default_rng(seed)
    rows = (rng.integers(-16, 17, size=(n_snapshots, dim)) / 8).astype(np.float16)
    final = rng.integers(-16, 17, size=dim) / 8
    return rows, final


def test_gradient_descent_path_in_a_plane_is_recovered(tmp_path):
    # Gradient descent on ½ zᵀAz in 2-D, embedded in d dimensions by an orthonormal d×2 map Q.
    dim, steps = 300, 40
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    curvature = np.array([1.0, 8.0])
    z = [np.array([3.0, 2.0])]
    for _ in range(steps):
        z.append(z[-1] - 0.05 * curvature * z[-1])
    z = np.array(z)
    path, z_final = z[:-1], z[-1]  # snapshots θ_0..θ_{T−1}, then θ_f
    rows = np.lib.format.open_memmap(tmp_path / "rows.npy", mode="w+", dtype=np.float16, shape=(steps, dim))
    rows[:] = (path - path[0]) @ q.T
    rows.flush()
    final = (z_final - path[0]) @ q.T

    pca = trajectory_pca(np.load(tmp_path / "rows.npy", mmap_mode="r"), final)

    assert pca.directions.shape == (2, dim) and pca.directions.dtype == np.float32
    np.testing.assert_allclose(pca.directions @ pca.directions.T, np.eye(2), atol=1e-5)
    # Cosines of the principal angles between the two planes are all ~1 (float16 storage blurs them).
    np.testing.assert_allclose(np.linalg.svd(pca.directions @ q, compute_uv=False), 1.0, atol=1e-4)
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-5)
    assert pca.explained_variance_ratio[0] > pca.explained_variance_ratio[1] > 0.0
    # The drawn path is the planar path around θ_f, up to a rotation or reflection of the plane...
    planar = path - z_final
    with_origin = lambda points: np.vstack([points, np.zeros(2)])  # noqa: E731
    np.testing.assert_allclose(pairwise_distances(with_origin(pca.coordinates)),
                               pairwise_distances(with_origin(planar)), atol=5e-3)
    # ...and, in the plane's own PCA basis, exactly that path up to the sign of each axis.
    _, _, basis = np.linalg.svd(planar - planar.mean(axis=0))
    np.testing.assert_allclose(np.abs(pca.coordinates), np.abs(planar @ basis.T), atol=5e-3)


def test_matches_numpy_svd_of_the_centred_matrix():
    rows, final = small_case()
    pca = trajectory_pca(rows, final, n_components=3)

    matrix = rows.astype(np.float64) - final
    centred = matrix - matrix.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(pca.singular_values, s[:3], rtol=1e-10)
    # sklearn: explained_variance_ = s²/(T−1), ratio = explained_variance_ / total variance.
    variance = s**2 / (len(rows) - 1)
    np.testing.assert_allclose(pca.explained_variance_ratio, variance[:3] / variance.sum(), rtol=1e-10)
    assert np.all((pca.explained_variance_ratio >= 0) & (pca.explained_variance_ratio <= 1))
    assert pca.explained_variance_ratio.sum() <= 1.0
    signs = np.sign(np.sum(pca.directions * vt[:3], axis=1))
    np.testing.assert_allclose(pca.directions, signs[:, None] * vt[:3], atol=1e-6)
    np.testing.assert_allclose(pca.coordinates, matrix @ pca.directions.T.astype(np.float64), atol=1e-5)
    # The sign rule: the snapshot farthest from the mean along each direction is on its positive side.
    along = pca.coordinates - pca.coordinates.mean(axis=0)
    assert np.all(along[np.abs(along).argmax(axis=0), np.arange(3)] > 0)


def test_chunking_does_not_change_the_result():
    rows, final = small_case(seed=2)
    whole, chunked = trajectory_pca(rows, final), trajectory_pca(rows, final, chunk=7)
    np.testing.assert_allclose(chunked.directions, whole.directions, atol=1e-6)
    for name in ("explained_variance_ratio", "coordinates", "singular_values"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case, message", [
    ("too_few_snapshots", "at least 3 snapshots"),
    ("final_shape", "rows must be"),
    ("rows_not_2d", "rows must be"),
    ("all_equal", "zero variance"),
    ("on_a_line", "fewer than 2 dimensions"),
])
def test_errors(case, message):
    rows, final = small_case()
    if case == "too_few_snapshots":
        rows = rows[:2]
    elif case == "final_shape":
        final = final[:-1]
    elif case == "rows_not_2d":
        rows = rows[0]
    elif case == "all_equal":
        rows = np.repeat(rows[:1], len(rows), axis=0)
    elif case == "on_a_line":
        rows = (np.arange(len(rows))[:, None] * rows[:1]).astype(np.float16)  # multiples of 1/8: exact
    with pytest.raises(ValueError, match=message):
        trajectory_pca(rows, final)
