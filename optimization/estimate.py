"""What an experiment would cost before it runs: each run's training FLOPs from its config alone, priced on every
device of config/prices.yaml (paper-scale dollars without a paper-scale run), and each stage's passes, FLOPs and time
on the experiment's device (optimization.stage_cost says how they are counted and timed).

    python -m optimization.estimate --config config/exp6-peft.yaml [--set key=value ...] [--runs NAME ...]
                                    [--stages train,search,sharpness,geometry,landscape,prune]

The model is built on PyTorch's meta device (shapes, no weights, no memory): GPT-2-family shapes come from
config.checks.ARCH_PRESETS (distilgpt2 and gpt2 need no download), other hub models from their config (local
cache or hub). Every step is counted at its largest shape, batch_size texts of data.max_length tokens, so the
FLOPs are an upper bound: real batches are padded only to their longest text (the measured train_flops of a
run says by how much). Steps: epochs × ⌈n_train / batch_size⌉ (n_train is itself an upper bound on the texts
the filter keeps), or the step that spends train.budget.flops if that comes first. Seconds on a device:
FLOPs / (its peak at the run's precision × the price table's assumed_mfu); the FLOPs are the run's whole, so a
torchrun job of N such devices takes 1/N of those hours at the same dollars (optimization.cost).
"""

from __future__ import annotations

import argparse
import sys

from optimization.cost import GRAPH_PER_GRADIENT, HVP_PER_GRADIENT, estimate, load_prices, on_priced_gpus, priced_gpus
from optimization.stage_cost import DEFAULT_STAGES, KINDS, PASSES, UNCOSTED_STAGES, duration, stage_costs
from config.loading import load_experiment
from utils.errors import ConfigError, UserError


def stage_table(experiment, stages: str | None) -> str:
    """Every stage's passes, FLOPs and time on the experiment's device (optimization.stage_cost), all its jobs."""
    from utils.device import resolve_device, use_threads

    device = resolve_device(experiment.runs[0].device if experiment.runs else "auto")
    use_threads(experiment.threads)
    names = [name.strip() for name in stages.split(",")] if stages else experiment.stages or DEFAULT_STAGES
    unknown = [name for name in names if name not in PASSES and name not in UNCOSTED_STAGES]
    if unknown:
        raise ConfigError(f"--stages: unknown stage {unknown[0]!r} (stages: {', '.join([*PASSES, *UNCOSTED_STAGES])})")
    costs, throughput = stage_costs(experiment, names, device)
    trials = sum(template.search.n_trials for template in experiment.studies())
    searched = f" and its searches' {trials} trials" if trials else ""
    lines = [f"each stage over the experiment's {len(experiment.jobs())} (run, seed) jobs{searched}: batch passes (Lanczos at "
             f"its max_iter, every batch at data.max_length: at most), FLOPs (an HVP counted as {HVP_PER_GRADIENT:g} "
             f"gradients, and its gradient graph as {GRAPH_PER_GRADIENT:g} once at each weights) and time on {device.type}, "
             f"each training's set-up and each study's bookkeeping included ({throughput.source or 'nothing timed'})",
             "| stage | forward / gradient / HVP / training-step batch passes | FLOPs | time | most of it |",
             "|---|--:|--:|--:|---|"]
    for cost in costs:
        passes = " / ".join(str(cost.passes[kind]) for kind in KINDS)
        lines.append(f"| {cost.stage} | {passes} | {cost.flops:.3g} | {duration(cost.seconds)} | {cost.largest_part()} |")
    lines.append(f"| all | | {sum(c.flops for c in costs):.3g} | {duration(sum(c.seconds for c in costs))} | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment YAML file")
    parser.add_argument("--runs", nargs="+", metavar="NAME", help="only these runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stages", help="comma-separated stages to estimate (default: the file's `stages:`, else "
                                         f"{','.join(DEFAULT_STAGES)})")
    args = parser.parse_args(argv)
    try:
        experiment = load_experiment(args.config, args.overrides, args.runs)
        prices = load_prices()
        gpus = priced_gpus(prices)
        print(f"{experiment.name}: training FLOPs at most (every batch at data.max_length) of each run at one seed "
              f"(the config lists {len(experiment.seeds)}), priced at assumed_mfu {prices.assumed_mfu:g} of each "
              "device's peak; hours on one device (N devices: 1/N of them, the same dollars)")
        print("| run | steps | FLOPs | " + " | ".join(gpus) + " |")
        print("|" + "---|" * (3 + len(gpus)))
        for run in experiment.runs:
            cost = estimate(run)
            cells = ["–" if priced is None else f"${priced[1]:.3g} ({priced[0] / 3600:.2g} h)"
                     for priced in on_priced_gpus(prices, cost["flops"], run.train.precision).values()]
            name = run.name if not run.search.n_trials else \
                f"{run.name} (a search: each of {run.search.n_trials} trials, at the values its space leaves)"
            print(f"| {name} | {cost['steps']} | {cost['flops']:.3g} | " + " | ".join(cells) + " |")
        print()
        print(stage_table(experiment, args.stages))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
