"""The one loss function of the project: token cross-entropy over the non-padded target tokens.

Every number the project reports (training loss, validation/test perplexity, sharpness, landscapes)
is `sum of token losses / number of target tokens` over a set of batches, never a mean of batch
means, so batches of different lengths weigh by their tokens and padding never counts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from data.batches import Batch, to_device
from utils import distributed


def summed_token_loss(model, batch: Batch, closed_form_curvature: bool = False) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropies over the batch's target tokens, their number).

    closed_form_curvature: the same loss and gradient, but a gradient taken with create_graph=True differentiates
    again through the closed form of the cross-entropy's Hessian in logit space (`_TokenCrossEntropy`), not
    through autograd's log_softmax twice: cheaper Hessian-vector products (Objective.hvp)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Shift the labels, not the logits: slicing the (B, T, V) logits would copy them and their gradient.
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    logits = logits.flatten(0, 1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 autocast: the loss in fp32
    if closed_form_curvature:
        token_losses = _TokenCrossEntropy.apply(logits, targets.flatten())
    else:
        token_losses = F.cross_entropy(logits, targets.flatten(), ignore_index=-100, reduction="none")
    # Summed in float64: an fp32 sum of hundreds of token losses rounds far more than each token's loss
    # does, and sharpness compares losses that differ by a few parts in 10⁷. The gradient is unchanged
    # (d sum / d token loss = 1 in any dtype).
    loss_sum = token_losses.to(torch.promote_types(token_losses.dtype, torch.float64)).sum()
    return loss_sum, int((targets != -100).sum())


class _TokenCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropies (targets -100 give 0), as F.cross_entropy(reduction="none") computes them; the
    backward is _CrossEntropyGradient, whose own backward is the closed form of the second derivative."""

    @staticmethod
    def forward(ctx, logits, targets):
        ctx.save_for_backward(logits, targets)
        return F.cross_entropy(logits, targets, ignore_index=-100, reduction="none")

    @staticmethod
    def backward(ctx, grad_losses):
        logits, targets = ctx.saved_tensors
        return _CrossEntropyGradient.apply(logits, targets, grad_losses), None


class _CrossEntropyGradient(torch.autograd.Function):
    """G = w ⊙ (softmax(Z) − onehot(y)) row by row (w: the token losses' incoming gradient, 0 where y is padding).

    Its backward applies the cross-entropy's Hessian in logit space, diag(p) − ppᵀ, to the incoming U row by row
    in O(V) (p ⊙ (u − p·u)), where autograd's double backward of log_softmax takes several more passes over the
    (tokens × vocabulary) logits."""

    @staticmethod
    def forward(ctx, logits, targets, grad_losses):
        kept = (targets != -100).unsqueeze(1)
        weights = grad_losses.unsqueeze(1) * kept
        probabilities = torch.softmax(logits, dim=-1)
        targets = targets.unsqueeze(1).where(kept, 0)  # padded rows weigh 0: any column will do
        ctx.save_for_backward(probabilities, targets, weights, kept)
        return (probabilities * weights).scatter_add_(1, targets, -weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        probabilities, targets, weights, kept = ctx.saved_tensors
        # (p·u) per row, as a batched dot product: no (tokens × vocabulary) temporary.
        p_dot_u = torch.bmm(probabilities.unsqueeze(1), grad_output.unsqueeze(2)).view(-1, 1)
        grad_logits = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_logits = (grad_output - p_dot_u).mul_(probabilities).mul_(weights)
        if ctx.needs_input_grad[2]:  # dG/dw = p − onehot(y) on kept rows, against U
            grad_weights = ((p_dot_u - grad_output.gather(1, targets)) * kept).view(-1)
        return grad_logits, None, grad_weights


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
