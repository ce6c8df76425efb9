"""The skeleton of every measuring stage (sharpness, geometry, prune, landscape): for each trained (run, seed), skip
the results that are current, open the trained run once for the others, measure, and write each result with the
same provenance header (run, seed, fingerprint, checkpoint, settings).

A result is current while its file records the weights it was measured on (`checkpoint`: models.runs.trained_with,
the training's fingerprint and the checkpoint's checksum) and the stamp of the settings it depends on. Those are
whole config sections (config.schema.section_settings), so a setting added to a section makes every result measured
without it stale. A new measurement plugs in by naming its results and writing its measurement:

    def curvature_stage(experiment, output, force):
        def plan(trained):
            return [trained.result("curvature.json", section_settings(trained.run, "curvature"), "curvature")]

        def measure(trained, todo):
            opened = trained.open()
            todo[0].write({"value": curvature(opened.objective)})

        measure_runs(measured_runs(experiment, output), force, plan, measure)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from config.schema import Experiment, RunConfig, measurement_set_settings, section_settings
from data.corpus import Texts, load_texts
from data.measurement import FixedSet, measurement_set
from models.checkpoint import TrainedModel, load_trained
from models.runs import run_label, stage_command, trained_runs, trained_with
from optimization.objective import Objective
from utils.device import resolve_device
from utils.io import fingerprint, read_json, read_own_output, write_json

# The sharpness section's parts that ask for files of their own, each stamped on its own: sharpness.density
# (density.json) and sharpness.merged (sharpness_merged.json). No other result depends on them.
OWN_FILES = ("density", "merged")


def sharpness_settings(run: RunConfig) -> dict:
    """The sharpness section but its parts with files of their own (OWN_FILES): what every result measured on the
    sharpness measurement set with the sharpness solver settings depends on (sharpness.json, geometry, pruning)."""
    return {key: value for key, value in section_settings(run, "sharpness")["sharpness"].items() if key not in OWN_FILES}


@dataclass
class Result:
    """One output file of a trained run, measured on the weights `checkpoint` with `settings` (what it depends on
    besides the weights, recorded in the file as they are stamped)."""
    path: Path
    settings: dict
    run: RunConfig
    checkpoint: str
    what: str    # names the result in messages: "sharpness", "2D landscape"
    label: str   # the run's: models.runs.run_label
    read: Callable[[Path], dict] = read_json
    complete: Callable[[dict], bool] = field(default=lambda saved: True)  # whether a saved file is finished

    @property
    def stamp(self) -> str:
        return fingerprint({"settings": self.settings, "checkpoint": self.checkpoint})

    def saved(self, force: bool) -> dict | None:
        """The file as written, when it was measured with these settings on these weights (finished or not); None
        when forced, absent, corrupt (deleted with a warning) or stale."""
        done = None if force else read_own_output(self.path, self.read, self.label)
        # a file of an older version records no checkpoint: measured again
        same = done is not None and (str(done.get("fingerprint")), str(done.get("checkpoint"))) == (self.stamp, self.checkpoint)
        return done if same else None

    def current(self, force: bool) -> bool:
        """Whether the file holds this result, finished (said when so)."""
        saved = self.saved(force)
        if saved is None or not self.complete(saved):
            return False
        print(f"{self.label}: {self.what} already measured with these settings; skipping (--force redoes it)")
        return True

    def write(self, body: dict) -> None:
        write_json(self.path, {"run": self.run.name, "seed": self.run.seed, "fingerprint": self.stamp,
                               "checkpoint": self.checkpoint, "settings": self.settings, **body})


@dataclass
class Opened:
    """A trained model with the objective on the sharpness measurement set."""
    trained: TrainedModel
    measurement: FixedSet
    objective: Objective


@dataclass
class TrainedRun:
    """A trained (run, seed) to measure."""
    run: RunConfig
    folder: Path
    label: str
    checkpoint: str  # which weights: models.runs.trained_with
    retrain: str     # the command that trains the run again

    def result(self, name: str, settings: dict, what: str, **how) -> Result:
        return Result(self.folder / name, settings, self.run, self.checkpoint, what, self.label, **how)

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self.run.device)

    @cached_property
    def texts(self) -> Texts:
        return load_texts(self.run.data)

    def load(self, space: str = "adapter", name: str = "checkpoint.pt") -> TrainedModel:
        """The model of `name` (checkpoint.pt, init.pt) on the run's device; a LoRA run's in `space`."""
        return load_trained(self.folder / name, self.device, space)

    def measurement_set(self, trained: TrainedModel) -> FixedSet:
        """The texts every Hessian measurement sees, tokenized for `trained` (shared_measurement_set)."""
        return shared_measurement_set(self.run, self.texts.train, trained.tokenizer, trained.tokenizer_identity)

    def open(self, space: str = "adapter") -> Opened:
        trained = self.load(space)
        measurement = self.measurement_set(trained)
        return Opened(trained, measurement, Objective(trained.model, measurement.batches, hvp_mode=self.run.sharpness.hvp,
                                                           graph_memory=self.run.sharpness.graph_memory))


_measurement_sets: dict[str, FixedSet] = {}  # shared_measurement_set's, by what picks and tokenizes the texts


def shared_measurement_set(run: RunConfig, train_texts: list[str], tokenizer, tokenizer_identity: str) -> FixedSet:
    """The run's measurement set (data.measurement.measurement_set) from its data's training texts: built once per
    command for the runs, the stages and the tracked trainings (train.track) that share the data, the set's settings
    and the tokenizer (`tokenizer_identity`: models.checkpoint.tokenizer_identity)."""
    key = fingerprint({"data": {**asdict(run.data), "order": None},  # the training order picks no texts
                       "set": measurement_set_settings(run), "tokenizer": tokenizer_identity})
    if key not in _measurement_sets:
        _measurement_sets[key] = measurement_set(train_texts, run.sharpness, tokenizer, run.data.max_length)
    return _measurement_sets[key]


def measured_runs(experiment: Experiment, output: Path) -> list[TrainedRun]:
    """Every trained (run, seed) of the experiment (models.runs.trained_runs: all trained and intact)."""
    return [TrainedRun(run, folder, run_label(experiment, run), trained_with(folder),
                       stage_command(experiment, output, "train", run))
            for run, folder in trained_runs(experiment, output)]


def measure_runs(runs: list[TrainedRun], force: bool, plan: Callable[[TrainedRun], list[Result]],
                 measure: Callable[[TrainedRun, list[Result]], None]) -> None:
    """For each run, its results (`plan`) and `measure(run, todo)` with those not current; the accelerator's cached
    memory is handed back after each run, whose model and objective `measure` held."""
    for trained in runs:
        todo = [result for result in plan(trained) if not result.current(force)]
        if todo:
            measure(trained, todo)
            if trained.device.type == "cuda":
                torch.cuda.empty_cache()
