"""Where every stage's files live, and which training produced a run folder.

    <output>/<experiment>/experiment.json             the manifest the train stage writes
    <output>/<experiment>/<run>/seed-<seed>/          one run folder per (run, seed)

Every stage (train, sharpness, landscape, report) finds its inputs through this module and reads
only files, so no stage imports another.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from config.loading import run_config_from_dict
from config.schema import Experiment, RunConfig, measurement_set_settings, section_settings
from utils.errors import CorruptFileError, UserError
from utils.io import fingerprint, read_json, recorded_sha256, verify

MANIFEST = "experiment.json"
TRAJECTORY, TRAJECTORY_INDEX = "trajectory.npy", "trajectory.json"  # train.trajectory's rows and their steps


def with_trials(experiment: Experiment, output: Path) -> Experiment:
    """`experiment` with the trained trials of its searches (experiment.json's "trials") among its jobs: those
    of its searches, and those that --runs named."""
    templates = {run.name for run in experiment.studies()}
    if not templates and not experiment.requested:
        return experiment
    path = experiment_dir(output, experiment) / MANIFEST
    listed = (read_json(path) if path.is_file() else {}).get("trials", {})
    unknown = [name for name in experiment.requested if name not in listed]
    if unknown:
        raise UserError(f"{experiment.source}: runs: no run or trained trial named {unknown[0]!r} "
                        "(`run.py --config FILE --list` lists the runs; search.json the trials)")
    manifest = read_json(path) if listed else {}
    trials = [replace(run_config_from_dict(manifest["configs"][name]), seed=experiment.seeds[0])
              for name, template in listed.items() if template in templates or name in experiment.requested]
    return replace(experiment, trials=trials)


def experiment_dir(output: Path, experiment: Experiment | str) -> Path:
    name = experiment if isinstance(experiment, str) else experiment.name
    return Path(output) / name


def run_dir(output: Path, experiment: Experiment | str, run: RunConfig) -> Path:
    return experiment_dir(output, experiment) / run.name / f"seed-{run.seed}"


def run_label(experiment: Experiment | str, run: RunConfig) -> str:
    name = experiment if isinstance(experiment, str) else experiment.name
    return f"{name}/{run.name}/seed-{run.seed}"


def stage_command(experiment: Experiment, output: Path, stage: str, run: RunConfig | None = None) -> str:
    """The command that runs one stage of an experiment again (for one run, if given)."""
    runs = f" --runs {run.name}" if run else ""
    where = "" if Path(output) == Path("results") else f" --output {output}"
    return (f"python run.py --config {experiment.source} --stages {stage}{runs}{where} "
            "(with the same --set options as before)")


def trained_runs(experiment: Experiment, output: Path) -> list[tuple[RunConfig, Path]]:
    """(run, run folder) of every job, once all of them have finished training and their files are
    intact (metrics.json parses; init.pt, checkpoint.pt and tokenizer/ match their checksums)."""
    jobs = [(run, run_dir(output, experiment, run)) for run in experiment.jobs()]
    for run, folder in jobs:
        for name in ("checkpoint.pt", "metrics.json", "init.pt"):  # init.pt: θ₀, and a LoRA run's frozen weights
            if not (folder / name).is_file():
                raise UserError(f"{folder / name} not found: run the train stage first, with: "
                                f"{stage_command(experiment, output, 'train', run)}")
        try:
            trained = read_json(folder / "metrics.json").get("fingerprint")
            for name in ("init.pt", "checkpoint.pt", "tokenizer"):
                if (folder / name).exists():
                    verify(folder / name)
        except CorruptFileError as err:
            raise err.needing(f"train the run again with: {stage_command(experiment, output, 'train', run)}") from None
        if trained != training_fingerprint(run):
            raise UserError(f"{folder} was trained with other settings than {run_label(experiment, run)} has now; "
                            f"train it again with: {stage_command(experiment, output, 'train', run)}")
        if run.model.base_run and started_from(folder) != base_weights(run, folder):
            raise UserError(f"{run_label(experiment, run)} started from other weights than its base run "
                            f"{run.model.base_run} holds now; train it again with: "
                            f"{stage_command(experiment, output, 'train', run)}")
    return jobs


def training_fingerprint(run: RunConfig) -> str:
    """Hash of everything that determines the trained weights (not the device or later stages), and of what the
    train stage measures along the way when asked (train.track and its measurement set, train.trajectory).

    The data, model and train sections count as the schema marks them (config.schema.section_settings: not
    train.compile; train.betas, eps, rotation and rotation_seed, which came later, only when set). A setting is
    also left out while it is unused (betas and eps by sgd and signsgd, rotation_seed without a rotation) or off
    (track, trajectory, budget, adapter, base_run), so that runs trained before it existed keep their fingerprints."""
    settings = {"seed": run.seed, **section_settings(run, "data", "model", "train")}
    train, model = settings["train"], settings["model"]
    unused = {"betas", "eps"} if run.train.optimizer in ("sgd", "signsgd") else set()
    if run.train.rotation == "none":
        unused.add("rotation_seed")
    unused |= {key for key in ("track", "trajectory") if not getattr(run.train, key).every}
    if not (run.train.budget.seconds or run.train.budget.flops):
        unused.add("budget")
    for key in unused:
        train.pop(key, None)
    if run.model.adapter.type == "none":
        del model["adapter"]
    if not run.model.base_run:
        del model["base_run"]
    if run.train.track.every:  # the track is measured on the sharpness stage's measurement set
        settings["measurement"] = measurement_set_settings(run)
    return fingerprint(settings)


def base_folder(run: RunConfig, folder: Path) -> Path:
    """The folder of the run that `run` (trained in `folder`) starts from: model.base_run, same seed."""
    return Path(folder).parent.parent / run.model.base_run / Path(folder).name


def base_weights(run: RunConfig, folder: Path) -> str | None:
    """layout.trained_with of run's base run as it is now; None while it is not trained."""
    base = base_folder(run, folder)
    if not ((base / "metrics.json").is_file() and (base / "checkpoint.pt").is_file()):
        return None
    return trained_with(base)


def started_from(folder: Path) -> str | None:
    """The base weights (layout.trained_with) that the run in `folder` started from, as its metrics.json says."""
    return (read_json(Path(folder) / "metrics.json").get("started_from") or {}).get("weights")


def trained_with(folder: Path) -> str:
    """Which weights a run folder holds: the fingerprint of the training settings and the checkpoint's
    sha256, so that a retrain (--force, or after a corrupt file) that gives other weights, as a GPU may,
    makes every later result stale. Later stages record it and redo their work when it changes."""
    folder = Path(folder)
    return f"{read_json(folder / 'metrics.json')['fingerprint']}-{recorded_sha256(folder / 'checkpoint.pt')[:16]}"
