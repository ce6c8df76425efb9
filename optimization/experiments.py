"""Experiment orchestration: every stage over every (run, seed) of an experiment.

Stages run in the order given and read only what earlier stages wrote to disk:
  train      -> <output>/<experiment>/<run>/seed-<seed>/{checkpoint.pt, metrics.json, ...}
  sharpness  -> .../seed-<seed>/{sharpness.json, measurement.pt}
  landscape  -> .../seed-<seed>/landscape_2d.npz, <output>/<experiment>/interpolation.json, figures/
  report     -> <output>/<experiment>/{report.md, summary.json}
"""

from __future__ import annotations

from pathlib import Path

from optimization.training import train_run
from utils.config import Experiment, RunConfig
from utils.errors import ConfigError, UserError
from utils.io import read_json, write_json

STAGES = ("train", "sharpness", "landscape", "report")


def experiment_dir(output: Path, experiment: Experiment) -> Path:
    return Path(output) / experiment.name


def run_dir(output: Path, experiment: Experiment, run: RunConfig) -> Path:
    return experiment_dir(output, experiment) / run.name / f"seed-{run.seed}"


def parse_stages(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ConfigError(f"--stages: unknown stage {unknown[0] if unknown else text!r} (stages: {', '.join(STAGES)})")
    return stages


def trained_runs(experiment: Experiment, output: Path) -> list[tuple[RunConfig, Path]]:
    """(run, run folder) of every job, once all of them have finished training."""
    jobs = [(run, run_dir(output, experiment, run)) for run in experiment.jobs()]
    for run, folder in jobs:
        for name in ("checkpoint.pt", "metrics.json"):
            if not (folder / name).is_file():
                raise UserError(f"{folder / name} not found: run the train stage first "
                                f"(--stages train) for {experiment.name}/{run.name}/seed-{run.seed}")
    return jobs


def write_manifest(experiment: Experiment, output: Path) -> None:
    """<output>/<experiment>/experiment.json: the runs (in config order), seeds and resolved configs,
    so readers of the results (report, notebook) need not re-read the YAML files. Runs trained by
    earlier invocations (`--runs`) stay listed."""
    path = experiment_dir(output, experiment) / "experiment.json"
    configs = read_json(path)["configs"] if path.is_file() else {}
    configs.update({run.name: run.to_dict() for run in experiment.runs})
    write_json(path, {
        "experiment": experiment.name,
        "config_file": str(experiment.source),
        "seeds": experiment.seeds,
        "runs": list(configs),
        "configs": configs,
    })


def trained_with(folder: Path) -> str:
    """The fingerprint of the training behind a run folder's checkpoint: later stages redo their
    work when it changes (read from metrics.json, so the checkpoint need not be loaded)."""
    return read_json(Path(folder) / "metrics.json")["fingerprint"]


def train_stage(experiment: Experiment, output: Path, force: bool) -> None:
    write_manifest(experiment, output)
    for run in experiment.jobs():
        train_run(run, run_dir(output, experiment, run), force=force,
                  label=f"{experiment.name}/{run.name}/seed-{run.seed}")


def run_experiment(experiment: Experiment, stages: list[str], output: Path, force: bool = False) -> None:
    """Each handler takes (experiment, output folder, force) and writes files under the output folder."""
    from sharpness.stage import sharpness_stage  # the stages import this module: import them when run
    from visualization.report import report_stage
    from visualization.stage import landscape_stage

    handlers = {"train": train_stage, "sharpness": sharpness_stage, "landscape": landscape_stage, "report": report_stage}
    for stage in stages:
        handlers[stage](experiment, Path(output), force)
