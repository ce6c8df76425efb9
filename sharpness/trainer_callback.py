"""Sharpness along a user's own Hugging Face Trainer run, as train.track measures it along the pipeline's training:
λ_max of the Hessian (and, for Adam and AdamW, of the preconditioned Hessian P^-1/2 H P^-1/2) on a fixed set of
measurement batches, before the first step and every `every` optimizer steps.

    from sharpness.trainer_callback import track_sharpness
    track_sharpness(trainer, batches, every=50)   # batches as sharpness.hessian.Hessian takes them
    trainer.train()                               # -> <output_dir>/track.json; "sharpness/..." in the trainer's logs

Each point is optimization.tracking.SharpnessTracker's (warm-started Lanczos, its convergence rule and
thresholds, P from optimization.optimizers.diagonal_preconditioner), written to track.json in the pipeline's
format after every point, so visualization.plots.tracked_sharpness_figure draws it. The points after a step are
also logged through the Trainer (TrainerControl.should_log, then on_log), so its reporters (TensorBoard, wandb, …)
and state.log_history get them as "sharpness/lambda_max", "sharpness/threshold", … at that step; the point before
the first step is in track.json only (the Trainer logs nothing at step 0). For the reporters to see the values the
callback's on_log must run before theirs: track_sharpness puts it first. A run resumed from a checkpoint
continues the points of track.json up to its step. Training does not see the measurement
(model in eval mode while measured, random vectors from generators of its own): the weights and data order are
those of a run without it. Under torch.distributed (the Trainer's DDP, torchrun) every rank measures its share of
the batches (every world_size-th) and the loss, gradient and Hessian-vector sums are all-reduced, as the pipeline's
Objective does in its collective stages: each rank gets the numbers of one process measuring them all, at a
world_size-th of the cost; every rank must be given the same batches, and rank 0 alone writes track.json.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

from config.schema import TrackConfig, TrainConfig
from optimization.optimizers import diagonal_preconditioner
from optimization.tracking import SharpnessTracker
from sharpness.hessian import Hessian
from utils import distributed
from utils.io import read_json, write_json

TRACK = TrackConfig()
NAMES = ((torch.optim.AdamW, "adamw"), (torch.optim.Adam, "adam"), (torch.optim.SGD, "sgd"))  # AdamW before Adam: a subclass
VARIANTS = ("nesterov", "dampening", "amsgrad", "maximize")  # torch.optim options that change SGD's or Adam's update
METRICS = ("lambda_max", "preconditioned_lambda_max", "trace")  # train.track.metrics' choices
LOGGED = ("lambda_max", "threshold", "preconditioned_lambda_max", "preconditioned_threshold", "trace")


def train_settings(optimizer) -> TrainConfig:
    """What the tracker's thresholds read (optimizer name, momentum, betas, eps, variants), from the Trainer's
    optimizer; an optimizer the project does not name keeps its class name and gets no threshold, nor does a
    variant of SGD or Adam whose update the limits were not derived for (nesterov, dampening, amsgrad, maximize)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    group = inner.param_groups[0]
    name = next((name for kind, name in NAMES if isinstance(inner, kind)), type(inner).__name__)
    variants = {key: group[key] for key in VARIANTS if group.get(key)}
    return TrainConfig(optimizer=name, lr=group["lr"], momentum=group.get("momentum", 0.0),
                       betas=list(group.get("betas", (0.9, 0.999))), eps=group.get("eps", 1e-8),
                       weight_decay=group.get("weight_decay", 0.0), optimizer_args=variants)


class SharpnessCallback(TrainerCallback):
    """See the module docstring. `batches` and `loss` as sharpness.hessian.Hessian takes them (token ids or a
    tokenizer's output; or any batches with a loss function); `folder` for track.json (default: the Trainer's
    output_dir); `metrics`, `iters`, `tol`, `trace_samples`, `seed` as train.track's (docs/config.md)."""

    def __init__(self, batches, every: int, folder: str | Path | None = None, *, loss=None,
                 metrics=tuple(TRACK.metrics), iters: int = TRACK.iters, tol: float = TRACK.tol,
                 trace_samples: int = TRACK.trace_samples, seed: int = TRACK.seed):
        if every < 1:
            raise ValueError(f"every must be at least 1 optimizer step, got {every}")
        if not metrics or set(metrics) - set(METRICS):
            raise ValueError(f"metrics must be some of {', '.join(METRICS)}, got {list(metrics)}")
        self.batches, self.loss, self.folder = list(batches), loss, folder
        self.cfg = TrackConfig(every=every, metrics=list(metrics), iters=iters, tol=tol, trace_samples=trace_samples,
                               seed=seed)
        self.tracker: SharpnessTracker | None = None
        self.pending: dict[str, float] = {}  # measured after a step, logged by the on_log that follows

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        path = self.path(args)
        resumed = state.global_step > 0 and path.is_file()  # a checkpoint's run: its track so far, up to its step
        points = [p for p in read_json(path)["points"] if p["step"] <= state.global_step] if resumed else []
        self.tracker = SharpnessTracker(self.cfg, train_settings(optimizer), {
            "points": points, "hvps": sum(p["hvps"] for p in points), "seconds": sum(p["seconds"] for p in points)})
        if not points or points[-1]["step"] != state.global_step:
            self.measure(args, state.global_step, model, optimizer)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.tracker.due(state.global_step):
            point = self.measure(args, state.global_step, model, optimizer)
            self.pending = {f"sharpness/{key}": point[key] for key in LOGGED if point.get(key) is not None}
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pending and logs is not None:
            logs.update(self.pending)
            state.log_history[-1].update(self.pending)  # the Trainer appended its copy before calling on_log
            self.pending = {}

    def measure(self, args, step: int, model, optimizer) -> dict:
        """One point at the model's current weights (after `step` steps), written to track.json at once."""
        was_training = model.training
        with distributed.collective():  # several ranks (DDP): each its share of the batches, the sums all-reduced
            hessian = Hessian(model, self.batches, loss=self.loss)  # puts the model in eval mode
            inner = getattr(optimizer, "optimizer", optimizer)
            preconditioner = diagonal_preconditioner(inner, list(hessian.objective.params))
            point = self.tracker.measure(step, inner.param_groups[0]["lr"], hessian.objective, preconditioner)
        model.train(was_training)
        write_json(self.path(args), {"run": args.run_name, "seed": args.seed, **self.tracker.record()})
        return point

    def path(self, args) -> Path:
        return Path(self.folder or args.output_dir) / "track.json"


def track_sharpness(trainer, batches, every: int, folder: str | Path | None = None, **options) -> SharpnessCallback:
    """A SharpnessCallback (the same arguments) added to `trainer` ahead of its other callbacks, so that the
    reporters' on_log sees its values."""
    callback = SharpnessCallback(batches, every, folder, **options)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
