"""Each stage's estimated seconds (optimization.stage_cost) against the seconds it takes, on the small experiments.

For each experiment (shortened like bench/golden.py, so that the whole check takes minutes on a CPU) it estimates
every stage, then runs the stages one at a time in this process (pipeline.run_experiment, into a scratch folder) and
times each; the estimate's calibration runs first, in the same process and with the same threads. Goal: every stage
within 2× of its estimate.

    OMP_NUM_THREADS=1 .venv/bin/python bench/stage_cost.py [--experiments quickstart exp4-geometry-small] [--out DIR]
                                                           [--as-shipped]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from config.loading import load_experiment  # noqa: E402
from optimization.stage_cost import KINDS, stage_costs  # noqa: E402
from pipeline import STAGES, experiment_stages, run_experiment  # noqa: E402
from utils.device import use_threads  # noqa: E402

# Shorter than the configs (the geometry of exp4 on fewer texts and sketches), longer than bench/golden.py's, so that
# each stage takes seconds, not a fraction of one.
EXPERIMENTS = {
    "quickstart": ["train.epochs=2", "landscape.resolution=11"],
    "exp4-geometry-small": ["train.epochs=2", "geometry.cauchy_vectors=12", "geometry.frobenius_probes=6",
                            "geometry.bootstrap=10"],
    "exp7-search-small": ["stages=[search]"],  # its 18 trials' training, as shipped
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--out", help="results folder (default: a temporary one)")
    parser.add_argument("--as-shipped", action="store_true", help="the configs as they are, not shortened")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="stage-cost-"))
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores, results in {out}")
    print("| experiment | stage | forward / gradient / HVP / training-step batch passes | estimated s | measured s | "
          "measured / estimated |")
    print("|---|---|--:|--:|--:|--:|")
    for name in args.experiments:
        experiment = load_experiment(ROOT / "config" / f"{name}.yaml", [] if args.as_shipped else EXPERIMENTS[name])
        use_threads(experiment.threads)
        stages = experiment_stages(experiment, None)
        for stage in stages:  # imports are the process's start, not a stage's work
            STAGES[stage].handler()
        costs, throughput = stage_costs(experiment, stages, torch.device("cpu"))
        for cost in costs:
            start = time.perf_counter()
            run_experiment(experiment, [cost.stage], out, force=True)
            measured = time.perf_counter() - start
            passes = " / ".join(str(cost.passes[kind]) for kind in KINDS)
            print(f"| {name} | {cost.stage} | {passes} | {cost.seconds:.1f} | {measured:.1f} | "
                  f"{measured / cost.seconds:.2f} |", flush=True)
        print(f"({name}: {throughput.source})")


if __name__ == "__main__":
    main()
