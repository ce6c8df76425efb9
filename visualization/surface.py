"""The 2D loss surface around a model: L(θ + a·d₁ + b·d₂) on a grid of (a, b).

Each point sets the weights in place (Objective.move_to: no copy of the model, no flattening) and
runs forward passes on batches tokenized once, so a point costs about one plain evaluation. A boolean
`done` grid says which points are evaluated; `fill_surface` evaluates only the others and calls `save`
after every row, so an interrupted surface resumes where it stopped and ends identical. The loss
grids cannot say it themselves: a point where the loss diverged holds NaN or inf and is done, never
evaluated again. Index [i, j] of a grid is the point (alphas[i], betas[j]).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from optimization.objective import Objective
from utils import distributed
from utils.progress import progress


def grid_axis(resolution: int, extent: float) -> np.ndarray:
    """`resolution` values from -extent to extent, exactly symmetric, exactly 0 in the middle if odd."""
    steps = 2 * np.arange(resolution) - (resolution - 1)
    return extent * (steps / (resolution - 1))


def empty_grid(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """A loss grid before any evaluation (NaN until a point is done)."""
    return np.full((len(alphas), len(betas)), np.nan)


def fill_surface(objectives: dict[str, Objective], directions: tuple[torch.Tensor, torch.Tensor],
                 alphas: np.ndarray, betas: np.ndarray, grids: dict[str, np.ndarray], done: np.ndarray,
                 save: Callable[[], None], desc: str = "") -> None:
    """Evaluate every point not `done` into `grids[name]` with `objectives[name]` (which share one
    model) and mark it done, whatever the loss (a diverged point is recorded, not retried).

    In a torchrun job's collective stage the ranks split each row's points (every world_size-th), with
    objectives built under `distributed.alone()` (each on the whole evaluation set); the row's losses are then
    summed over the ranks, so every rank holds the whole grid and rank 0 saves it."""
    split, ranks, rank = distributed.splits(), distributed.world_size(), distributed.rank()
    mover = next(iter(objectives.values()))
    bar = progress(total=done.size, initial=int(done.sum()), desc=desc)
    try:
        for i, a in enumerate(alphas):
            todo = np.flatnonzero(~done[i])
            if not len(todo):
                continue
            row = np.zeros((len(objectives), len(todo)))
            with distributed.alone():
                for k, j in enumerate(todo):
                    if split and k % ranks != rank:
                        continue
                    mover.move_to([a, betas[j]], directions)
                    row[:, k] = [objective.loss() for objective in objectives.values()]
                    bar.update()
            if split:  # each point was evaluated by one rank, zeros elsewhere: the sum is the row
                row = np.reshape(distributed.sum_floats(*row.ravel().tolist()), row.shape)
            for values, name in zip(row, objectives):
                grids[name][i, todo] = values
            done[i, todo] = True
            save()
    finally:
        mover.restore()
        bar.close()
