"""What geometry along training costs, measured side by side in one run (figures, not a test).

1. Warm against cold starts of tracked λ_max (optimization.tracking): a model is trained with AdamW and, every
   --every steps, λ_max of the Hessian on a fixed measurement batch is taken twice, by one tracker along the
   run (its points after the first warm: from the previous point's top Ritz vectors, as train.track does) and
   by a fresh one (a random start, cold), with the same tolerance. Printed per point: both HVP counts and
   values, and the ratio of cold to warm HVPs over the points after the first (the issue asks for at least 3).
2. The SLQ spectral density (sharpness.density) of the final model: --probes × --steps HVPs, their time, and
   the memory of its Lanczos vectors with and without full reorthogonalization.

    python bench/tracking_speed.py [--arch tiny|distilgpt2] [--every 5] [--points 6] [--lr 5e-5] [--probes 2]
                                   [--steps 10] [--batch 2] [--length 64] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench.common import bench_texts, machine, timed
from bench.sharpness_speed import SHAPES, full_batch
from data.batches import to_device
from models.models import build_model
from optimization.evaluation import summed_token_loss
from optimization.objective import Objective
from optimization.tracking import SharpnessTracker
from sharpness.density import lanczos_memory_bytes, slq
from config.schema import ModelConfig, TrackConfig, TrainConfig
from utils.device import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "distilgpt2"], default="tiny")
    parser.add_argument("--every", type=int, default=5, help="training steps between tracked points")
    parser.add_argument("--points", type=int, default=6, help="tracked points")
    parser.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (exp5's Adam lr)")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--probes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2, help="texts per training and measurement batch")
    parser.add_argument("--length", type=int, default=64, help="tokens per text")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    texts, tokenizer, source = bench_texts()
    print(f"# {machine(device)}, torch {torch.__version__}, {torch.get_num_threads()} threads, {source}")
    cfg = ModelConfig(init="scratch", arch="distilgpt2" if args.arch == "distilgpt2" else "", config=SHAPES[args.arch])
    model = build_model(cfg, tokenizer, seed=0).to(device)
    measurement = [to_device(full_batch(texts[::-1], tokenizer, args.batch, args.length), device)]
    train_batches = [to_device(full_batch(texts[i:], tokenizer, args.batch, args.length), device)
                     for i in range(0, args.every * args.points * 3, 3)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    track = TrackConfig(every=1, metrics=["lambda_max"], iters=200, tol=args.tol)
    warm = SharpnessTracker(track, TrainConfig(optimizer="adamw"))
    dim = sum(p.numel() for p in model.parameters())
    print(f"{args.arch} ({dim:,} weights), measurement batch {args.batch} × {args.length} tokens, AdamW lr {args.lr:g}, "
          f"a point every {args.every} steps, tol {args.tol:g}")
    print("  step   warm HVPs  λ_max (warm)   cold HVPs  λ_max (cold)")
    warm_hvps, cold_hvps, hvp_seconds = [], [], []
    batches = iter(train_batches)
    for point in range(args.points):
        objective = Objective(model, measurement)
        w = warm.measure(point * args.every, args.lr, objective)
        cold = SharpnessTracker(track, TrainConfig(optimizer="adamw")).measure(point * args.every, args.lr, objective)
        hvp_seconds.append((w["seconds"] + cold["seconds"]) / (w["hvps"] + cold["hvps"]))
        warm_hvps.append(w["hvps"])
        cold_hvps.append(cold["hvps"])
        print(f"  {point * args.every:4d}   {w['hvps']:9d}  {w['lambda_max']:12.6g}   {cold['hvps']:9d}  {cold['lambda_max']:12.6g}")
        model.train()
        for _ in range(args.every):
            loss_sum, n = summed_token_loss(model, next(batches))
            optimizer.zero_grad(set_to_none=True)
            (loss_sum / n).backward()
            optimizer.step()
    later = slice(1, None)
    ratio = sum(cold_hvps[later]) / sum(warm_hvps[later])
    print(f"after the first point: {statistics.mean(warm_hvps[later]):.1f} HVPs warm vs {statistics.mean(cold_hvps[later]):.1f} "
          f"cold per point (cold/warm {ratio:.2f}); one HVP {statistics.median(hvp_seconds):.3f} s")

    objective = Objective(model, measurement)
    full, none = (lanczos_memory_bytes(dim, args.steps, flag, objective.base.dtype) / 2**20 for flag in (True, False))
    seconds = timed(lambda: slq(objective.hvp, dim, probes=args.probes, steps=args.steps, device=device,
                                dtype=objective.base.dtype), device)
    print(f"SLQ density, {args.probes} probes × {args.steps} steps = {args.probes * args.steps} HVPs: {seconds:.1f} s "
          f"({seconds / (args.probes * args.steps):.3f} s per HVP); Lanczos vectors {full:.0f} MiB with full "
          f"reorthogonalization, {none:.0f} MiB without; the default 10 × 80 would take about "
          f"{seconds / (args.probes * args.steps) * 800 / 60:.0f} min here")


if __name__ == "__main__":
    main()
