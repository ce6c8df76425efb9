"""The Hessian of a model's loss on a fixed set of batches, as one object (as PyHessian's `hessian`): its extreme
eigenvalues, trace, spectral density, ε-sharpness and (1,1)-norm, each from Hessian-vector products (HVPs) only.

    from sharpness.hessian import Hessian
    h = Hessian(model, batches)   # any Hugging Face causal LM; batches of token ids (see Hessian)
    h.eigenvalues(k=3).eigenvalues, h.trace()["mean"], h.density(), h.l11_norm()["value"], h.eps_sharpness(1e-3)
    Hessian(net, batches, loss=lambda net, batch: F.cross_entropy(net(batch[0]), batch[1]))   # any nn.Module

Every method runs the pipeline's own implementation, so its numbers are those of the sharpness and geometry
stages for the same settings: the loss and H·v of optimization.objective.Objective (by default the
token-weighted next-token cross-entropy, model in eval mode), Lanczos and Hutchinson of optimization.curvature,
SLQ of sharpness.density, ε-sharpness of sharpness.sharpness, the Cauchy sketch of sharpness.geometry. The
defaults are the pipeline's (config.schema), but for the density's probes (the pipeline's 0 means off). To take
the Hessian of a block of weights only, set requires_grad=False on the others first. The loss landscape around
the weights: visualization.hessian_landscape.landscape(h) (visualization sits beside sharpness, not below it).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from config.schema import DensityConfig, GeometryConfig, SharpnessConfig
from data.batches import Batch
from optimization.curvature import EigenResult, hutchinson_trace, lanczos
from optimization.objective import TOKEN_LOSS, BatchLoss, Objective
from sharpness.density import SpectralDensity, reorthogonalizes, slq
from sharpness.geometry import cauchy_sketch, row_norm_statistics
from sharpness.sharpness import curvatures, eps_sharpness, random_unit_directions, taylor_check

SHARPNESS, DENSITY, GEOMETRY = SharpnessConfig(), DensityConfig(), GeometryConfig()
PROBES = 5  # SLQ probes by default: the spread of the estimated moments falls as 1/√probes


def as_batch(batch) -> Batch:
    """A batch as Objective takes it, from a (batch, length) tensor of token ids or a mapping with `input_ids` and
    optionally `attention_mask` (1 on real tokens; a tokenizer's output) and `labels` (-100 where no loss is taken;
    by default the input ids, masked where attention_mask is 0)."""
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    fields = dict(batch) if isinstance(batch, Mapping) else {}
    if not isinstance(fields.get("input_ids"), torch.Tensor) or fields["input_ids"].dim() != 2:
        raise ValueError("each batch must be a 2-D tensor of token ids or a mapping with a 2-D 'input_ids' tensor, "
                         f"got {type(batch).__name__}")
    input_ids = fields["input_ids"]
    attention_mask = fields.get("attention_mask", torch.ones_like(input_ids))
    labels = fields.get("labels", input_ids.masked_fill(attention_mask == 0, -100))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def batch_size(batch) -> int:
    """A batch's weight in a custom loss's L: its number of examples, the first dimension of the batch if it is a
    tensor, else of its first tensor (a tuple or list's first item, a mapping's first value)."""
    first = batch
    while isinstance(first, (tuple, list, Mapping)) and len(first):
        first = next(iter(first.values())) if isinstance(first, Mapping) else first[0]
    if not isinstance(first, torch.Tensor) or first.dim() == 0:
        raise ValueError("with a custom loss each batch must be a tensor, or a tuple, list or mapping whose first item "
                         f"is a tensor with a batch dimension, got {type(batch).__name__}")
    return first.shape[0]


def moved(batch, device):
    """The batch with every tensor in it (nested in tuples, lists and mappings) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: moved(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(moved(item, device) for item in batch)
    return batch


def custom_loss(loss) -> BatchLoss:
    """L = Σ_b n_b·loss(model, b) / Σ_b n_b, n_b = batch_size(b): the mean over all examples when `loss` returns
    a batch's mean, whatever the batch sizes. The product is taken in float64, as the token losses are summed."""
    def summed(model, batch) -> torch.Tensor:
        value = loss(model, batch)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise ValueError(f"the loss function must return a scalar tensor (0-d), got {type(value).__name__}"
                             + (f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""))
        return value.to(torch.promote_types(value.dtype, torch.float64)) * batch_size(batch)

    return BatchLoss(summed, batch_size, moved)


class Hessian:
    """H = ∇²L(θ) of `model` at its current weights. Without `loss`, L is the token-weighted mean next-token
    cross-entropy over `batches` (a list: each a (batch, length) tensor of token ids or a tokenizer's output; see
    as_batch). With `loss`, a function (model, batch) -> the batch's mean loss as a 0-d tensor, `model` any
    nn.Module and a batch anything it takes (a tensor, or a tuple, list or mapping of them): L is the mean over
    examples, each batch weighted by its size (custom_loss). The function must call the model as `model(...)`, as
    it is given (with hvp_mode="forward" it is given a functional stand-in). Only parameters with requires_grad
    count. `hvp_mode`: "reverse" (reverse-over-reverse) or "forward" (forward-over-reverse). `graph_memory`: the
    share of the free memory in which reverse-mode products keep each batch's gradient graph while the weights stay
    put (later products are then cheaper; 0: never). The model is put in eval mode; every vector is flat, ordered
    like its parameters."""

    def __init__(self, model, batches, *, loss=None, hvp_mode: str = SHARPNESS.hvp,
                 graph_memory: float = SHARPNESS.graph_memory):
        batches = list(batches) if loss is not None else [as_batch(b) for b in batches]
        if not batches:
            raise ValueError("Hessian needs at least one batch")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("Hessian needs at least one parameter with requires_grad=True")
        batch_loss = TOKEN_LOSS if loss is None else custom_loss(loss)
        self.objective = Objective(model, batches, hvp_mode=hvp_mode, batch_loss=batch_loss, graph_memory=graph_memory)

    @property
    def model(self):
        return self.objective.model

    def loss(self) -> float:
        """L at the current weights."""
        return self.objective.loss()

    @property
    def dim(self) -> int:
        """The number of weights H acts on."""
        return self.objective.dim

    @property
    def hvps(self) -> int:
        """Hessian-vector products computed so far."""
        return self.objective.hvp_count

    def hvp(self, vector: torch.Tensor) -> torch.Tensor:
        """H·v, exact (no finite differences)."""
        return self.objective.hvp(vector)

    def eigenvalues(self, k: int = SHARPNESS.top_k, *, bottom: bool = True, max_iter: int = SHARPNESS.max_iter,
                    tol: float = SHARPNESS.tol, seed: int = SHARPNESS.seed) -> EigenResult:
        """The k largest eigenvalues (`.eigenvalues`, descending) and, with `bottom`, the smallest (`.lambda_min`),
        by Lanczos: each an Estimate with its measured residual ‖Hx − θx‖ and a converged flag (the rule of
        optimization.curvature); `.eigenvector` is the top one's. At most max_iter HVPs, plus k + 1 for the
        residuals."""
        return lanczos(self.objective.hvp, self.dim, k=k, max_iter=max_iter, tol=tol, seed=seed,
                       device=self.objective.device, dtype=self.objective.base.dtype, bottom=bottom,
                       true_residuals=True)

    def trace(self, samples: int = SHARPNESS.trace_samples, *, seed: int = SHARPNESS.seed) -> dict:
        """tr(H) by Hutchinson: {"mean", "stderr" (its standard error), "samples"}; `samples` HVPs."""
        return hutchinson_trace(self.objective, samples, seed)

    def density(self, probes: int = PROBES, steps: int = DENSITY.steps, *, seed: int = DENSITY.seed,
                reorthogonalize: str = DENSITY.reorthogonalize, memory_mb: int = DENSITY.memory_mb) -> SpectralDensity:
        """The spectral density by stochastic Lanczos quadrature (sharpness.density): per probe, Ritz values and
        Gauss weights; `.smoothed(*density.default_grid())` draws it, `.moment(p)` estimates tr(Hᵖ). probes·steps
        HVPs. `reorthogonalize`: "full", "none", or "auto" (full when steps·d floats fit in memory_mb MiB)."""
        dtype = self.objective.base.dtype
        return slq(self.objective.hvp, self.dim, probes=probes, steps=steps, seed=seed,
                   reorthogonalize=reorthogonalizes(reorthogonalize, self.dim, steps, memory_mb, dtype),
                   device=self.objective.device, dtype=dtype)

    def eps_sharpness(self, eps: float = SHARPNESS.epsilons[0], random_directions: int = SHARPNESS.random_directions,
                      *, max_iter: int = SHARPNESS.max_iter, tol: float = SHARPNESS.tol,
                      seed: int = SHARPNESS.seed) -> dict:
        """ε-sharpness as the sharpness stage measures it (sharpness.sharpness.eps_sharpness): relative increases
        100·(L(θ + εd) − L(θ))/L(θ) in % for d = ± the top eigenvector ("eigvec", the larger; "eigvec_sign") and
        for `random_directions` random unit vectors ("random_max", "random_mean"); the symmetric differences
        (L(θ+εd) + L(θ−εd))/2 − L(θ) with their predictions ½ε²dᵀHd ("*_symmetric_*"); values within rounding are
        None and listed in "below_resolution". Also "base_loss", "lambda_max" and "taylor": the one-sided increase
        along the eigenvector against (ε·gᵀv + ½ε²·vᵀHv)/L (sharpness.sharpness.taylor_check). Cost: the top
        eigenvector (≤ max_iter + 2 HVPs), 1 + random_directions HVPs and 2 + 2·random_directions losses."""
        base_loss, gradient = self.objective.loss_and_grad()
        top = self.eigenvalues(k=1, bottom=False, max_iter=max_iter, tol=tol, seed=seed)
        curvature = curvatures(self.objective, [top.eigenvector])[0]
        randoms = random_unit_directions(self.objective.base, random_directions, seed + 1)  # as the stage draws them
        sharp = eps_sharpness(self.objective, base_loss, eps, top.eigenvector, curvature, randoms,
                              curvatures(self.objective, randoms))
        taylor = taylor_check(base_loss, gradient, sharp["eigvec_sign"] * top.eigenvector, curvature, eps, sharp["eigvec"])
        return {"eps": eps, "base_loss": base_loss, "lambda_max": top.lambda_max, **sharp, "taylor": taylor}

    def l11_norm(self, cauchy_vectors: int = GEOMETRY.cauchy_vectors, *, seed: int = GEOMETRY.seed,
                 bootstrap: int = GEOMETRY.bootstrap, confidence: float = GEOMETRY.confidence,
                 folder: str | Path | None = None) -> dict:
        """‖H‖₁,₁ = Σᵢ‖Hᵢ‖₁ from a Cauchy sketch (sharpness.geometry): {"value" (the median estimator), "stderr",
        "ci" (at `confidence`; None below 10 vectors or without bootstrap), "half_iqr" (the other estimator),
        "largest_row" (‖H‖∞'s estimate), "cauchy_vectors"}. cauchy_vectors HVPs; the sketch, cauchy_vectors × d
        float32 values, is kept on disk in `folder` (a temporary folder by default) until it is summed."""
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            sketch = cauchy_sketch(self.objective.hvp, self.objective.base, cauchy_vectors, seed,
                                   Path(scratch) / "sketch.npy", stamp="hessian")
            numels = [p.numel() for p in self.objective.params]
            stats = row_norm_statistics(sketch, numels, bootstrap, confidence, seed)
            del sketch  # the memory map, before its folder goes
        median = stats["median"]
        return {"value": median["total"], "stderr": median["stderr"], "ci": median["ci"], "confidence": confidence,
                "half_iqr": stats["half_iqr"]["total"], "largest_row": median["largest_row"],
                "cauchy_vectors": cauchy_vectors}
