"""Training tokens/s of the project's loop against the study's naive loop, side by side in one run.

ours   texts tokenized once up front; each step collates its batch padded to the batch's longest
       text (data.batches) and takes the loss over the real tokens only (summed_token_loss).
naive  as the study did: a Dataset that calls the tokenizer on the raw text on every access,
       padding every text to max_length; the default DataLoader collate; the model's own
       `labels=` loss with labels = input_ids, so padding is counted in the loss too (the study's
       flaw; here it only matters that every row is max_length long and re-tokenized every epoch).

Both loops start from the same weights and train on the same texts with the same SGD settings for
the same number of steps. They run in alternating chunks of steps, so load from other processes
on the machine affects both alike. Throughput counts real (non-padding) text tokens per second,
the useful work; the naive loop's padded tokens/s is printed too.

    .venv/bin/python bench/train_throughput.py [--steps N] [--arch distilgpt2] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import os
import time

import torch
from torch.utils.data import DataLoader, Dataset

from bench.common import bench_texts, machine
from data.batches import batches_in_order, epoch_order, to_device, tokenize
from models.models import build_model
from optimization.evaluation import summed_token_loss
from config.checks import check_scratch_config
from config.schema import ModelConfig
from utils.device import resolve_device

SMALL_SHAPE = {"n_layer": 4, "n_embd": 256, "n_head": 4}


class NaiveTexts(Dataset):
    """The study's dataset: tokenize the raw text on every access, padded to max_length."""

    def __init__(self, texts: list[str], tokenizer, max_length: int):
        self.texts, self.tokenizer, self.max_length = texts, tokenizer, max_length

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict:
        enc = self.tokenizer(self.texts[i], padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        input_ids = enc["input_ids"][0]
        return {"input_ids": input_ids, "attention_mask": enc["attention_mask"][0], "labels": input_ids.clone()}


def our_batches(sequences, batch_size: int, pad_id: int, seed: int):
    """The training loop's batches, epoch after epoch (random order reshuffled per epoch)."""
    lengths = [len(s) for s in sequences]
    for epoch in itertools.count():
        yield from batches_in_order(sequences, epoch_order(lengths, "random", seed, epoch), batch_size, pad_id)


def naive_batches(loader: DataLoader):
    for _ in itertools.count():
        yield from loader


def our_step(model, optimizer, batch) -> None:
    loss_sum, n_targets = summed_token_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    (loss_sum / n_targets).backward()
    loss_sum.item()
    optimizer.step()


def naive_step(model, optimizer, batch) -> None:
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    loss.item()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps per loop (after 1 warm-up step)")
    parser.add_argument("--chunk", type=int, default=5, help="steps one loop runs before the other takes its turn")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per step")
    parser.add_argument("--max-length", type=int, default=128, help="truncate (naive: and pad) texts to this many tokens")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate")
    parser.add_argument("--arch", choices=["small", "distilgpt2"], default="small",
                        help="random-weight GPT-2: small (4 layers, 256 wide) or the DistilGPT2 shape (slow on CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="weights, data order and dropout")
    args = parser.parse_args()

    device = resolve_device(args.device)
    texts, tokenizer, data_name = bench_texts()  # the study's filter: > 50 characters, no headings, first 1000
    tokenizer.pad_token = tokenizer.eos_token  # the study's padding for the naive loop; ours pads with EOS itself

    model_cfg = ModelConfig(init="scratch", arch="distilgpt2") if args.arch == "distilgpt2" else \
        ModelConfig(init="scratch", config=SMALL_SHAPE)
    try:
        check_scratch_config(model_cfg, args.max_length)
    except ValueError as err:
        parser.error(str(err))
    ours_model = build_model(model_cfg, tokenizer, args.seed).to(device).train()
    naive_model = copy.deepcopy(ours_model)
    ours_opt = torch.optim.SGD(ours_model.parameters(), lr=args.lr)
    naive_opt = torch.optim.SGD(naive_model.parameters(), lr=args.lr)

    start = time.perf_counter()
    sequences = tokenize(texts, tokenizer, args.max_length)
    tokenize_s = time.perf_counter() - start
    torch.manual_seed(args.seed)
    loader = DataLoader(NaiveTexts(texts, tokenizer, args.max_length), batch_size=args.batch_size, shuffle=True)
    loops = {
        "ours": (our_batches(sequences, args.batch_size, tokenizer.eos_token_id, args.seed), ours_model, ours_opt, our_step),
        "naive": (naive_batches(loader), naive_model, naive_opt, naive_step),
    }
    totals = {name: {"seconds": 0.0, "real": 0, "padded": 0, "steps": 0} for name in loops}

    def run(name: str, steps: int, timed: bool) -> None:
        batches, model, optimizer, step = loops[name]
        start = time.perf_counter()
        for _ in range(steps):
            batch = to_device(next(batches), device)
            step(model, optimizer, batch)
            if timed:
                totals[name]["real"] += int(batch["attention_mask"].sum())
                totals[name]["padded"] += batch["input_ids"].numel()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if timed:
            totals[name]["seconds"] += time.perf_counter() - start
            totals[name]["steps"] += steps

    n_params = sum(p.numel() for p in ours_model.parameters())
    mean_tokens = sum(len(s) for s in sequences) / len(sequences)
    truncated = sum(len(s) == args.max_length for s in sequences) / len(sequences)
    print(f"data:    {data_name}: {len(texts)} texts, mean {mean_tokens:.1f} tokens after truncation to "
          f"max_length {args.max_length} ({truncated:.0%} truncated)")
    print(f"model:   GPT-2 {args.arch}, random weights, {n_params / 1e6:.1f}M parameters, vocabulary {len(tokenizer)}")
    print(f"setup:   SGD lr {args.lr}, batch size {args.batch_size}, {args.steps} timed steps per loop "
          f"in chunks of {args.chunk}, device {device}, {torch.get_num_threads()} torch threads")
    print(f"machine: {machine(device)}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    print(f"date:    {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"ours tokenizes all texts once up front in {tokenize_s:.2f} s (not in the step times below)")

    for name in loops:
        run(name, 1, timed=False)  # warm-up
    for round_ in range(0, args.steps, args.chunk):
        order = list(loops) if (round_ // args.chunk) % 2 == 0 else list(loops)[::-1]
        for name in order:
            run(name, min(args.chunk, args.steps - round_), timed=True)

    print("\n| loop  | real tokens/s | padded tokens/s | s/step |")
    print("|-------|--------------:|----------------:|-------:|")
    for name, t in totals.items():
        print(f"| {name:<5} | {t['real'] / t['seconds']:13.0f} | {t['padded'] / t['seconds']:15.0f} "
              f"| {t['seconds'] / t['steps']:6.3f} |")
    rate = {name: t["real"] / t["seconds"] for name, t in totals.items()}
    print(f"\nratio ours/naive (real tokens/s): {rate['ours'] / rate['naive']:.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
