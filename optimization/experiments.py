"""The train stage: every (run, seed) of an experiment, and the experiment's manifest."""

from __future__ import annotations

from pathlib import Path

from optimization.training import train_run
from utils.config import Experiment
from utils.io import read_own_output, write_json
from utils.layout import MANIFEST, experiment_dir, run_dir, run_label


def write_manifest(experiment: Experiment, output: Path) -> None:
    """<output>/<experiment>/experiment.json: the runs (in config order), seeds, the config's `stages:`
    and resolved configs,
    so readers of the results (report, notebook) need not re-read the YAML files. Runs trained by
    earlier invocations (`--runs`) stay listed."""
    path = experiment_dir(output, experiment) / MANIFEST
    earlier = read_own_output(path, label=experiment.name) or {}
    configs = earlier.get("configs", {})
    configs.update({run.name: run.to_dict() for run in experiment.runs})
    write_json(path, {
        "experiment": experiment.name,
        "config_file": str(experiment.source),
        "seeds": experiment.seeds,
        "stages": experiment.stages,
        "runs": list(configs),
        "configs": configs,
    })


def train_stage(experiment: Experiment, output: Path, force: bool) -> None:
    write_manifest(experiment, output)
    for run in experiment.jobs():
        train_run(run, run_dir(output, experiment, run), force=force, label=run_label(experiment, run))
