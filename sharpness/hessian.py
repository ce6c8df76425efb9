"""The Hessian of a language model's loss on a fixed set of batches, as one object (as PyHessian's `hessian`):
its extreme eigenvalues, trace, spectral density and (1,1)-norm, each from Hessian-vector products (HVPs) only.

    from sharpness.hessian import Hessian
    h = Hessian(model, batches)   # any Hugging Face causal LM; batches of token ids (see Hessian)
    h.eigenvalues(k=3).eigenvalues, h.trace()["mean"], h.density(), h.l11_norm()["value"]

Every method runs the pipeline's own implementation, so its numbers are those of the sharpness and geometry
stages for the same settings: the loss and H·v of optimization.objective.Objective (the token-weighted
next-token cross-entropy, model in eval mode), Lanczos and Hutchinson of optimization.curvature, SLQ of
sharpness.density, the Cauchy sketch of sharpness.geometry. The defaults are the pipeline's (config.schema),
but for the density's probes (the pipeline's 0 means off). To take the Hessian of a block of weights only,
set requires_grad=False on the others first.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from config.schema import DensityConfig, GeometryConfig, SharpnessConfig
from data.batches import Batch
from optimization.curvature import EigenResult, hutchinson_trace, lanczos
from optimization.objective import Objective
from sharpness.density import SpectralDensity, reorthogonalizes, slq
from sharpness.geometry import cauchy_sketch, row_norm_statistics

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


class Hessian:
    """H = ∇²L(θ) of `model` at its current weights, L the token-weighted mean next-token cross-entropy over
    `batches` (a list: each a (batch, length) tensor of token ids or a tokenizer's output; see as_batch). Only
    parameters with requires_grad count. `hvp_mode`: "reverse" (reverse-over-reverse) or "forward"
    (forward-over-reverse). The model is put in eval mode; every vector is flat, ordered like its parameters."""

    def __init__(self, model, batches, *, hvp_mode: str = SHARPNESS.hvp):
        batches = [as_batch(b) for b in batches]
        if not batches:
            raise ValueError("Hessian needs at least one batch")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("Hessian needs at least one parameter with requires_grad=True")
        self.objective = Objective(model, batches, hvp_mode=hvp_mode)

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
