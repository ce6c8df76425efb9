"""The golden check of a refactor: the small experiments, shortened, give the same numbers before and after.

    python bench/golden.py run OUT          # quickstart, exp4/5/6/8 small (shortened) into OUT (~10 min on 2 cores)
    python bench/golden.py compare OLD NEW  # every number in every JSON and .npz file of OLD equals NEW's

`compare` walks the JSON and .npz files of both folders and prints each difference (a file on one side only, a key on one
side only, a value that differs beyond --rtol); it ignores what changes from one run to the next without being a
measurement: wall-clock times and rates, dates, hosts, absolute paths, and costs priced from times. Exit 0 when
both folders hold the same numbers, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Shortened like the end-to-end tests, so that the whole check takes minutes on a CPU.
EXPERIMENTS = {
    "quickstart": ["train.epochs=2", "data.n_train=64", "sharpness.max_iter=8", "landscape.resolution=5",
                   "landscape.eval_batches=2"],
    "exp4-geometry-small": ["train.epochs=1", "geometry.cauchy_vectors=6", "geometry.bootstrap=5",
                            "geometry.frobenius_probes=3", "sharpness.max_iter=8", "data.n_train=32"],
    "exp5-dynamics-small": ["train.epochs=2", "data.n_train=64", "sharpness.max_iter=8", "sharpness.density.probes=2",
                            "sharpness.density.steps=12", "landscape.resolution=5", "landscape.points=5",
                            "landscape.eval_batches=2"],
    "exp6-peft-small": ["train.budget.flops=1.5e9", "data.n_train=64", "sharpness.max_iter=8", "landscape.resolution=3"],
    "exp8-flatness-small": ["train.epochs=2", "train.warmup_steps=0", "data.n_train=48", "sharpness.batches=1",
                            "sharpness.max_iter=12", "sharpness.worst_case_steps=2", "sharpness.trace_samples=2",
                            "sharpness.random_directions=2", "correlate.resamples=200"],
}

# Keys whose values are not measurements of the model: clocks, rates, memory, machines, places, prices of clock time.
VOLATILE = re.compile(r"(time|seconds|_s$|^s$|elapsed|date|host|machine|path|dir$|folder|started|finished|created|"
                      r"written|when|hours|dollars|cost_usd|price|mfu|per_second|throughput|tokens_per|samples_per|"
                      r"python|torch_version|version|pid|cpu|load|memory|_mb$|peak_flops)", re.IGNORECASE)


def run_all(out: Path) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name, overrides in EXPERIMENTS.items():
        command = [sys.executable, str(ROOT / "run.py"), "--config", str(ROOT / "config" / f"{name}.yaml"),
                   "--output", str(out)]
        for override in overrides:
            command += ["--set", override]
        print(f"golden: {name}", flush=True)
        code = subprocess.run(command, env=env, cwd=ROOT).returncode
        if code:
            print(f"golden: {name} failed with exit {code}")
            return code
    return 0


def differences(old, new, where: str, rtol: float):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if VOLATILE.search(str(key)):
                continue
            if key not in new or key not in old:
                yield f"{where}.{key}: only in {'old' if key in old else 'new'}"
            else:
                yield from differences(old[key], new[key], f"{where}.{key}", rtol)
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            yield f"{where}: {len(old)} items before, {len(new)} after"
        for index, (a, b) in enumerate(zip(old, new)):
            yield from differences(a, b, f"{where}[{index}]", rtol)
    elif isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        if not (old == new or (math.isnan(old) and math.isnan(new)) or math.isclose(old, new, rel_tol=rtol,
                                                                                      abs_tol=rtol * 1e-3)):
            yield f"{where}: {old!r} before, {new!r} after"
    elif old != new and not (isinstance(old, str) and isinstance(new, str) and ("/" in old or "/" in new)):
        yield f"{where}: {old!r} before, {new!r} after"


def read(path: Path):
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return {key: arrays[key].tolist() for key in arrays.files}
    return json.loads(path.read_text())


def compare(old_root: Path, new_root: Path, rtol: float) -> int:
    def files(root: Path) -> set[Path]:  # figures/index.json holds checksums of .npz files, whose zip headers hold times
        return {p.relative_to(root) for pattern in ("*.json", "*.npz") for p in root.rglob(pattern)
                if p.name != "index.json"}

    old_files, new_files = files(old_root), files(new_root)
    found = [f"{name}: only in {old_root}" for name in sorted(old_files - new_files)]
    found += [f"{name}: only in {new_root}" for name in sorted(new_files - old_files)]
    for name in sorted(old_files & new_files):
        found += list(differences(read(old_root / name), read(new_root / name), str(name), rtol))
    for line in found:
        print(line)
    print(f"golden: {len(old_files & new_files)} JSON and .npz files compared, {len(found)} differences")
    return 1 if found else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run").add_argument("out", type=Path)
    check = commands.add_parser("compare")
    check.add_argument("old", type=Path)
    check.add_argument("new", type=Path)
    check.add_argument("--rtol", type=float, default=1e-9, help="relative tolerance of a number (default 1e-9)")
    args = parser.parse_args(argv)
    return run_all(args.out) if args.command == "run" else compare(args.old, args.new, args.rtol)


if __name__ == "__main__":
    sys.exit(main())
