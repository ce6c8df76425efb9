"""What an experiment's training would cost before it runs: each run's training FLOPs from its config alone,
priced on every device of config/prices.yaml (paper-scale dollars without a paper-scale run).

    python -m optimization.estimate --config config/exp6-peft.yaml [--set key=value ...] [--runs NAME ...]

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
import math
import sys

import torch

from models.adapters import add_adapter
from optimization.cost import load_prices, on_priced_gpus, priced_gpus, step_flops
from config.checks import ARCH_PRESETS, scratch_model_config
from config.loading import load_experiment
from config.schema import RunConfig
from utils.errors import UserError

GPT2_VOCABULARY = 50257


def model_on_meta(run: RunConfig):
    """The run's model (with its adapter) as shapes only."""
    from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

    cfg = run.model
    vocabulary = {"bytes": 257, "bpe": cfg.bpe_vocab_size}.get(cfg.tokenizer, GPT2_VOCABULARY)
    if cfg.init == "scratch":
        config = scratch_model_config(cfg, vocabulary, vocabulary - 1)  # an end token in the vocabulary; no FLOPs
    elif cfg.name in ARCH_PRESETS:
        config = GPT2Config(**ARCH_PRESETS[cfg.name], vocab_size=GPT2_VOCABULARY)
    else:
        from utils.hub import load_from_hub

        config = load_from_hub(AutoConfig.from_pretrained, cfg.name, "model config",
                               **({"revision": cfg.revision} if cfg.revision else {}))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return add_adapter(model, cfg.adapter, 0) if cfg.adapter.type != "none" else model


_FLOPS_PER_STEP: dict[tuple, float] = {}  # by (model settings, batch_size, max_length)


def _flops_per_step(run: RunConfig) -> float:
    """step_flops of the run's model at its largest batch, counted once per model and batch shape (a report
    estimates every run of an experiment, and most share both)."""
    shape = (repr(run.model), run.train.batch_size, run.data.max_length)
    if shape not in _FLOPS_PER_STEP:
        _FLOPS_PER_STEP[shape] = step_flops(model_on_meta(run), run.train.batch_size, run.data.max_length)
    return _FLOPS_PER_STEP[shape]


def estimate(run: RunConfig) -> dict:
    """Steps, FLOPs per step (at most) and training FLOPs (at most) of one run."""
    try:
        per_step = _flops_per_step(run)
    except ValueError as err:
        raise UserError(f"run {run.name}: no FLOP estimate: {err}") from None
    steps = run.train.epochs * math.ceil(run.data.n_train / run.train.batch_size)
    if run.train.budget.flops:
        steps = min(steps, math.ceil(run.train.budget.flops / per_step))
    return {"steps": steps, "flops_per_step": per_step, "flops": steps * per_step}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment YAML file")
    parser.add_argument("--runs", nargs="+", metavar="NAME", help="only these runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
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
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
