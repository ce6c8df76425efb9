"""What torch's thread count does to a Hessian-vector product on a CPU, idle and busy, side by side in one run
(figures, not a test): one HVP of a randomly initialised GPT-2 on one batch, timed with 1 intra-op thread and with
torch's default (one per core), interleaved so that other load hits both alike, with 0 and then --busy processes
alongside that keep the CPU busy: Python loops (--load spin) or, as other users' torch jobs do on a shared
machine, matrix products at torch's default threads (--load torch). run.py's `threads: auto`
(utils.device.threads_for) picks the cores that the 1-minute load leaves free.

Run it without OMP_NUM_THREADS (torch's default is then one thread per core):

    python bench/threads.py [--arch tiny|small] [--busy 0 2] [--load spin|torch] [--repeats 3] [--batch 8]
                            [--length 128]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

import torch

from bench.common import bench_texts, machine, timed
from bench.sharpness_speed import full_batch
from models.models import build_model
from optimization.objective import Objective
from config.schema import ModelConfig

SHAPES = {"tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2}, "small": {"n_layer": 4, "n_embd": 256, "n_head": 4}}


def spin() -> None:
    while True:
        pass


def multiply() -> None:
    a = torch.randn(512, 512)
    while True:
        a = torch.tanh(a @ a)


def hvp_times(objective: Objective, counts: list[int], repeats: int) -> dict[int, float]:
    """Median seconds of one HVP at each thread count, the counts interleaved in every repeat."""
    v = torch.randn(objective.dim, generator=torch.Generator().manual_seed(0))
    times = {count: [] for count in counts}
    for count in counts:  # warm-up: each count's thread pool and allocations
        torch.set_num_threads(count)
        objective.hvp(v)
    for _ in range(repeats):
        for count in counts:
            torch.set_num_threads(count)
            times[count].append(timed(lambda: objective.hvp(v), torch.device("cpu")))
    return {count: statistics.median(t) for count, t in times.items()}


def main():
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=list(SHAPES), default="tiny")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2],
                        help="spinning processes alongside, one setting after the other (default: 0 2)")
    parser.add_argument("--load", choices=["spin", "torch"], default="spin", help="what the busy processes run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    default = torch.get_num_threads()
    counts = [1] if default == 1 else [1, default]
    texts, tokenizer, source = bench_texts()
    model = build_model(ModelConfig(init="scratch", config=SHAPES[args.arch]), tokenizer, seed=0)
    objective = Objective(model, [full_batch(texts, tokenizer, args.batch, args.length)])
    params = sum(p.numel() for p in model.parameters())
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {machine(torch.device('cpu'))}, torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(not set)')}; {source}; {args.arch} GPT-2 "
          f"({params / 1e6:.1f}M parameters), batch {args.batch}x{args.length}, median of {args.repeats}")
    print(f"\nbusy processes ({args.load})   load (1 min)   HVP s, 1 thread   HVP s, {default} threads   {default} threads / 1")
    for busy in args.busy:
        spinners = [multiprocessing.get_context("spawn").Process(target=spin if args.load == "spin" else multiply,
                                                                 daemon=True) for _ in range(busy)]
        for spinner in spinners:
            spinner.start()
        try:
            seconds = hvp_times(objective, counts, args.repeats)
        finally:
            for spinner in spinners:
                spinner.terminate()
                spinner.join()
        many = seconds.get(default, float("nan"))
        print(f"{busy:{22 if args.load == 'torch' else 21}d}   {os.getloadavg()[0]:12.1f}   {seconds[1]:15.3f}   {many:16.3f}   {many / seconds[1]:14.2f}")
    torch.set_num_threads(default)


if __name__ == "__main__":
    main()
