"""Random rotations of the parameter space, applied in O(d·Σ factor sizes) and never formed as d×d matrices.

Xie, Mohamadi & Li (ICLR 2025) compare an optimizer on a loss L(θ) with the same optimizer on the rotated
loss L̃(θ̃) = L(Rθ̃): SGD cannot tell the two apart, a coordinate-wise method such as Adam can. R acts on
flat weight vectors (ordered like the model's trainable parameters) and rotates each block of coordinates
on its own: all of them (`global`) or each layer's (`per-layer`, the layers of models.parameters):

    R_b = K_b · P_b,   P_b a random permutation of the block's n coordinates,
                       K_b = A₁ ⊗ A₂ ⊗ A₃ ⊗ A₄ on its first f₁f₂f₃f₄ ≤ n coordinates (f ≈ n^¼, each Aᵢ a Haar-random
                       orthogonal matrix), the remaining < f₁f₂f₃ coordinates rotated the same way, recursively,
                       down to at most DENSE of them, which get one dense Haar factor.

R is orthogonal (permutations times block-diagonal Kronecker products of orthogonal matrices). Applying it
costs 2·n·Σfᵢ flops per block and a gather of the n coordinates; it stores one index per coordinate and the
small factors. The factors are drawn in float64 on the CPU from `seed` alone, so the same seed gives the same
R on every device, and cast to the working dtype.

Why four factors: a training step costs about 6·d·T flops for T tokens, and a rotated one adds R·θ̃ and Rᵀ·g,
4·d·Σf flops, a ratio of 1 + 2Σf/(3T). At DistilGPT2's 82M weights, three factors of 434 give 1.85 for a
batch of 8 × 128 tokens, four of 95 give 1.25 (the goal is at most 1.3); more factors save few flops and
add passes over memory.
"""

from __future__ import annotations

import math

import torch

from models.parameters import layer_groups
from optimization.objective import flatten, views

ROTATIONS = ("none", "global", "per-layer")
FACTORS = 4   # Kronecker factors per block (see above)
DENSE = 64    # blocks of at most this many coordinates get one dense factor


def _haar(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-distributed n×n orthogonal matrix (QR of a Gaussian, signs fixed by R's diagonal), float64."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))


class _Kronecker:
    """An orthogonal map on n contiguous coordinates: a Kronecker product of small factors on the first
    f₁f₂f₃ of them, the same construction recursively on the rest."""

    def __init__(self, n: int, generator: torch.Generator, device, dtype):
        if n <= DENSE:
            self.sizes = [n]
        else:
            f = max(2, int(math.floor(n ** (1 / FACTORS) + 1e-9)))
            self.sizes = [f] * (FACTORS - 1) + [n // f ** (FACTORS - 1)]
        self.head = math.prod(self.sizes)
        self.factors = [_haar(s, generator).to(device=device, dtype=dtype) for s in self.sizes]
        self.rest = _Kronecker(n - self.head, generator, device, dtype) if n > self.head else None

    def apply(self, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        y = x[: self.head]
        before = 1
        for size, factor in zip(self.sizes, self.factors):
            after = self.head // (before * size)
            matrix = factor.T if transpose else factor
            if after == 1:  # the last axis: one matmul from the right, not `before` matrix-vector products
                y = y.reshape(before, size) @ matrix.T
            else:  # the factor acts on the middle axis of (before, size, after): a batched matmul
                y = torch.matmul(matrix, y.reshape(before, size, after))
            before *= size
        y = y.reshape(-1)
        return y if self.rest is None else torch.cat([y, self.rest.apply(x[self.head:], transpose)])


class Rotation:
    """θ = R·θ̃ for flat vectors of the parameters with the given numbers of elements, one block per group
    of parameter positions (every position in exactly one group)."""

    def __init__(self, numels: list[int], groups: list[list[int]], seed: int, device="cpu", dtype=torch.float32):
        generator = torch.Generator().manual_seed(seed)
        offsets = [0]
        for n in numels:
            offsets.append(offsets[-1] + n)
        self.dim = offsets[-1]
        placed, gathered, self.blocks = [], [], []
        for group in groups:
            coordinates = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in group])
            placed.append(coordinates)
            gathered.append(coordinates[torch.randperm(len(coordinates), generator=generator)])
            self.blocks.append(_Kronecker(len(coordinates), generator, device, dtype))
        self.sizes = [len(c) for c in placed]
        self.gather = torch.cat(gathered).to(device)                # P: block layout <- coordinates, permuted
        placement = torch.cat(placed)
        # where each block's output goes; None when the blocks are contiguous and in order (global, GPT-2 layers)
        self.placement = None if torch.equal(placement, torch.arange(self.dim)) else placement.to(device)

    def apply(self, flat: torch.Tensor) -> torch.Tensor:
        """R·x."""
        blocks = flat.index_select(0, self.gather).split(self.sizes)
        out = torch.cat([block.apply(x, transpose=False) for block, x in zip(self.blocks, blocks)])
        return out if self.placement is None else torch.empty_like(out).index_put_((self.placement,), out)

    def transpose(self, flat: torch.Tensor) -> torch.Tensor:
        """Rᵀ·x = R⁻¹·x."""
        laid_out = flat if self.placement is None else flat.index_select(0, self.placement)
        out = torch.cat([block.apply(x, transpose=True) for block, x in zip(self.blocks, laid_out.split(self.sizes))])
        return torch.empty_like(out).index_put_((self.gather,), out)


def build_rotation(kind: str, names: list[str], numels: list[int], seed: int, device="cpu",
                   dtype=torch.float32) -> Rotation | None:
    """The rotation of `kind` (none, global, per-layer) for parameters with these names and sizes; None for none."""
    if kind not in ROTATIONS:
        raise ValueError(f"rotation must be one of {', '.join(ROTATIONS)}, got {kind!r}")
    if kind == "none":
        return None
    groups = [list(range(len(names)))] if kind == "global" else list(layer_groups(list(names)).values())
    return Rotation(numels, groups, seed, device, dtype)


class RotatedWeights:
    """Training on the rotated loss θ̃ ↦ L(Rθ̃): the optimizer updates `latent` (θ̃, tensors shaped like the
    model's trainable parameters) and the model holds θ = Rθ̃, so its state_dict, and every checkpoint, is θ."""

    def __init__(self, model, kind: str, seed: int, latent: list[torch.Tensor] | None = None):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        first = self.params[0]
        self.rotation = build_rotation(kind, [n for n, _ in named], [p.numel() for p in self.params], seed,
                                       first.device, first.dtype)
        if latent is None:  # θ̃₀ = Rᵀθ₀: the model starts where it would without the rotation, up to rounding
            latent = views(self.rotation.transpose(flatten([p.detach() for p in self.params])), self.params)
        self.latent = [torch.nn.Parameter(t.detach().clone().to(first.device)) for t in latent]
        self.push()

    @torch.no_grad()
    def push(self) -> None:
        """Set the model's weights to θ = Rθ̃ (after every optimizer step)."""
        torch._foreach_copy_(self.params, views(self.rotation.apply(flatten(self.latent)), self.params))

    @torch.no_grad()
    def pull_gradients(self) -> None:
        """θ̃.grad = Rᵀ ∇θ L, from the gradients backward left on the model."""
        grads = views(self.rotation.transpose(flatten(
            [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params])), self.params)  # unused: none
        for latent, grad in zip(self.latent, grads):
            latent.grad = grad  # a view of the one rotated gradient: no copy
        for p in self.params:
            p.grad = None
