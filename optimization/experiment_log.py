"""An experiment tracker for a training run (config `logging: {backend, every, project}`): learning curves,
text and figures in TensorBoard or Weights & Biases, next to the run's own files, which stay the record.

backend      writes
none         nothing
tensorboard  <folder>/tensorboard/events.out.tfevents.*; the run's config as text ("config") on a fresh start.
             A resumed run opens a new event file that purges the steps ≥ its resume step from every tag, so
             TensorBoard shows each step once, with the values of the run that finished.
wandb        <folder>/wandb/offline-run-<time>-<id>/ (offline unless WANDB_MODE says otherwise; `wandb sync`
             uploads it). The run id is a hash of the folder's path, so a resumed run continues the same run;
             wandb has no purge: steps the first attempt logged after the resume point stay in its folder.
             Texts go to the run's summary; the config is the run's config. close() hands every record to the
             wandb-core process, which writes the .wandb file a few ms later (also if this process is killed
             then); wandb.teardown(), run at this process's exit, waits for it.

Values are logged as Python floats; None is skipped, NaN and ±inf are logged as they are (both backends keep
them), so a diverged loss shows as one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from utils.errors import ConfigError, OutputError, UserError
from utils.io import make_dir, output_error

BACKENDS = ("none", "tensorboard", "wandb")
DEFAULT_PROJECT = "loss-landscape-lab"


def open_log(backend: str, folder: Path, name: str, project: str, config: dict, resume_step: int = 0) -> RunLog:
    """The tracker of one training run writing under `folder` (the run folder); `resume_step` > 0 for a run
    that continues from a checkpoint at that step."""
    folder = Path(folder)
    if backend == "none":
        return RunLog()
    if backend == "tensorboard":
        return TensorBoardLog(folder, config, resume_step)
    if backend == "wandb":
        return WandbLog(folder, name, project, config)
    raise ConfigError(f"logging.backend must be one of {', '.join(BACKENDS)}, not {backend!r}")


def _floats(values: dict, prefix: str) -> dict[str, float]:
    return {prefix + key: float(value) for key, value in values.items() if value is not None}


class RunLog:
    """The null object on purpose: backend none logs nothing, so the pipeline calls its tracker unconditionally.
    The backends override these methods."""

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        """Log `values` at `step`, each under prefix + name (prefix "train/" gives "train/loss")."""

    def text(self, tag: str, text: str) -> None:
        """Log a text (markdown)."""

    def image(self, tag: str, png_path: Path, step: int = 0) -> None:
        """Log a figure the pipeline saved as PNG."""

    def close(self) -> None:
        """Write what is pending and end the run."""

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorBoardLog(RunLog):
    def __init__(self, folder: Path, config: dict, resume_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("logging.backend tensorboard needs the tensorboard package: "
                            "pip install tensorboard==2.21.0") from None
        self.folder = folder / "tensorboard"
        # purge_step: TensorBoard drops every event at a step ≥ it that an earlier event file holds.
        self.writer = self._guarded(SummaryWriter, log_dir=str(make_dir(self.folder)), purge_step=resume_step or None)
        if not resume_step:
            self.text("config", "```json\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def _guarded(self, call, *args, **kwargs):
        """Run a writer call, turning a file error (also one the writer's thread met earlier) into one sentence."""
        try:
            return call(*args, **kwargs)
        except OSError as err:
            raise (output_error(err, self.folder)
                   or OutputError(f"cannot write the TensorBoard log in {self.folder} ({err})")) from None

    def scalars(self, step, values, prefix=""):
        for tag, value in _floats(values, prefix).items():
            self._guarded(self.writer.add_scalar, tag, value, step)
        # On disk before the next checkpoint: a killed run resumes from it and would otherwise miss these steps.
        self._guarded(self.writer.flush)

    def text(self, tag, text):
        self._guarded(self.writer.add_text, tag, text)

    def image(self, tag, png_path, step=0):
        from matplotlib.image import imread

        pixels = imread(png_path)  # floats in [0, 1]: height × width (× RGB or RGBA)
        if pixels.ndim == 3:
            self._guarded(self.writer.add_image, tag, pixels[..., :3], step, dataformats="HWC")
        else:
            self._guarded(self.writer.add_image, tag, pixels, step, dataformats="HW")

    def close(self):
        self._guarded(self.writer.close)


def wandb_run_id(folder: Path) -> str:
    """The same id for every attempt of the run in `folder`, so a resumed run continues the wandb run."""
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]


class WandbLog(RunLog):
    def __init__(self, folder: Path, name: str, project: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise UserError("logging.backend wandb needs the wandb package: pip install wandb==0.31.0") from None
        self.wandb = wandb
        # wandb falls back to the system's temporary folder, silently, when `dir` cannot be written.
        make_dir(folder)
        if not os.access(folder, os.W_OK):
            raise OutputError(f"cannot write the wandb run in {folder}: permission denied")
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            # console="off": wandb would otherwise wrap stdout, copying the pipeline's progress bars to its log.
            self.run = wandb.init(dir=str(folder), project=project or DEFAULT_PROJECT, name=name, config=config,
                                  id=wandb_run_id(folder), resume="allow",
                                  settings=wandb.Settings(console="off"))
        except (wandb.Error, OSError) as err:
            raise UserError(f"wandb could not start the run in {folder} ({err})") from None

    def scalars(self, step, values, prefix=""):
        self.run.log(_floats(values, prefix), step=step)

    def text(self, tag, text):
        # In the summary (the run's overview page): a text has no step, and wandb.log would count one.
        self.run.summary[tag] = text

    def image(self, tag, png_path, step=0):
        # wandb drops what is logged at a step behind the run's (a figure after training): log it at the run's.
        self.run.log({tag: self.wandb.Image(str(png_path))}, step=max(step, self.run.step))

    def close(self):
        self.run.finish()
