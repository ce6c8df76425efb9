"""What one Hessian-vector product costs against one gradient: before and after the closed-form cross-entropy
curvature, and on a gradient graph kept from the last product at the same weights, side by side in one run (figures,
not a timed test).

On one batch of texts (8 × 128 tokens by default, no padding) of a GPT-2 with random weights and the GPT-2
vocabulary, in the dtype asked for, it times in turns: the gradient (`Objective.loss_and_grad`); the HVP as it was
(reverse-over-reverse through autograd's log_softmax, twice differentiated); the HVP with the cross-entropy's second
derivative in closed form in logit space (`optimization.evaluation`), building its gradient graph (a forward and a
backward with create_graph) as every product did before graphs were kept (graph_memory 0); and the HVP as
`Objective.hvp` takes it at the same weights as the last one: on the kept graph. It prints the medians of the wall and
the CPU seconds, their ratios, how far the HVPs differ, and the load average before and after.

    OMP_NUM_THREADS=1 python bench/hvp_cost.py [--arch distilgpt2|tiny] [--repeats 3] [--batch 8] [--length 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import torch

from bench.common import bench_texts, machine, timed
from bench.sharpness_speed import SHAPES, full_batch
from config.schema import ModelConfig
from models.models import build_model
from optimization.objective import TOKEN_LOSS, Objective
from utils.device import resolve_device

AUTOGRAD_CROSS_ENTROPY = dataclasses.replace(TOKEN_LOSS, summed_for_hvp=None)  # the HVP before the closed form


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def wall_and_cpu(work, device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of `work()`. On a CPU that other jobs keep busy, the CPU seconds
    of a one-thread run are the steadier figure: they leave out the time spent waiting for a core."""
    cpu = time.process_time()
    wall = timed(work, device)
    return wall, time.process_time() - cpu


def main():
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(SHAPES), default="distilgpt2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    device = resolve_device(args.device)
    texts, tokenizer, source = bench_texts()
    batch = full_batch(texts, tokenizer, args.batch, args.length)
    cfg = ModelConfig(init="scratch", arch="distilgpt2" if args.arch == "distilgpt2" else "", config=SHAPES[args.arch])
    model = build_model(cfg, tokenizer, seed=0).to(device, getattr(torch, args.dtype))
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {machine(device)}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; {source}; {args.arch} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"weights, vocabulary {len(tokenizer)}), batch {args.batch}x{args.length}, {args.dtype}; load {load()}")

    before = Objective(model, [batch], batch_loss=AUTOGRAD_CROSS_ENTROPY, graph_memory=0)
    after = Objective(model, [batch], graph_memory=0)
    kept = Objective(model, [batch])
    v = torch.randn(after.dim, generator=torch.Generator().manual_seed(0), dtype=after.base.dtype).to(device)
    old, new, again = before.hvp(v), after.hvp(v), kept.hvp(v)  # warm-up (kept builds its graph), and the products
    after.loss_and_grad()
    times = {"gradient": [], "HVP before": [], "HVP after": [], "HVP kept": []}
    for _ in range(args.repeats):  # interleaved, so machine load hits every variant alike
        times["gradient"].append(wall_and_cpu(after.loss_and_grad, device))
        times["HVP before"].append(wall_and_cpu(lambda: before.hvp(v), device))
        times["HVP after"].append(wall_and_cpu(lambda: after.hvp(v), device))
        times["HVP kept"].append(wall_and_cpu(lambda: kept.hvp(v), device))
    if kept.graph_builds != 1:
        sys.exit("the kept gradient graph was built again: it did not fit in graph_memory of the free memory")
    for clock, index in (("wall", 0), ("CPU", 1)):
        median = {k: statistics.median(t[index] for t in runs) for k, runs in times.items()}
        for name, seconds in median.items():
            runs = ", ".join(f"{t[index]:.2f}" for t in times[name])
            print(f"{clock:<4} {name:<11} {seconds:8.3f} s  ({seconds / median['gradient']:.2f} gradients; runs {runs})")
        print(f"{clock:<4} after/before {median['HVP after'] / median['HVP before']:.3f}, "
              f"kept/after {median['HVP kept'] / median['HVP after']:.3f}")
    print(f"‖after − before‖/‖before‖ = {float((new - old).norm() / old.norm()):.2e}, kept equals after bit for bit: "
          f"{torch.equal(again, new)}; load {load()}")


if __name__ == "__main__":
    main()
