"""With dropout, does a torchrun job of 2 ranks train models as good as one process's? The quickstart's
small-batch run (dropout 0.1, batches of 4 split 2 + 2) over several seeds, once as one process and once as a
2-rank job: the final test losses per seed, and whether they differ in distribution.

    python bench/torchrun_dropout.py [--seeds 8] [--checkout PATH]

A seed fixes the initial weights and the data order in both; only the dropout masks differ (with dropout 0 the
two equal each other to rounding, tests/e2e/test_torchrun.py). So the losses are compared per seed (paired t and
Wilcoxon signed-rank tests) and as two samples (Welch's t, Mann–Whitney U). --checkout runs another checkout of
the code (e.g. an older commit, `git worktree add`) with this one's Python environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
RUN = "small-batch"


def train(checkout: Path, seeds: list[int], processes: int, output: Path) -> list[float]:
    """The final test loss of each seed, trained by `processes` processes (one job for all seeds)."""
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone"]
    command = launcher + [str(checkout / "run.py"), "--config", str(checkout / "config" / "quickstart.yaml"),
                          "--runs", RUN, "--stages", "train", "--device", "cpu", "--output", str(output),
                          "--set", f"seeds=[{', '.join(map(str, seeds))}]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{processes} process(es) failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    folder = output / "quickstart" / RUN
    return [json.loads((folder / f"seed-{seed}" / "metrics.json").read_text())["test_loss"] for seed in seeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="seeds 1..N")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the code to run (default: this checkout)")
    args = parser.parse_args()
    seeds = list(range(1, args.seeds + 1))
    with tempfile.TemporaryDirectory() as scratch:
        one = np.array(train(args.checkout, seeds, 1, Path(scratch) / "one"))
        two = np.array(train(args.checkout, seeds, 2, Path(scratch) / "two"))
    print(f"quickstart/{RUN}, dropout 0.1, final test loss per seed ({args.checkout}):")
    print("| seed | 1 process | 2 ranks | 2 − 1 |\n|---|---|---|---|")
    for seed, a, b in zip(seeds, one, two):
        print(f"| {seed} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    print(f"| mean ± sd | {one.mean():.4f} ± {one.std(ddof=1):.4f} | {two.mean():.4f} ± {two.std(ddof=1):.4f} | "
          f"{(two - one).mean():+.4f} ± {(two - one).std(ddof=1):.4f} |")
    print(f"paired: t p = {stats.ttest_rel(two, one).pvalue:.3g}, Wilcoxon p = {stats.wilcoxon(two, one).pvalue:.3g}; "
          f"two samples: Welch p = {stats.ttest_ind(two, one, equal_var=False).pvalue:.3g}, "
          f"Mann–Whitney p = {stats.mannwhitneyu(two, one).pvalue:.3g}")


if __name__ == "__main__":
    main()
