"""Pruning a LoRA adapter: which of its weights matter (lottery tickets, Frankle & Carbin 2019, on LoRA).

A mask keeps (True) or zeroes (False) each adapter weight. For a fraction p of n weights, exactly
round(p·n) are zeroed (per matrix: round(p·nᵢ) of each matrix's nᵢ, so the total may differ from p by
rounding; `pruned_fraction` says what it was):
  magnitude  the smallest |w|: over all adapter weights together (scope global) or within each matrix
             (per-matrix); ties go to the earlier index, so a mask is a pure function of the weights
  random     a uniformly random subset, drawn on the CPU from `seed`
The rewind test retrains a mask from the adapter's initial values: the kept weights start where they did
before training and the pruned ones stay exactly zero (`retrain_masked`).
"""

from __future__ import annotations

import torch

from data.batches import batches_in_order, epoch_order, to_device
from optimization.evaluation import summed_token_loss
from optimization.optimizers import make_optimizer
from config.schema import TrainConfig
from utils.progress import progress


def _split_mask(pruned_flat: torch.Tensor, tensors) -> list[torch.Tensor]:
    keep = ~pruned_flat
    return [chunk.view_as(t) for chunk, t in zip(keep.split([t.numel() for t in tensors]), tensors)]


def magnitude_masks(tensors, fraction: float, scope: str) -> list[torch.Tensor]:
    """Masks that zero the `fraction` of smallest-magnitude weights (globally or per matrix)."""
    if scope == "per-matrix":
        return [magnitude_masks([t], fraction, "global")[0] for t in tensors]
    flat = torch.cat([t.detach().reshape(-1).abs().cpu() for t in tensors])
    pruned = torch.zeros(flat.numel(), dtype=torch.bool)
    pruned[torch.sort(flat, stable=True).indices[:round(fraction * flat.numel())]] = True
    return _split_mask(pruned, tensors)


def random_masks(tensors, fraction: float, scope: str, seed: int) -> list[torch.Tensor]:
    """Masks that zero a random `fraction` of the weights (globally or per matrix), drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    groups = [[t] for t in tensors] if scope == "per-matrix" else [list(tensors)]
    masks = []
    for group in groups:
        n = sum(t.numel() for t in group)
        pruned = torch.zeros(n, dtype=torch.bool)
        pruned[torch.randperm(n, generator=generator)[:round(fraction * n)]] = True
        masks += _split_mask(pruned, group)
    return masks


def pruned_fraction(masks) -> float:
    return sum(int((~m).sum()) for m in masks) / sum(m.numel() for m in masks)


def flat_mask(masks) -> torch.Tensor:
    """The masks as one flat boolean vector, ordered like the tensors they were made for."""
    return torch.cat([m.reshape(-1) for m in masks])


def retrain_masked(model, params, masks, train: TrainConfig, sequences, lengths, order: str, seed: int, epochs: int,
                   pad_id: int, desc: str = "") -> list[float]:
    """Train `params` of `model` from where they are for `epochs`, with train's optimizer, lr, batch size and
    clipping (a constant learning rate), zeroing the masked weights after every step; the step losses."""
    device = params[0].device
    masks = [m.to(device) for m in masks]
    optimizer = make_optimizer(params, train)
    torch.manual_seed(seed)
    model.train()
    losses = []
    for epoch in range(epochs):
        batches = batches_in_order(sequences, epoch_order(lengths, order, seed, epoch), train.batch_size, pad_id)
        for batch in progress(batches, total=-(-len(sequences) // train.batch_size), desc=f"{desc} epoch {epoch + 1}"):
            loss_sum, n_targets = summed_token_loss(model, to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            (loss_sum / n_targets).backward()
            if train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
            optimizer.step()
            with torch.no_grad():
                torch._foreach_mul_(params, masks)
            losses.append(loss_sum.item() / n_targets)
    model.eval()
    return losses
