"""The train stage: every (run, seed) of an experiment, and the experiment's manifest."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from optimization.training import train_run
from utils import distributed
from config.schema import Experiment, RunConfig
from utils.errors import OutputError
from utils.io import read_own_output, write_json
from models.runs import MANIFEST, experiment_dir, run_dir, run_label
from utils.lock import manifest_lock, run_lock


def write_manifest(experiment: Experiment, output: Path, trial: tuple[RunConfig, str] | None = None) -> None:
    """<output>/<experiment>/experiment.json: the runs (in config order), seeds, the config's `stages:`
    and resolved configs, so readers of the results (report, notebook) need not re-read the YAML files.
    An experiment folder is one config file's: another file with the same experiment name is refused (OutputError).
    Runs trained by earlier invocations (`--runs`) stay listed. A search's templates are not runs; its
    trained trials are (`trial`: a trial's config and its template's name), listed under "trials" too."""
    if not distributed.writes():  # torchrun: rank 0 writes it
        return
    folder = experiment_dir(output, experiment)
    config_path = str(Path(experiment.source).resolve())
    with manifest_lock(folder):  # search workers add their trials side by side
        earlier = read_own_output(folder / MANIFEST, label=experiment.name) or {}
        if earlier.get("config_path", config_path) != config_path:  # its runs' folders are another config's
            raise OutputError(f"{folder} holds the experiment {experiment.name} of another config, "
                              f"{earlier['config_path']} (experiment.json); give {experiment.source} another "
                              "`experiment:` name or --output")
        configs, trials = earlier.get("configs", {}), earlier.get("trials", {})
        configs.update({run.name: run.to_dict() for run in experiment.runs if not run.search.n_trials})
        if trial is not None:
            configs[trial[0].name] = trial[0].to_dict()
            trials[trial[0].name] = trial[1]
        write_json(folder / MANIFEST, {
            "experiment": experiment.name,
            "config_file": str(experiment.source),
            "config_path": config_path,
            "seeds": experiment.seeds,
            "stages": experiment.stages,
            "runs": list(configs),
            "configs": configs,
            "trials": trials,
        })


def train_stage(experiment: Experiment, output: Path, force: bool) -> None:
    """Train every job not trained yet; a run that another process is training (given the same run by --runs)
    is left to it."""
    write_manifest(experiment, output)
    for run in in_training_order(experiment.jobs()):
        folder, label = run_dir(output, experiment, run), run_label(experiment, run)
        with run_lock(folder) if distributed.writes() else nullcontext(True) as mine:
            if distributed.any_rank(not mine):  # torchrun: rank 0's lock decides for every rank
                print(f"{label}: another process is training it; left to that process")
                continue
            train_run(run, folder, force=force, label=label)


def in_training_order(jobs: list[RunConfig]) -> list[RunConfig]:
    """The jobs with every run after the run it starts from (model.base_run), otherwise in their order."""
    bases = {run.name: run.model.base_run for run in jobs}

    def depth(name: str) -> int:  # a chain of bases; config.schema refused circles
        return 1 + depth(bases[name]) if bases.get(name) else 0

    return sorted(jobs, key=lambda run: depth(run.name))
