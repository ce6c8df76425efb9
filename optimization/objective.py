"""L(θ): the loss of one model on one fixed set of batches, as a function of its weights.

Sharpness and loss landscapes both stand on this object, so every metric sees the same data and
the same definition of the loss (`summed_token_loss`, token-weighted across batches, model in eval
mode). Vectors in weight space are flat tensors on the model's device, in the model's dtype (fp32 in
the pipeline; float64 in tests that need exact arithmetic), ordered like `model.parameters()` (tied
weights, such as GPT-2's wte/lm_head, appear once).

In a torchrun job's collective stage (utils.distributed), each rank holds every world_size-th batch and the
loss, gradient and H·v are sums over the ranks' batches, all-reduced: every rank gets the numbers one process
would (to floating-point rounding), so every rank's eigen-solver takes the same steps.

The loss of a batch is a `BatchLoss`: the project's is TOKEN_LOSS; sharpness.hessian builds others for a user's
own loss function on any nn.Module.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from data.batches import Batch, count_targets, to_device
from optimization.evaluation import summed_token_loss
from utils import distributed


def flatten(tensors) -> torch.Tensor:
    """One flat vector of the tensors, in order."""
    return torch.cat([t.reshape(-1) for t in tensors])


def views(flat: torch.Tensor, like) -> list[torch.Tensor]:
    """Views of a flat vector shaped like each tensor of `like` (no copy)."""
    return [chunk.view_as(p) for chunk, p in zip(flat.split([p.numel() for p in like]), like)]


@dataclass(frozen=True)
class BatchLoss:
    """How L is taken over batches: L = Σ summed(model, b) / Σ count(b). `summed` returns a 0-d tensor that
    autograd can differentiate twice; `to_device` moves a batch to the model's device. `summed_for_hvp`, when
    given, is the same function with a cheaper double backward, for reverse-over-reverse HVPs."""
    summed: Callable[..., torch.Tensor]
    count: Callable[..., int]
    to_device: Callable
    summed_for_hvp: Callable[..., torch.Tensor] | None = None


TOKEN_LOSS = BatchLoss(lambda model, batch: summed_token_loss(model, batch)[0], count_targets, to_device,
                       lambda model, batch: summed_token_loss(model, batch, closed_form_curvature=True)[0])


class Objective:
    def __init__(self, model, batches: list, hvp_mode: str = "reverse", batch_loss: BatchLoss = TOKEN_LOSS):
        if hvp_mode not in ("reverse", "forward"):
            raise ValueError(f"hvp_mode must be 'reverse' or 'forward', got {hvp_mode!r}")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.batch_loss = batch_loss
        self.n_tokens = sum(batch_loss.count(b) for b in batches)  # of the whole set, on every rank
        self.split = distributed.splits()  # whether this rank holds a share and its sums are all-reduced
        self.batches = [batch_loss.to_device(b, self.device) for b in distributed.shard(batches)]
        self.hvp_mode = hvp_mode
        self.names, self.params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
        self.base = self.flatten([p.detach() for p in self.params]).clone()
        self.dim = self.base.numel()
        self.hvp_count = 0

    # ---- vectors ---------------------------------------------------------------------------
    def flatten(self, tensors) -> torch.Tensor:
        return flatten(tensors)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of a flat vector (no copy)."""
        return views(flat, self.params)

    # ---- moving the weights ----------------------------------------------------------------
    @torch.no_grad()
    def move_to(self, coefficients=(), directions=(), base_scale: float = 1.0) -> None:
        """Set the weights in place to base_scale·base + Σ cᵢ·dᵢ (no copy of the model, no flattening).

        base_scale lets interpolation write (1-α)·θ₀ + α·θ₁, which is exactly θ₁ at α = 1."""
        torch._foreach_copy_(self.params, self.views(self.base))
        if base_scale != 1.0:
            torch._foreach_mul_(self.params, float(base_scale))
        for c, d in zip(coefficients, directions):
            if c:
                torch._foreach_add_(self.params, self.views(d), alpha=float(c))

    def restore(self) -> None:
        self.move_to()

    @contextmanager
    def moved(self, coefficients, directions):
        self.move_to(coefficients, directions)
        try:
            yield
        finally:
            self.restore()

    # ---- loss and its derivatives ---------------------------------------------------------
    @torch.inference_mode()
    def loss(self) -> float:
        """L at the current weights (forward passes only; SDPA attention)."""
        local = sum(self.batch_loss.summed(self.model, b).item() for b in self.batches)
        return distributed.sum_floats(local, split=self.split)[0] / self.n_tokens

    def loss_and_grad(self) -> tuple[float, torch.Tensor]:
        total, grad = 0.0, torch.zeros_like(self.base)
        for b in self.batches:
            loss_sum = self.batch_loss.summed(self.model, b)
            grads = torch.autograd.grad(loss_sum / self.n_tokens, self.params)
            grad += self.flatten(grads)
            total += loss_sum.item()
        return (distributed.sum_floats(total, split=self.split)[0] / self.n_tokens,
                distributed.all_reduce_sum(grad, split=self.split))

    def hvp(self, vector: torch.Tensor) -> torch.Tensor:
        """Exact H·v at the current weights (no finite differences), summed batch by batch.

        SDPA's fused CPU kernel has no double backward, so second-order passes use its math kernel. Reverse mode
        takes the batch loss's `summed_for_hvp` when it has one (TOKEN_LOSS: the cross-entropy's second derivative
        in closed form in logit space: a third faster where the output layer dominates, bench/hvp_cost.py)."""
        self.hvp_count += 1
        result = torch.zeros_like(self.base)
        with sdpa_kernel(SDPBackend.MATH):
            for b in self.batches:
                result += self._batch_hvp(b, vector)
        return distributed.all_reduce_sum(result, split=self.split)

    def _batch_hvp(self, batch: Batch, vector: torch.Tensor) -> torch.Tensor:
        if self.hvp_mode == "reverse":  # reverse-over-reverse: grad of (∇L · v)
            loss_sum = (self.batch_loss.summed_for_hvp or self.batch_loss.summed)(self.model, batch)
            grads = torch.autograd.grad(loss_sum / self.n_tokens, self.params, create_graph=True)
            return self.flatten(torch.autograd.grad(grads, self.params, grad_outputs=self.views(vector)))
        # forward-over-reverse: a jvp of the gradient function
        from torch.func import functional_call, grad, jvp

        def scaled_loss(params):
            weights = dict(zip(self.names, params))
            return self.batch_loss.summed(_Bound(self.model, weights, functional_call), batch) / self.n_tokens

        primals = tuple(p.detach() for p in self.params)
        _, hv = jvp(grad(scaled_loss), (primals,), (tuple(self.views(vector)),))
        return self.flatten(hv)


class _Bound:
    """Calls `model` with substituted weights (torch.func); a BatchLoss's `summed` calls it as it would the model."""

    def __init__(self, model, weights, functional_call):
        self.model, self.weights, self.functional_call = model, weights, functional_call

    def __call__(self, *args, **kwargs):
        return self.functional_call(self.model, self.weights, args, kwargs)
