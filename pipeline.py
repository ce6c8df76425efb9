"""The stage registry: every stage of the pipeline, in the order data flows through them.

    train      -> <output>/<experiment>/<run>/seed-<seed>/{checkpoint.pt, metrics.json, ...}
    search     -> <output>/<experiment>/{search.json, search.db}, a run folder per trial (runs with search.n_trials)
    sharpness  -> .../seed-<seed>/sharpness.json (density.json, sharpness_merged.json when asked)
    geometry   -> .../seed-<seed>/geometry.json (ℓ∞ vs ℓ2 geometry of the Hessian; not run by default)
    landscape  -> .../seed-<seed>/landscape_2d.npz, <output>/<experiment>/interpolation.json, figures/
    prune      -> .../seed-<seed>/prune.json (LoRA runs: perplexity as adapter weights are zeroed; not run by default)
    correlate  -> <output>/<experiment>/correlation.json (each measure's rank correlation with the generalization gap)
    report     -> <output>/<experiment>/{report.md, summary.json}

Each handler takes (experiment, output folder, force), reads only files that earlier stages wrote
(models.runs says where) and writes files under the output folder. This module sits at the top:
it imports the stages (when they run), and none of them imports it. One process at a time works in an experiment
folder (utils.lock), but for the train and search stages of processes that train other runs. Under torchrun,
every rank runs the collective stages and rank 0 the others (utils.distributed). Without --stages, run.py
runs the experiment file's `stages:` list, or DEFAULT_STAGES.
"""

from __future__ import annotations

import importlib
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from config.schema import Experiment
from utils.errors import ConfigError, UserError


@dataclass(frozen=True)
class Stage:
    """One stage: its handler `module:function` (imported when the stage runs: the stages load torch, transformers,
    optuna and matplotlib, which `run.py --help`, `--list` and a config error do without), whether processes given
    other --runs (or search workers) run it side by side in one experiment folder (shared), whether every torchrun
    rank runs it, splitting the work (collective; rank 0 runs the others alone), and whether run.py runs it when
    neither --stages nor the config's `stages:` says (default)."""
    name: str
    run: str
    shared: bool = False
    collective: bool = False
    default: bool = False

    def handler(self):
        module, function = self.run.split(":")
        return getattr(importlib.import_module(module), function)


# In the order data flows: a later stage reads what an earlier one writes.
STAGES = {stage.name: stage for stage in (
    Stage("train", "optimization.train_stage:train_stage", shared=True, collective=True, default=True),
    Stage("search", "optimization.search_stage:search_stage", shared=True),
    Stage("sharpness", "sharpness.sharpness_stage:sharpness_stage", collective=True, default=True),
    Stage("geometry", "sharpness.geometry_stage:geometry_stage", collective=True),
    Stage("landscape", "visualization.landscape_stage:landscape_stage", collective=True, default=True),
    Stage("prune", "optimization.prune_stage:prune_stage"),
    Stage("correlate", "report.correlate_stage:correlate_stage"),
    Stage("report", "report.report_stage:report_stage", default=True),
)}
DEFAULT_STAGES = [stage.name for stage in STAGES.values() if stage.default]


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


def with_stages(experiment: Experiment) -> Experiment:
    """`experiment` with its `stages:` filled in when the file has none, so that experiment.json records what the
    experiment's stages are (the report and the notebook list as missing only what those stages make)."""
    return experiment if experiment.stages else replace(experiment, stages=experiment_stages(experiment, None))


def run_experiment(experiment: Experiment, stages: list[str], output: Path, force: bool = False) -> None:
    """Run `stages` in order, each holding the experiment folder's lock (shared by the train and search stages of
    several processes); first clear what killed writes left, while no one else writes there."""
    from utils import distributed  # these load torch: imported here, as the stages are (Stage.handler)
    from utils.io import remove_interrupted_writes
    from models.runs import MANIFEST, experiment_dir, with_trials
    from utils.lock import experiment_lock

    # Loaded before anything is made: a Ctrl-C or a broken install meanwhile leaves no folder behind.
    handlers = {stage: STAGES[stage].handler() for stage in stages}
    experiment = with_stages(experiment)
    folder = experiment_dir(output, experiment)
    if not any(STAGES[stage].shared for stage in stages) and not (folder / MANIFEST).is_file():  # and no empty folder left behind
        raise UserError(f"{folder / MANIFEST} not found: run the train stage first (--stages train)")
    if distributed.world_size() > 1 and "search" in stages:
        raise UserError("the search stage does not run under torchrun: start its workers as separate processes "
                        "(one per device), each `run.py --config FILE --stages search`")
    cleaned = False
    for stage in stages:
        if distributed.world_size() > 1 and not STAGES[stage].collective and not distributed.is_main():
            distributed.barrier()  # rank 0 does this stage alone
            continue
        # Rank 0 holds the lock for the whole job: the other ranks write nothing.
        lock = experiment_lock(folder, shared=STAGES[stage].shared, stage=stage)
        with lock if distributed.writes() else nullcontext():
            if not STAGES[stage].shared and not cleaned:
                for leftover in remove_interrupted_writes(folder):
                    print(f"{experiment.name}: removed {leftover}, left by an interrupted write")
                cleaned = True
            with distributed.collective() if STAGES[stage].collective else nullcontext():
                # the shared stages make the trials that the later stages measure
                handlers[stage](experiment if STAGES[stage].shared else with_trials(experiment, output),
                                Path(output), force)
        distributed.barrier()  # the next stage reads what this one wrote
