"""What the ℓ∞-geometry stage and rotated training cost, measured side by side in one run (figures, not a test).

1. HVPs per second with Cauchy vectors against Gaussian ones on the same Objective (the operator does not
   care what it multiplies: the ratio should be 1), on one batch of 8 texts × 128 tokens.
2. Peak memory of the (1,1) statistics (the k × d sketch is a memory-mapped file; numpy's allocations are
   traced while its chunks are read) against the k·d·4 bytes the sketch would take in memory, for a
   sketch of --dim coordinates written by a cheap diagonal operator (no model needed).
3. The rotation's overhead per training step: an SGD step on the rotated loss (θ = Rθ̃, gradient back through
   Rᵀ) against a plain one, interleaved, and the time of one R·x and one Rᵀ·x.

Random weights; real WikiText-2 with the GPT-2 tokenizer when ../shared/data is present, otherwise the builtin
corpus with the byte tokenizer.

    python bench/geometry_speed.py [--arch tiny|distilgpt2|both] [--device auto] [--repeats 3] [--dim 5000000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import tracemalloc
from pathlib import Path

import torch

from bench.common import bench_texts, machine, timed
from bench.sharpness_speed import SHAPES, full_batch
from data.batches import to_device
from models.models import build_model
from optimization.evaluation import summed_token_loss
from optimization.objective import Objective, flatten
from optimization.rotation import RotatedWeights
from sharpness.geometry import cauchy_sketch, row_norm_statistics
from config.schema import ModelConfig
from utils.device import resolve_device


def hvp_rates(objective: Objective, device, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    vectors = {"cauchy": torch.empty(objective.dim, dtype=torch.float64).cauchy_(generator=generator).to(objective.base),
               "gaussian": torch.randn(objective.dim, generator=generator, dtype=torch.float64).to(objective.base)}
    objective.hvp(vectors["gaussian"])  # warm-up
    times = {name: [] for name in vectors}
    for _ in range(repeats):  # interleaved, so machine load hits both alike
        for name, v in vectors.items():
            times[name].append(timed(lambda: objective.hvp(v), device))
    return {name: 1.0 / statistics.median(t) for name, t in times.items()}


def rotation_overhead(model, batch, device, repeats: int) -> dict:
    plain_params = list(model.parameters())
    plain = torch.optim.SGD(plain_params, lr=1e-6)
    rotated = RotatedWeights(model, "global", seed=0)
    turned = torch.optim.SGD(rotated.latent, lr=1e-6)

    def step(rotate: bool):
        loss_sum, n = summed_token_loss(model, batch)
        (loss_sum / n).backward()
        if rotate:
            rotated.pull_gradients()
            turned.step()
            rotated.push()
            turned.zero_grad(set_to_none=True)
        else:
            plain.step()
            plain.zero_grad(set_to_none=True)

    step(False), step(True)  # warm-up
    times = {"plain": [], "rotated": []}
    for _ in range(repeats):
        times["plain"].append(timed(lambda: step(False), device))
        times["rotated"].append(timed(lambda: step(True), device))
    x = flatten(rotated.latent).detach()
    apply = timed(lambda: rotated.rotation.apply(x), device)
    transpose = timed(lambda: rotated.rotation.transpose(x), device)
    return {**{k: statistics.median(v) for k, v in times.items()}, "apply": apply, "transpose": transpose}


def sketch_memory(dim: int, k: int) -> dict:
    """Peak traced memory of the statistics pass over a k × dim sketch on disk, and the sketch's size."""
    scale = torch.linspace(0.1, 10.0, dim)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sketch.npy"
        sketch = cauchy_sketch(lambda v: scale * v, torch.zeros(dim), k, seed=0, path=path, stamp="bench")
        tracemalloc.start()
        row_norm_statistics(sketch, [dim], bootstrap=10, confidence=0.95, seed=0)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del sketch
    return {"peak_mb": peak / 2**20, "in_memory_mb": k * dim * 4 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "distilgpt2", "both"], default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=5_000_000, help="coordinates of the memory benchmark's sketch")
    parser.add_argument("--k", type=int, default=50, help="Cauchy vectors of the memory benchmark's sketch")
    args = parser.parse_args()
    device = resolve_device(args.device)
    texts, tokenizer, source = bench_texts()
    print(f"# {machine(device)}, torch {torch.__version__}, {torch.get_num_threads()} threads, {source}")
    batch = to_device(full_batch(texts, tokenizer, 8, 128), device)
    for arch in (["tiny", "distilgpt2"] if args.arch == "both" else [args.arch]):
        cfg = ModelConfig(init="scratch", arch="distilgpt2" if arch == "distilgpt2" else "", config=SHAPES[arch])
        model = build_model(cfg, tokenizer, seed=0).to(device)
        objective = Objective(model, [batch])
        rates = hvp_rates(objective, device, args.repeats)
        print(f"{arch} ({objective.dim:,} weights): HVPs/s Cauchy {rates['cauchy']:.3g}, Gaussian {rates['gaussian']:.3g}, "
              f"ratio {rates['cauchy'] / rates['gaussian']:.3f}")
        model.train()
        cost = rotation_overhead(model, batch, device, args.repeats)
        print(f"{arch}: SGD step {cost['plain']:.3f} s, on the rotated loss {cost['rotated']:.3f} s "
              f"(x{cost['rotated'] / cost['plain']:.2f}); one R·x {cost['apply']:.3f} s, one Rᵀ·x {cost['transpose']:.3f} s")
        del model, objective
    memory = sketch_memory(args.dim, args.k)
    print(f"(1,1) statistics over a {args.k} × {args.dim:,} sketch on disk: peak traced memory {memory['peak_mb']:.0f} MB "
          f"vs {memory['in_memory_mb']:.0f} MB for the sketch in memory")


if __name__ == "__main__":
    main()
