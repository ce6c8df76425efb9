"""The stage registry: every stage of the pipeline, in the order data flows through them.

    train      -> <output>/<experiment>/<run>/seed-<seed>/{checkpoint.pt, metrics.json, ...}
    search     -> <output>/<experiment>/{search.json, search.db}, a run folder per trial (runs with search.n_trials)
    sharpness  -> .../seed-<seed>/{sharpness.json, measurement.pt}
    geometry   -> .../seed-<seed>/geometry.json (ℓ∞ vs ℓ2 geometry of the Hessian; not run by default)
    landscape  -> .../seed-<seed>/landscape_2d.npz, <output>/<experiment>/interpolation.json, figures/
    prune      -> .../seed-<seed>/prune.json (LoRA runs: perplexity as adapter weights are zeroed; not run by default)
    correlate  -> <output>/<experiment>/correlation.json (each measure's rank correlation with the generalization gap)
    report     -> <output>/<experiment>/{report.md, summary.json}

Each handler takes (experiment, output folder, force), reads only files that earlier stages wrote
(utils.layout says where) and writes files under the output folder. This module sits at the top:
it imports the stages (when they run), and none of them imports it. One process at a time works in an experiment
folder (utils.lock), but for the train and search stages of processes that train other runs. Under torchrun,
every rank runs the COLLECTIVE_STAGES and rank 0 the others (utils.distributed). Without --stages, run.py
runs the experiment file's `stages:` list, or DEFAULT_STAGES.
"""

from __future__ import annotations

import importlib
from contextlib import nullcontext
from pathlib import Path

from utils.config import DEFAULT_STAGES, Experiment
from utils.errors import ConfigError, UserError

# Processes given other --runs (or search workers) run these side by side in one experiment folder.
SHARED_STAGES = ("train", "search")
# Under torchrun every rank runs these, splitting the work (utils.distributed); rank 0 runs the others alone.
COLLECTIVE_STAGES = ("train", "sharpness", "geometry", "landscape")
# Each stage's (module, handler), imported when the stage runs: the stages load torch, transformers, optuna and
# matplotlib (seconds, tens on a busy CPU), which `run.py --help`, `--list` and a config error do without.
STAGES = {"train": ("optimization.experiments", "train_stage"), "search": ("optimization.search", "search_stage"),
          "sharpness": ("sharpness.stage", "sharpness_stage"), "geometry": ("sharpness.geometry_stage", "geometry_stage"),
          "landscape": ("visualization.stage", "landscape_stage"), "prune": ("optimization.prune_stage", "prune_stage"),
          "correlate": ("sharpness.correlate_stage", "correlate_stage"), "report": ("visualization.report", "report_stage")}


def parse_stages(stages: str | list[str], origin: str = "--stages") -> list[str]:
    """Stage names from `--stages a,b` or an experiment file's list, checked against the registry and
    put in the registry's order (a later stage reads what an earlier one writes)."""
    names = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else list(stages)
    names = [s for s in names if s]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise ConfigError(f"{origin}: unknown stage {unknown[0] if unknown else stages!r} (stages: {', '.join(STAGES)})")
    return [s for s in STAGES if s in names]


def experiment_stages(experiment: Experiment, requested: str | None) -> list[str]:
    """--stages if given, else the experiment file's `stages:`, else DEFAULT_STAGES (and search, for a file with
    searches: their trials are the runs the later stages measure)."""
    if requested is not None:
        return parse_stages(requested)
    if experiment.stages:
        return parse_stages(experiment.stages, f"{experiment.source}: stages")
    return parse_stages(DEFAULT_STAGES + ["search"] if experiment.studies() else DEFAULT_STAGES)


def run_experiment(experiment: Experiment, stages: list[str], output: Path, force: bool = False) -> None:
    """Run `stages` in order, each holding the experiment folder's lock (shared by the train and search stages of
    several processes); first clear what killed writes left, while no one else writes there."""
    from utils import distributed  # these load torch: imported here, as the stages are (STAGES)
    from utils.io import remove_interrupted_writes
    from utils.layout import MANIFEST, experiment_dir, with_trials
    from utils.lock import experiment_lock

    # Loaded before anything is made: a Ctrl-C or a broken install meanwhile leaves no folder behind.
    handlers = {stage: getattr(importlib.import_module(STAGES[stage][0]), STAGES[stage][1]) for stage in stages}
    folder = experiment_dir(output, experiment)
    if not {"train", "search"} & set(stages) and not (folder / MANIFEST).is_file():  # and no empty folder left behind
        raise UserError(f"{folder / MANIFEST} not found: run the train stage first (--stages train)")
    if distributed.world_size() > 1 and "search" in stages:
        raise UserError("the search stage does not run under torchrun: start its workers as separate processes "
                        "(one per device), each `run.py --config FILE --stages search`")
    cleaned = False
    for stage in stages:
        if distributed.world_size() > 1 and stage not in COLLECTIVE_STAGES and not distributed.is_main():
            distributed.barrier()  # rank 0 does this stage alone
            continue
        # Rank 0 holds the lock for the whole job: the other ranks write nothing.
        lock = experiment_lock(folder, shared=stage in SHARED_STAGES, stage=stage)
        with lock if distributed.writes() else nullcontext():
            if stage not in SHARED_STAGES and not cleaned:
                for leftover in remove_interrupted_writes(folder):
                    print(f"{experiment.name}: removed {leftover}, left by an interrupted write")
                cleaned = True
            with distributed.collective() if stage in COLLECTIVE_STAGES else nullcontext():
                handlers[stage](experiment if stage in ("train", "search") else with_trials(experiment, output),
                                Path(output), force)
        distributed.barrier()  # the next stage reads what this one wrote
