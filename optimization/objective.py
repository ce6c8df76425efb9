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

from config.schema import SharpnessConfig
from data.batches import Batch, count_targets, to_device
from optimization.evaluation import summed_token_loss
from utils import distributed
from utils.device import free_memory


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
    def __init__(self, model, batches: list, hvp_mode: str = "reverse", batch_loss: BatchLoss = TOKEN_LOSS,
                 graph_memory: float = SharpnessConfig.graph_memory):
        if hvp_mode not in ("reverse", "forward"):
            raise ValueError(f"hvp_mode must be 'reverse' or 'forward', got {hvp_mode!r}")
        if not 0 <= graph_memory <= 1:
            raise ValueError(f"graph_memory is a share of the free memory, from 0 to 1, got {graph_memory!r}")
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
        self.graph_memory = graph_memory
        self.graph_builds = 0  # forward and backward passes taken for HVPs (each kept graph saves those of later HVPs)
        self._said_too_large = False
        self.release_graphs()

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
        self.release_graphs()
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
        in closed form in logit space: a third faster where the output layer dominates, bench/hvp_cost.py), and
        keeps each batch's gradient graph while the weights stay where they are (graph_memory): the next H·v then
        differentiates it again, skipping the forward and the backward (1.8 instead of 3.0 gradients at
        DistilGPT2's shape; the same numbers, bit for bit)."""
        self.hvp_count += 1
        result = torch.zeros_like(self.base)
        with sdpa_kernel(SDPBackend.MATH):
            if self._graphs and not self._at_graph_weights():  # kept by reverse mode only
                self.release_graphs()
            for index, b in enumerate(self.batches):
                result += self._batch_hvp(index, b, vector)
        return distributed.all_reduce_sum(result, split=self.split)

    # ---- the gradient graphs that reverse-mode HVPs keep between products ----------------------
    def release_graphs(self) -> None:
        """Free the gradient graphs kept for HVPs (moving the weights does; a later H·v builds them again)."""
        self._graphs: dict[int, tuple[torch.Tensor, ...]] = {}  # batch index -> its gradient, with create_graph
        self._graph_weights: list[torch.Tensor] = []  # a copy of the weights the kept graphs were built at
        self._graph_room = 0  # bytes still free for graphs at these weights

    def _at_graph_weights(self) -> bool:
        """Whether the weights are still those the kept graphs were built at, however they might have been changed
        (an optimizer's step, a checkpoint loaded into the model, a write through `.data`)."""
        return all(torch.equal(p, kept) for p, kept in zip(self.params, self._graph_weights))

    def _gradient_graph(self, index: int, batch: Batch) -> tuple[torch.Tensor, ...]:
        """The batch's gradient with its graph (create_graph), kept for later HVPs when it fits in graph_memory of
        the memory free when the first graph at these weights was built. Its size is what autograd saves for
        it (saved_tensors_hooks), the weights left out, plus the gradient itself."""
        if not self._graphs:  # the first graph at these weights: the room, less the copy of the weights
            weights = sum(p.numel() * p.element_size() for p in self.params)
            self._graph_room = int(self.graph_memory * free_memory(self.device)) - weights if self.graph_memory else 0
        saved: dict[int, int] = {}
        weights_storage = {p.untyped_storage().data_ptr() for p in self.params}

        def measure(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights_storage:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(measure, lambda tensor: tensor):
            loss_sum = (self.batch_loss.summed_for_hvp or self.batch_loss.summed)(self.model, batch)
            grads = torch.autograd.grad(loss_sum / self.n_tokens, self.params, create_graph=True)
        self.graph_builds += 1
        size = sum(saved.values()) + sum(g.numel() * g.element_size() for g in grads)
        if size <= self._graph_room:
            if not self._graphs:
                self._graph_weights = [p.detach().clone() for p in self.params]
            self._graphs[index] = grads
            self._graph_room -= size
        elif self.graph_memory and not self._said_too_large:
            print(f"HVPs: a batch's gradient graph ({size / 2**20:.0f} MiB) does not fit in the room left for them "
                  f"({max(self._graph_room, 0) / 2**20:.0f} MiB; sharpness.graph_memory {self.graph_memory:g} of the free "
                  "memory): its products build it each time", flush=True)
            self._said_too_large = True
        return grads

    def _batch_hvp(self, index: int, batch: Batch, vector: torch.Tensor) -> torch.Tensor:
        if self.hvp_mode == "reverse":  # reverse-over-reverse: grad of (∇L · v)
            grads = self._graphs.get(index) or self._gradient_graph(index, batch)
            return self.flatten(torch.autograd.grad(grads, self.params, grad_outputs=self.views(vector),
                                                    retain_graph=index in self._graphs))
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
