"""What one point of a 2D loss landscape costs, measured side by side in one run (figures, not a test).

plain   a plain evaluation at fixed weights: `optimization.evaluation.evaluate` over the evaluation
        batches (tokenized once, padded to each batch's longest text), inference mode, SDPA
grid    one grid point of the landscape stage: `Objective.move_to([a, b], [d1, d2])` (weights set in
        place from the base) and `Objective.loss()` over the same batches. Goal: grid / plain <= 1.05.
naive   one grid point the study's way: a deepcopy of the model made once; per point the flat vector
        base + a·d1 + b·d2 is built and copied in with vector_to_parameters, the texts are tokenized
        again and padded to max_length, and the loss is the model's own (mean per batch, then mean of
        the batch means), under no_grad.

The three run in turns on the same random points (a, b), so load from other processes hits them
alike; each figure is the median over the timed points, after one untimed warm-up point each.
Random weights; real WikiText-2 text with the GPT-2 tokenizer when ../shared/data is present,
otherwise the builtin corpus with the byte tokenizer.

    .venv/bin/python bench/landscape_speed.py [--arch small|distilgpt2] [--device cpu|cuda|all]
                                              [--batches 4] [--batch-size 8] [--points 7] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from bench.common import bench_texts, machine, timed
from data.batches import to_device
from data.measurement import fixed_set
from models.models import build_model
from optimization.evaluation import evaluate
from optimization.objective import Objective
from config.schema import ModelConfig
from visualization.directions import conv1d_weight_names, random_directions

SMALL_SHAPE = {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 128}


class NaivePoint:
    """The study's evaluation of one grid point."""

    def __init__(self, model, texts: list[str], tokenizer, batch_size: int, max_length: int):
        self.model = copy.deepcopy(model).eval()
        self.base = parameters_to_vector(model.parameters()).detach().clone()
        self.device = self.base.device
        self.texts, self.tokenizer, self.batch_size, self.max_length = texts, tokenizer, batch_size, max_length

    @torch.no_grad()
    def loss(self, a: float, b: float, d1: torch.Tensor, d2: torch.Tensor) -> float:
        vector_to_parameters(self.base + a * d1 + b * d2, self.model.parameters())
        losses = []
        for start in range(0, len(self.texts), self.batch_size):
            enc = self.tokenizer(self.texts[start:start + self.batch_size], padding="max_length", truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            losses.append(self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                     labels=labels).loss.item())
        return sum(losses) / len(losses)


def bench_device(device: torch.device, args, texts, tokenizer) -> dict:
    """Median seconds of each method on one device, and what they were measured on."""
    model_cfg = ModelConfig(init="scratch", arch="distilgpt2") if args.arch == "distilgpt2" else \
        ModelConfig(init="scratch", config=SMALL_SHAPE)
    model = build_model(model_cfg, tokenizer, seed=0).to(device).eval()
    evaluation = fixed_set(texts, args.batches, args.batch_size, 0, tokenizer, args.max_length)
    batches = [to_device(b, device) for b in evaluation.batches]
    objective = Objective(model, batches)
    d1, d2 = random_directions(objective, conv1d_weight_names(model), "layer", "", seed=0)
    naive = NaivePoint(model, [texts[i] for i in evaluation.indices], tokenizer, args.batch_size, args.max_length)
    points = np.random.default_rng(0).uniform(-1, 1, size=(args.points + 1, 2)).tolist()

    def grid_point(a, b):
        objective.move_to([a, b], [d1, d2])
        objective.loss()

    methods = {
        "plain": lambda a, b: evaluate(model, batches, device),
        "grid": grid_point,
        "naive": lambda a, b: naive.loss(a, b, d1, d2),
        "move_to": lambda a, b: objective.move_to([a, b], [d1, d2]),
    }
    seconds = {name: [] for name in methods}
    for k, (a, b) in enumerate(points):
        order = list(methods) if k % 2 else list(methods)[::-1]
        for name in order:
            objective.restore()
            took = timed(lambda: methods[name](a, b), device)
            if k > 0:  # the first point warms up
                seconds[name].append(took)
    objective.restore()
    return {"median": {name: statistics.median(s) for name, s in seconds.items()},
            "params": objective.dim, "tokens": evaluation.n_tokens,
            "padded_tokens": len(evaluation.indices) * args.max_length, "texts": len(evaluation.indices)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["small", "distilgpt2"], default="small",
                        help="random-weight GPT-2: small (2 layers, 128 wide) or the DistilGPT2 shape (slow on CPU)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: the CPU, and CUDA if present")
    parser.add_argument("--batches", type=int, default=4, help="evaluation batches per point")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per evaluation batch")
    parser.add_argument("--max-length", type=int, default=128,
                        help="truncate (naive: and pad) texts to this many tokens")
    parser.add_argument("--points", type=int, default=7, help="timed grid points per method (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device != "cuda" else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        parser.error("no CUDA device is available")

    texts, tokenizer, data_name = bench_texts()
    tokenizer.pad_token = tokenizer.eos_token  # the naive way pads with EOS; ours never reads pad_token
    print(f"data:    {data_name}; {args.batches} batches of {args.batch_size} texts, max_length {args.max_length}")
    print(f"date:    {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for device in devices:
        result = bench_device(device, args, texts, tokenizer)
        m = result["median"]
        print(f"{device}: {machine(device)}; GPT-2 {args.arch}, {result['params'] / 1e6:.1f}M parameters; "
              f"{result['texts']} texts, {result['tokens']} target tokens ({result['padded_tokens']} padded to "
              f"max_length in the naive way); {args.points} timed points")
        rows.append((device.type, m, m["grid"] / m["plain"], m["naive"] / m["grid"]))
    print("\n| device | plain forward (s) | grid point (s) | of which move_to (s) | grid/plain "
          "| naive point (s) | naive/grid |")
    print("|--------|------------------:|---------------:|---------------------:|-----------:"
          "|----------------:|-----------:|")
    for device, m, ratio, speedup in rows:
        print(f"| {device:<6} | {m['plain']:17.4f} | {m['grid']:14.4f} | {m['move_to']:20.4f} | {ratio:10.3f} "
              f"| {m['naive']:15.4f} | {speedup:9.2f}x |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
