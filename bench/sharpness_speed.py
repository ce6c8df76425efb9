"""What sharpness costs, measured side by side in one run (figures, not a timed test).

1. HVP time / gradient time for each HVP implementation (reverse-over-reverse, forward-over-reverse),
   on one batch of 8 texts × 128 tokens, for a tiny GPT-2 and (--arch distilgpt2) DistilGPT2's shape.
2. HVPs and seconds until λ_max is within 1e-3 (relative) of a tightly converged reference, power
   iteration (the study's method) against Lanczos, on a model trained for a few hundred steps.

Random weights for the timings; real WikiText-2 text with the GPT-2 tokenizer when ../shared/data is present,
otherwise the builtin corpus with the byte tokenizer.

    python bench/sharpness_speed.py [--arch tiny|distilgpt2|both] [--device auto] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bench.common import bench_texts, machine, timed
from data.batches import collate, to_device, tokenize
from models.models import build_model, byte_tokenizer
from optimization.evaluation import summed_token_loss
from optimization.objective import Objective
from optimization.curvature import lanczos, power_iteration
from config.schema import ModelConfig
from utils.device import resolve_device

SHAPES = {"tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2}, "distilgpt2": {}}


def full_batch(texts, tokenizer, batch: int, length: int):
    """`batch` texts of at least `length` tokens, cut to exactly `length`: no padding."""
    sequences = [s for s in tokenize(texts, tokenizer, length) if len(s) == length][:batch]
    if len(sequences) < batch:
        raise SystemExit(f"only {len(sequences)} texts have {length} tokens")
    return collate(sequences, tokenizer.eos_token_id)


def hvp_ratios(model, batch, device, repeats: int) -> dict:
    objectives = {mode: Objective(model, [batch], hvp_mode=mode) for mode in ("reverse", "forward")}
    v = torch.randn(objectives["reverse"].dim, generator=torch.Generator().manual_seed(0)).to(device)
    for objective in objectives.values():  # warm-up
        objective.hvp(v)
    objectives["reverse"].loss_and_grad()
    times = {"gradient": [], "reverse": [], "forward": []}
    for _ in range(repeats):  # interleaved, so machine load hits every variant alike
        times["gradient"].append(timed(objectives["reverse"].loss_and_grad, device))
        for mode, objective in objectives.items():
            times[mode].append(timed(lambda: objective.hvp(v), device))
    return {k: statistics.median(v) for k, v in times.items()}


class _Reached(Exception):
    pass


LEVELS = (1e-2, 1e-3, 1e-4, 1e-5)


def train_briefly(model, texts, tokenizer, steps: int, batch: int, length: int, device) -> None:
    """AdamW steps on the texts, so the solvers meet the Hessian of a trained model, as in real use."""
    sequences = tokenize(texts, tokenizer, length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        start = (step * batch) % (len(sequences) - batch)
        loss_sum, n = summed_token_loss(model, to_device(collate(sequences[start:start + batch], tokenizer.eos_token_id), device))
        optimizer.zero_grad()
        (loss_sum / n).backward()
        optimizer.step()
    model.eval()


def solver_costs(objective: Objective, device) -> dict:
    """HVPs and seconds until each solver's λ_max estimate is within each relative accuracy in LEVELS
    of a tight reference (power iteration stops once the tightest level is reached)."""
    tight = lanczos(objective.hvp, objective.dim, k=1, max_iter=150, tol=1e-7, device=device)
    reference = tight.lambda_max

    def first_hits(estimates, stamps, start):
        hits = {}
        for level in LEVELS:
            i = next((i for i, x in enumerate(estimates) if abs(x - reference) <= level * abs(reference)), None)
            hits[level] = None if i is None else (i + 1, stamps[i] - start)
        return hits

    estimates, stamps = [], []

    def power_matvec(v):  # the power estimate after this product is v·Hv
        out = objective.hvp(v)
        estimates.append(float(v @ out))
        stamps.append(time.perf_counter())
        if abs(estimates[-1] - reference) <= LEVELS[-1] * abs(reference):
            raise _Reached
        return out

    start = time.perf_counter()
    try:
        power_iteration(power_matvec, objective.dim, max_iter=300, tol=0.0, device=device)
    except _Reached:
        pass
    power = first_hits(estimates, stamps, start)

    stamps = []

    def lanczos_matvec(v):
        out = objective.hvp(v)
        stamps.append(time.perf_counter())
        return out

    start = time.perf_counter()
    result = lanczos(lanczos_matvec, objective.dim, k=1, max_iter=150, tol=LEVELS[-1] / 10, device=device)
    return {"reference": reference, "lambda_min": tight.lambda_min, "power": power,
            "lanczos": first_hits(result.history, stamps, start)}


def main():
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "distilgpt2", "both", "none"], default="tiny",
                        help="models for the HVP/gradient timings (none: only the solver comparison)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=300, help="AdamW steps before the solver comparison")
    parser.add_argument("--eigen-arch", choices=["tiny", "distilgpt2"], default="tiny",
                        help="model for the power-vs-Lanczos comparison (distilgpt2 needs a GPU to finish soon)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    texts, tokenizer, source = bench_texts()
    batch = full_batch(texts, tokenizer, args.batch, args.length)
    name = f"{machine(device)}, {torch.get_num_threads()} torch threads"
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {name}, torch {torch.__version__}; {source}; batch {args.batch}x{args.length}")

    arches = {"both": ["tiny", "distilgpt2"], "none": []}.get(args.arch, [args.arch])
    print("\nmodel        params     gradient s   HVP reverse s (ratio)   HVP forward s (ratio)")
    for arch in arches:
        cfg = ModelConfig(init="scratch", arch="distilgpt2" if arch == "distilgpt2" else "", config=SHAPES[arch])
        model = build_model(cfg, tokenizer, seed=0).to(device)
        t = hvp_ratios(model, batch, device, args.repeats)
        params = sum(p.numel() for p in model.parameters())
        print(f"{arch:<12} {params / 1e6:6.1f}M   {t['gradient']:10.3f}   {t['reverse']:10.3f} ({t['reverse'] / t['gradient']:.2f})"
              f"          {t['forward']:10.3f} ({t['forward'] / t['gradient']:.2f})")
        del model

    # The tiny model's HVPs are dominated by the 50257-token output layer; the solver comparison only
    # needs a Hessian, so on the tiny model it uses byte tokens (257) to finish in minutes on a CPU.
    eigen_tokenizer = tokenizer if args.eigen_arch == "distilgpt2" else byte_tokenizer()
    cfg = ModelConfig(init="scratch", arch="distilgpt2" if args.eigen_arch == "distilgpt2" else "",
                      config=SHAPES[args.eigen_arch])
    model = build_model(cfg, eigen_tokenizer, seed=0).to(device)
    train_briefly(model, texts, eigen_tokenizer, args.train_steps, args.batch, args.length, device)
    eigen_batch = full_batch(texts[::-1], eigen_tokenizer, args.batch, args.length)
    costs = solver_costs(Objective(model, [eigen_batch]), device)
    print(f"\nλ_max to a relative accuracy ({args.eigen_arch}, vocabulary {len(eigen_tokenizer)}, after {args.train_steps} "
          f"AdamW steps; reference λ_max {costs['reference']:.6g} by Lanczos to 1e-7, λ_min {costs['lambda_min']:.4g}):")
    print("  accuracy   power HVPs (s)     Lanczos HVPs (s)   Lanczos/power HVPs")
    for level in LEVELS:
        power, lanc = costs["power"][level], costs["lanczos"][level]

        def cell(hit):
            return "not reached" if hit is None else f"{hit[0]:4d} ({hit[1]:6.2f})"

        ratio = f"{lanc[0] / power[0]:.2f}" if power and lanc else "–"
        print(f"  {level:8.0e}   {cell(power):<18} {cell(lanc):<18} {ratio}")


if __name__ == "__main__":
    main()
