"""The stage registry: every stage of the pipeline, in the order data flows through them.

    train      -> <output>/<experiment>/<run>/seed-<seed>/{checkpoint.pt, metrics.json, ...}
    sharpness  -> .../seed-<seed>/{sharpness.json, measurement.pt}
    landscape  -> .../seed-<seed>/landscape_2d.npz, <output>/<experiment>/interpolation.json, figures/
    report     -> <output>/<experiment>/{report.md, summary.json}

Each handler takes (experiment, output folder, force), reads only files that earlier stages wrote
(utils.layout says where) and writes files under the output folder. This module sits at the top:
it imports the stages, and none of them imports it. One process at a time works in an experiment
folder (utils.lock).
"""

from __future__ import annotations

from pathlib import Path

from optimization.experiments import train_stage
from sharpness.stage import sharpness_stage
from utils.config import Experiment
from utils.errors import ConfigError, UserError
from utils.io import remove_interrupted_writes
from utils.layout import MANIFEST, experiment_dir
from utils.lock import experiment_lock
from visualization.report import report_stage
from visualization.stage import landscape_stage

STAGES = {"train": train_stage, "sharpness": sharpness_stage, "landscape": landscape_stage, "report": report_stage}


def parse_stages(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ConfigError(f"--stages: unknown stage {unknown[0] if unknown else text!r} (stages: {', '.join(STAGES)})")
    return stages


def run_experiment(experiment: Experiment, stages: list[str], output: Path, force: bool = False) -> None:
    """Run `stages` in order, holding the experiment folder's lock; first clear what killed writes left."""
    folder = experiment_dir(output, experiment)
    if "train" not in stages and not (folder / MANIFEST).is_file():  # and no empty folder left behind
        raise UserError(f"{folder / MANIFEST} not found: run the train stage first (--stages train)")
    with experiment_lock(folder):
        for leftover in remove_interrupted_writes(folder):
            print(f"{experiment.name}: removed {leftover}, left by an interrupted write")
        for stage in stages:
            STAGES[stage](experiment, Path(output), force)
