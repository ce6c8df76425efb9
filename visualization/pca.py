"""PCA directions of a training trajectory: the plane of a 2D loss surface that contains the path.

Li et al. 2018 (§7, "Visualizing the loss landscape of neural nets") draw the optimizer's path on
a loss surface around the final weights θ_f: the rows of M are θ_t − θ_f for the snapshots
t = 0..T−1, sklearn's PCA of M (centred by its row mean) gives the directions, the top two span
the plane, and each snapshot is drawn at its projection (θ_t − θ_f)·vᵢ, so θ_f is the origin.

Snapshots are stored as deltas from the initial weights: `rows` holds θ_t − θ_0 (float16, usually a
numpy memmap) and `final` holds θ_f − θ_0, so θ_t − θ_f = rows[t] − final. Weight-space vectors are
flat and ordered like the model's requires_grad parameters (see `optimization.objective`).

d can be ~10⁸ and T a few hundred, so no T×d float matrix is ever formed. Columns are read `chunk`
at a time, converted to float64, and turned into centred rows Mᶜ (the column mean depends only on
that column, so every chunk is centred on its own). One pass accumulates the T×T Gram matrix
G = Mᶜ Mᶜᵀ, whose eigenpairs (λᵢ, uᵢ) give the singular values sᵢ = √λᵢ of Mᶜ; a second pass builds
each direction vᵢ = Mᶜᵀ uᵢ / sᵢ and the coordinates. Cost O(T²·d) flops; memory O(T² + n·d) plus
one T×chunk float64 block (T·chunk·8 bytes: 2.5 GB for T = 300 and chunk = 2²⁰, so lower `chunk`
when T is large).

Sign: PCA fixes a direction only up to sign. Each direction's sign is chosen so that the entry of
largest magnitude of uᵢ is positive (sklearn's `svd_flip` on U): the snapshot farthest from the
trajectory's mean along vᵢ (the first one on a tie) gets a positive centred coordinate. It depends
on the trajectory only, so a rerun draws the same figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class TrajectoryPCA:
    directions: np.ndarray  # (n_components, d) float32, orthonormal rows
    explained_variance_ratio: np.ndarray  # (n_components,): λᵢ / Σ all λ, each in [0, 1], sum ≤ 1
    coordinates: np.ndarray  # (T, n_components): (θ_t − θ_f)·vᵢ, not centred (θ_f is the origin)
    singular_values: np.ndarray  # (n_components,): singular values of the centred matrix


def _centred_chunks(rows, final: np.ndarray, chunk: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """(columns, centred rows Mᶜ of those columns, their column mean of M), all float64."""
    for start in range(0, rows.shape[1], chunk):
        columns = slice(start, min(start + chunk, rows.shape[1]))
        block = np.asarray(rows[:, columns], dtype=np.float64)
        block -= final[columns]
        mean = block.mean(axis=0)
        block -= mean
        yield columns, block, mean


def trajectory_pca(rows, final, n_components: int = 2, chunk: int = 1 << 20) -> TrajectoryPCA:
    """The top `n_components` PCA directions of the snapshots θ_t − θ_f, and the path projected on them.

    rows: (T, d) array of θ_t − θ_0 (float16 memmap); final: (d,) vector θ_f − θ_0.
    Raises ValueError on disagreeing shapes, fewer than n_components + 1 snapshots, a trajectory
    without variance, or one that spans fewer than n_components dimensions (no unique plane).
    """
    final = np.asarray(final, dtype=np.float64)
    if n_components < 1 or chunk < 1:
        raise ValueError(f"n_components and chunk must be positive, got {n_components} and {chunk}.")
    if rows.ndim != 2 or final.shape != (rows.shape[1],):
        raise ValueError(f"rows must be (T, d) and final (d,), got {tuple(rows.shape)} and {final.shape}.")
    n_snapshots = rows.shape[0]
    if n_snapshots < n_components + 1:
        raise ValueError(f"{n_components} PCA directions need at least {n_components + 1} snapshots, "
                         f"got {n_snapshots}.")

    gram = np.zeros((n_snapshots, n_snapshots))
    for _, centred, _ in _centred_chunks(rows, final, chunk):
        gram += centred @ centred.T
    eigenvalues, eigenvectors = np.linalg.eigh(gram)  # ascending
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    total = np.trace(gram)
    if total <= 0:
        raise ValueError("The trajectory has zero variance: all snapshots are equal.")
    top, u = eigenvalues[:n_components], eigenvectors[:, :n_components]
    # Rounding in the Gram matrix blurs its eigenvalues by up to ~max(T, d)·ε·λ_max (the tolerance of
    # numpy's matrix_rank), so smaller ones count as zero.
    if top[-1] <= max(rows.shape) * np.finfo(np.float64).eps * eigenvalues[0]:
        raise ValueError(f"The trajectory spans fewer than {n_components} dimensions, so its top "
                         f"{n_components} PCA directions are not determined.")
    u = u * np.sign(u[np.abs(u).argmax(axis=0), np.arange(n_components)])
    singular_values = np.sqrt(top)

    directions = np.empty((n_components, rows.shape[1]), dtype=np.float32)
    coordinates = np.zeros((n_snapshots, n_components))
    for columns, centred, mean in _centred_chunks(rows, final, chunk):
        block = (u.T @ centred) / singular_values[:, None]
        directions[:, columns] = block
        coordinates += centred @ block.T + mean @ block.T
    return TrajectoryPCA(directions=directions, explained_variance_ratio=top / total,
                         coordinates=coordinates, singular_values=singular_values)
