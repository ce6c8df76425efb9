"""The loss landscape around a sharpness.hessian.Hessian's weights, for the Python API: L(θ + a·d₁ + b·d₂) on a grid
(2D) or L(θ + a·d₁) on a line (1D), with the landscape stage's own directions (visualization.directions: random,
normalised per layer or filter as Li et al. 2018, d₂ ⊥ d₁) and grid (visualization.surface). It lives here, not as
a Hessian method, because sharpness/ and visualization/ are one layer and neither imports the other's grid code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from config.schema import LandscapeConfig
from visualization.directions import conv1d_weight_names, random_directions
from visualization.surface import empty_grid, fill_surface, grid_axis

LANDSCAPE = LandscapeConfig()


@dataclass
class Landscape:
    """loss[i] = L(θ + alphas[i]·d₁) in 1D (betas None); loss[i, j] = L(θ + alphas[i]·d₁ + betas[j]·d₂) in 2D."""
    alphas: np.ndarray
    betas: np.ndarray | None
    loss: np.ndarray
    directions: tuple[torch.Tensor, ...]


def landscape(hessian, dims: int = 2, resolution: int = LANDSCAPE.resolution, extent: float = LANDSCAPE.range,
              directions=None, *, norm: str = LANDSCAPE.norm, ignore: str = LANDSCAPE.ignore,
              seed: int = LANDSCAPE.seed) -> Landscape:
    """The loss of `hessian` (its model, batches and loss) on a line (dims=1) or plane (dims=2) through its weights:
    `resolution` points per axis from -extent to extent. `directions`: `dims` flat vectors of hessian.dim weights
    (e.g. eigenvectors), or None for random ones drawn from `seed` and normalised by `norm` ("layer", "filter" or
    "none"; `ignore="biasbn"` leaves 1-D tensors still). resolution^dims loss evaluations; the weights are
    restored afterwards."""
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    objective = hessian.objective
    if directions is None:
        directions = random_directions(objective, conv1d_weight_names(objective.model), norm, ignore, seed)[:dims]
    directions = tuple(torch.as_tensor(d).to(objective.base) for d in directions)
    if len(directions) != dims or any(d.shape != objective.base.shape for d in directions):
        raise ValueError(f"directions must be {dims} flat vector(s) of {objective.dim} weights each")
    alphas = grid_axis(resolution, extent)
    betas = grid_axis(resolution, extent) if dims == 2 else np.zeros(1)
    grid, done = empty_grid(alphas, betas), np.zeros((len(alphas), len(betas)), dtype=bool)
    plane = directions if dims == 2 else (directions[0], torch.zeros_like(directions[0]))  # b = 0: d₂ never moves
    fill_surface({"loss": objective}, plane, alphas, betas, {"loss": grid}, done, save=lambda: None, desc="landscape")
    return Landscape(alphas, betas if dims == 2 else None, grid if dims == 2 else grid[:, 0], directions)
