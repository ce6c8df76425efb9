"""What the report reads back from an experiment's folder (report.reader fills it; report.summary, report.tables
and report.sections read it), and how a missing or damaged result is recorded with the stage that makes it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import CorruptFileError
from utils.io import read_json

# The stages of an experiment whose experiment.json has an empty `stages` (written before the pipeline recorded its
# default stages there): run.py's defaults then.
UNRECORDED_STAGES = ("train", "sharpness", "landscape", "report")


@dataclass
class ExperimentResults:
    name: str
    folder: Path
    runs: list[str]                      # in config order
    seeds: dict[str, list[int]]          # run -> seeds whose folder holds the training of the manifest's config
    configs: dict[str, dict]
    listed_seeds: list[int] = field(default_factory=list)  # the manifest's seeds: a run's values over them
    trained_with: dict[str, dict[int, str]] = field(default_factory=dict)  # run -> seed -> layout.trained_with
    metrics: dict[str, dict[int, dict]] = field(default_factory=dict)      # run -> seed -> metrics.json
    sharpness: dict[str, dict[int, dict]] = field(default_factory=dict)    # run -> seed -> sharpness.json
    sharpness_merged: dict[str, dict[int, dict]] = field(default_factory=dict)  # LoRA runs: sharpness_merged.json
    prune: dict[str, dict[int, dict]] = field(default_factory=dict)        # LoRA runs: prune.json
    geometry: dict[str, dict[int, dict]] = field(default_factory=dict)     # run -> seed -> geometry.json
    density: dict[str, dict[int, dict]] = field(default_factory=dict)      # run -> seed -> density.json
    track: dict[str, dict[int, dict]] = field(default_factory=dict)        # run -> seed -> track.json
    stages: list[str] = field(default_factory=lambda: list(UNRECORDED_STAGES))  # the experiment's: only their files are missing
    surfaces: dict[str, dict[int, dict]] = field(default_factory=dict)     # run -> seed -> landscape_2d.npz (finished)
    init_to_final: dict[str, dict[int, dict]] = field(default_factory=dict)  # run -> seed -> interpolation.json
    interpolation: dict | None = None    # <experiment>/interpolation.json: alphas and the pairs of current checkpoints
    incomparable: list[str] = field(default_factory=list)  # "a → b, seed s": pairs whose runs see other texts
    search: dict | None = None           # <experiment>/search.json: the searches' studies and trials
    correlation: dict | None = None      # <experiment>/correlation.json, while computed from the current results
    figures: dict[str, Path] = field(default_factory=dict)  # stem -> PNG drawn from the current data
    missing: list[str] = field(default_factory=list)
    redo: list[str] = field(default_factory=list)           # the stages that make what is missing
    left_out: list[dict] = field(default_factory=list)      # {"run", "seed", "why"}: listed, but not trained as listed
    ignored: list[str] = field(default_factory=list)        # what is on disk but not used, and why
    corrupt: list[tuple[CorruptFileError, str]] = field(default_factory=list)  # damaged files, the stage to redo

    def lack(self, what: str, stage: str) -> None:
        """A result that is missing or not current, which running `stage` makes."""
        self.missing.append(what)
        if stage not in self.redo:
            self.redo.append(stage)

    def absent(self, stage: str, what: str) -> None:
        """A result that was never made: missing if the experiment runs `stage`, else not expected."""
        if stage in self.stages:
            self.lack(what, stage)

    def read(self, path: Path, stage: str, reader=read_json):
        """`reader(path)`, or None for a corrupt file, which is recorded with the stage that writes it."""
        try:
            return reader(path)
        except CorruptFileError as err:
            self.corrupt.append((err, stage))
            self.lack(f"{path.relative_to(self.folder)} is corrupt (run the {stage} stage again)", stage)
            return None
