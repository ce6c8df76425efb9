"""The one loss function of the project: token cross-entropy over the non-padded target tokens.

Every number the project reports (training loss, validation/test perplexity, sharpness, landscapes)
is `sum of token losses / number of target tokens` over a set of batches, never a mean of batch
means, so batches of different lengths weigh by their tokens and padding never counts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from data.batches import Batch, to_device
from utils import distributed


def summed_token_loss(model, batch: Batch) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropies over the batch's target tokens, their number)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Shift the labels, not the logits: slicing the (B, T, V) logits would copy them and their gradient.
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    logits = logits.flatten(0, 1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 autocast: the loss in fp32
    token_losses = F.cross_entropy(logits, targets.flatten(), ignore_index=-100, reduction="none")
    # Summed in float64: an fp32 sum of hundreds of token losses rounds far more than each token's loss
    # does, and sharpness compares losses that differ by a few parts in 10⁷. The gradient is unchanged
    # (d sum / d token loss = 1 in any dtype).
    loss_sum = token_losses.to(torch.promote_types(token_losses.dtype, torch.float64)).sum()
    return loss_sum, int((targets != -100).sum())


@torch.inference_mode()
def evaluate(model, batches: list[Batch], device) -> float:
    """Token-weighted mean loss of `model` (in eval mode) over `batches`, accumulated in float64; in a torchrun
    job's collective stage each rank takes its share of the batches and the sums are added over the ranks."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in distributed.shard(batches):
        loss_sum, n = summed_token_loss(model, to_device(batch, device))
        total += loss_sum.item()
        count += n
    model.train(was_training)
    total, count = distributed.sum_floats(total, count)
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf
