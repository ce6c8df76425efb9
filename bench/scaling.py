"""How a torchrun job of N processes scales against one process: training tokens/s (DDP), Hessian-vector
products/s (the measurement set split across ranks) and 2D grid points/s (the grid's points split), each
read back from the files the stages wrote.

    python bench/scaling.py [--processes 2] [--device cpu] [--threads 1]

On the CPU every process gets --threads threads (1 by default, so that N processes use N cores against
one process's one core); on GPUs each process drives one GPU (--device cuda, --processes = GPUs). The
efficiency is rate(N) / (N · rate(1)): 1 is perfect scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
experiment: scaling
device: {device}
data: {{source: builtin, n_train: 512, n_val: 32, n_test: 32, max_length: 64}}
model:
  init: scratch
  tokenizer: bpe
  bpe_vocab_size: 1024
  config: {{n_layer: 4, n_embd: 128, n_head: 4, n_positions: 64, resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}}
train: {{optimizer: adamw, lr: 1.0e-3, batch_size: 32, epochs: 1, eval_batch_size: 32}}
sharpness: {{batches: 8, batch_size: 16, max_iter: 20, tol: 1.0e-9, epsilons: [1.0e-3], random_directions: 0,
            worst_case_steps: 0, trace_samples: 0}}
landscape: {{resolution: 11, points: 3, eval_batches: 4, eval_batch_size: 32}}
stages: [train, sharpness, landscape]
"""


def rates(folder: Path) -> dict:
    run = folder / "scaling" / "default" / "seed-42"
    metrics = json.loads((run / "metrics.json").read_text())
    sharpness = json.loads((run / "sharpness.json").read_text())
    surface = np.load(run / "landscape_2d.npz")
    return {"train tokens/s": metrics["tokens_per_s"],
            "HVPs/s": sharpness["hvp_count"] / sharpness["timings"]["eigen_s"],
            "grid points/s": surface["done"].size / float(surface["time_s"])}


def job(config: Path, output: Path, processes: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, str(ROOT / "run.py"), "--config", str(config), "--output", str(output)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone",
                   *command[1:]]
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return rates(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (OMP_NUM_THREADS)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "scaling.yaml"
        config.write_text(textwrap.dedent(CONFIG.format(device=args.device)))
        one = job(config, Path(scratch) / "one", 1, args.threads)
        many = job(config, Path(scratch) / "many", args.processes, args.threads)
    print(f"{args.processes} processes against 1 on {args.device}, {args.threads} thread(s) each: 4-layer, 128-wide "
          "GPT-2, 512 texts of 64 tokens, batch 32; 8 × 16 texts for the HVPs; an 11 × 11 grid on 4 × 32 texts")
    print(f"| quantity | 1 process | {args.processes} processes | speed-up | efficiency |")
    print("|---|---:|---:|---:|---:|")
    for key in one:
        speedup = many[key] / one[key]
        print(f"| {key} | {one[key]:.4g} | {many[key]:.4g} | {speedup:.2f}× | {speedup / args.processes:.2f} |")


if __name__ == "__main__":
    main()
