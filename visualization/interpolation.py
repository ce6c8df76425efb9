"""The loss along the straight line between two models: θ(α) = (1−α)·θ₀ + α·θ₁.

The Objective is built on the model at θ₀ (its base) and θ₁ enters as a direction, so each point is
`move_to([α], [θ₁], base_scale=1−α)`: in place, and bit-exactly θ₀ at α = 0 and θ₁ at α = 1.
The barrier is the largest excess of the loss over the chord between the endpoints,
max over α in [0, 1] of L(α) − ((1−α)·L(0) + α·L(1)), taken on the α grid (which always holds 0 and 1).
It is 0 when the loss is convex along the line and positive when a hill separates the two models.
"""

from __future__ import annotations

import numpy as np
import torch

from optimization.objective import Objective
from utils.progress import progress
from config.schema import LandscapeConfig
from utils.errors import UserError


def interpolation_alphas(cfg: LandscapeConfig) -> np.ndarray:
    """`cfg.points` evenly spaced values over [alpha_min, alpha_max], plus 0 and 1 where they are missing."""
    evenly = np.linspace(cfg.alpha_min, cfg.alpha_max, cfg.points)
    return np.unique(np.round(np.concatenate([evenly, [0.0, 1.0]]), 12))


def weights_in(objective: Objective, model, what: str) -> torch.Tensor:
    """The trainable weights of `model` as a flat vector in the objective's weight space (same parameter order)."""
    names, params = zip(*[(name, p) for name, p in model.named_parameters() if p.requires_grad])
    if names != objective.names or any(p.shape != q.shape for p, q in zip(params, objective.params)):
        raise UserError(f"{what}: the two models have different architectures or vocabularies, "
                        "so no straight line joins them")
    return objective.flatten([p.detach() for p in params]).to(objective.device)


def interpolate(objectives: dict[str, Objective], theta1: torch.Tensor, alphas, desc: str = "") -> dict[str, list]:
    """Loss of each objective at every θ(α); the objectives share one model, whose base is θ₀."""
    mover = next(iter(objectives.values()))
    losses = {name: [] for name in objectives}
    try:
        for alpha in progress(alphas, desc=desc):
            mover.move_to([alpha], [theta1], base_scale=1.0 - alpha)
            for name, objective in objectives.items():
                losses[name].append(objective.loss())
    finally:
        mover.restore()
    return losses


def barrier(alphas, losses) -> tuple[float, float]:
    """(height, α) of the largest excess of the loss over the chord between α = 0 and α = 1."""
    alphas, losses = np.asarray(alphas, dtype=float), np.asarray(losses, dtype=float)
    start, end = losses[alphas == 0.0][0], losses[alphas == 1.0][0]
    inside = (alphas >= 0.0) & (alphas <= 1.0)
    excess = losses[inside] - ((1.0 - alphas[inside]) * start + alphas[inside] * end)
    k = int(np.argmax(excess))
    return float(excess[k]), float(alphas[inside][k])


def curve_record(alphas, train_loss: list[float], val_loss: list[float]) -> dict:
    """The losses along one line and the barrier of each."""
    height, where = barrier(alphas, train_loss)
    val_height, val_where = barrier(alphas, val_loss)
    return {"train_loss": train_loss, "val_loss": val_loss, "barrier": height, "barrier_alpha": where,
            "val_barrier": val_height, "val_barrier_alpha": val_where}
