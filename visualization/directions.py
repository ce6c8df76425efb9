"""Two random directions in weight space that span the plane of a 2D loss surface (Li et al. 2018).

A raw Gaussian direction moves a tensor of small weights as far as one of large weights, so each
direction is rescaled, unit by unit, to the norm of the weights it moves (`landscape.norm`):
  layer   a unit is a whole parameter tensor (the study's choice, the default)
  filter  a unit is one output unit, as Li et al. do: a column of a GPT-2 Conv1D weight (stored as
          [in, out]), a row of any other weight (a Linear's [out, in], GPT-NeoX's fused QKV included; for
          embeddings and an untied lm_head: one token, or one position); a 1-D tensor is one unit
  none    no rescaling
`landscape.ignore: biasbn` makes 1-D tensors (biases, LayerNorm and RMSNorm weights) zero in both directions.
Only parameters move: rotary position tables are buffers, and a tied head is its embedding's one tensor.

The second direction is made orthogonal to the first inside every unit (for `none`: as a whole) and
then rescaled again by the same rule. Rescaling a unit keeps its inner product with the first
direction zero, so the two directions are orthogonal as wholes and both keep the weights' norms.
(The study skipped this; two Gaussian directions are only nearly orthogonal.)

Directions are flat fp32 vectors in an Objective's weight space (tied weights appear once), drawn on
the CPU from `seed` so that every device draws the same ones, and saved with the run so the same plane
can be redrawn and other models evaluated on it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.pytorch_utils import Conv1D

from optimization.objective import Objective
from utils.errors import UserError
from utils.io import save_torch


def conv1d_weight_names(model) -> set[str]:
    """Names of the weights stored as [in, out] (GPT-2's Conv1D), whose output units are columns."""
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, Conv1D)}


def units(flat: torch.Tensor, objective: Objective, norm: str, conv1d_names: set[str]) -> list[torch.Tensor]:
    """Views of `flat` as [units, unit size] matrices: writing to them writes to `flat`."""
    if norm == "none":
        return [flat.view(1, -1)]
    matrices = []
    for name, view in zip(objective.names, objective.views(flat)):
        if norm == "layer" or view.dim() == 1:
            matrices.append(view.reshape(1, -1))
        elif name in conv1d_names:
            matrices.append(view.t())
        else:
            matrices.append(view.reshape(view.shape[0], -1))
    return matrices


def rescale_(direction_units: list[torch.Tensor], weight_units: list[torch.Tensor]) -> None:
    """Give every unit of the direction the norm of the same unit of the weights (zero stays zero)."""
    for d, w in zip(direction_units, weight_units):
        d_norm = d.norm(dim=1, keepdim=True)
        d.mul_(torch.where(d_norm > 0, w.norm(dim=1, keepdim=True) / d_norm, 0.0))


def orthogonalize_(direction_units: list[torch.Tensor], against_units: list[torch.Tensor]) -> None:
    """Remove from every unit of the direction its component along the same unit of `against`."""
    for d, a in zip(direction_units, against_units):
        a_sq = (a * a).sum(dim=1, keepdim=True)
        d.sub_(torch.where(a_sq > 0, (d * a).sum(dim=1, keepdim=True) / a_sq, 0.0) * a)


def random_directions(objective: Objective, conv1d_names: set[str], norm: str, ignore: str,
                      seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(d1, d2) around the objective's base weights, normalised by `norm`, d2 orthogonal to d1."""
    generator = torch.Generator().manual_seed(seed)
    d1, d2 = (torch.randn(objective.dim, generator=generator).to(objective.device) for _ in range(2))
    if ignore == "biasbn":
        for direction in (d1, d2):
            for view in objective.views(direction):
                if view.dim() == 1:
                    view.zero_()
    weight_units = units(objective.base, objective, norm, conv1d_names)
    units1, units2 = (units(d, objective, norm, conv1d_names) for d in (d1, d2))
    if norm != "none":
        rescale_(units1, weight_units)
        rescale_(units2, weight_units)
    orthogonalize_(units2, units1)
    if norm != "none":
        rescale_(units2, weight_units)
    return d1, d2


def save_directions(path: Path, objective: Objective, d1: torch.Tensor, d2: torch.Tensor, settings: dict) -> None:
    """A file loadable with utils.io.load_torch (or torch.load(weights_only=True)): d1, d2, the
    parameters they span, `settings`."""
    save_torch(path, {"d1": d1.cpu(), "d2": d2.cpu(), "names": list(objective.names),
                      "shapes": [list(p.shape) for p in objective.params], **settings})


def directions_for(saved: dict, objective: Objective) -> tuple[torch.Tensor, torch.Tensor]:
    """Saved (d1, d2) on the objective's device; a clear error if its model has other parameters."""
    if saved["names"] != list(objective.names) or saved["shapes"] != [list(p.shape) for p in objective.params]:
        raise UserError("the saved directions belong to a model with other parameters than this one")
    return saved["d1"].to(objective.device), saved["d2"].to(objective.device)
