"""What an unfinished training run carries from one epoch to the next: its weights, optimizer, schedule, gradient
scaler, random state, history and budgets spent. TrainState.state_dict() is what last.pt holds and
load_state_dict() is the resume, so the two cannot drift apart field by field.

last.pt (a checkpoint of models.checkpoint) holds, beside the weights and the run's identity:
  optimizer, scheduler   their state_dicts
  rng                    this process's random state; in a torchrun job rank 0's, with every rank's under "ranks"
  history                the learning curves so far (train_loss, val_loss, …, at_step, at_seconds, at_flops)
  train_time_s, train_tokens, train_flops   the budgets spent (training seconds, tokens, FLOPs)
  started_from           model.base_run: which weights of that run this one starts from
  latent                 train.rotation: the optimizer's weights θ̃ (the model holds θ = Rθ̃)
  scaler                 train.precision fp16: the gradient scaler's state
  track                  train.track: the Hessian measured so far (optimization.tracking)
  trajectory_rows        train.trajectory: the rows of trajectory.npy written so far
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from config.schema import RunConfig
from models.checkpoint import checkpoint_dict, load_weights, read_checkpoint
from optimization.objective import flatten
from optimization.optimizers import make_optimizer
from optimization.rotation import RotatedWeights
from optimization.tracking import SharpnessTracker
from optimization.trajectory import TrajectoryRecorder
from utils import distributed
from utils.errors import CorruptFileError


def make_scheduler(optimizer, cfg, total_steps: int):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state(device: torch.device) -> dict:
    """This process's random state; in a torchrun job, rank 0's with every rank's under "ranks" (dropout draws
    differ by rank), gathered from all of them."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    states = distributed.gather_objects(state)
    return state if len(states) == 1 else {**states[0], "ranks": states}


def _set_rng_state(state: dict, device: torch.device, seed: int, epoch: int) -> None:
    """Each rank's saved random state; a rank that last.pt has none for (a job of more ranks than the one that wrote
    it) starts a stream of its own from (seed, its rank, epoch), so that no two ranks draw the same dropout masks."""
    saved = state.get("ranks", [state])
    here = distributed.rank() if distributed.splits() else 0
    if here >= len(saved):
        torch.manual_seed(distributed.rank_seed(seed, epoch))
        return
    torch.set_rng_state(saved[here]["torch"])
    if device.type == "cuda" and "cuda" in saved[here]:
        torch.cuda.set_rng_state(saved[here]["cuda"], device)


@dataclass(frozen=True)
class RunIdentity:
    """What every checkpoint of the run names: its settings' fingerprint, its tokenizer (a hub id or the folder
    beside the checkpoint), for a LoRA run the init.pt holding its frozen base, and for a run of model.base_run
    the weights of that run it starts from."""
    fingerprint: str
    tokenizer_ref: str
    base: Path | None
    started_from: str | None


class TrainState:
    """The resumable state of one run's training, as a fresh run starts: the model's weights as built, epoch 0,
    nothing spent. The optimizer updates `trainable`: the model's trainable weights, or θ̃ under train.rotation."""

    def __init__(self, run: RunConfig, model, device: torch.device, total_steps: int, identity: RunIdentity):
        self.run, self.model, self.device, self.identity = run, model, device, identity
        self.rotated = None  # train.rotation: the optimizer sees θ̃, the model θ = Rθ̃
        if run.train.rotation != "none":
            self.rotated = RotatedWeights(model, run.train.rotation, run.train.rotation_seed)
        self.trainable = [p for p in model.parameters() if p.requires_grad] if self.rotated is None \
            else self.rotated.latent
        self.optimizer = make_optimizer(self.trainable, run.train)
        self.scheduler = make_scheduler(self.optimizer, run.train, total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=run.train.precision == "fp16")  # fp16 grads underflow
        self.tracker = SharpnessTracker(run.train.track, run.train) if run.train.track.every else None
        self.recorder: TrajectoryRecorder | None = None  # opened by open_trajectory, on the rank that writes
        self.trajectory_rows: int | None = None  # the rows last.pt counts in trajectory.npy; None: a fresh file
        # at_step, at_seconds, at_flops: the optimizer steps, training seconds and FLOPs spent at each validation
        self.history = {"train_loss": [], "val_loss": [], "val_perplexity": [], "lr": [], "step_loss": [],
                        "at_step": [], "at_seconds": [], "at_flops": []}
        self.epoch = 0  # epochs completed
        self.train_time, self.train_tokens, self.train_flops = 0.0, 0, 0

    def state_dict(self) -> dict:
        """last.pt's dict (rank 0's; every rank of a torchrun job calls it: the random states are gathered)."""
        along = {}
        if self.tracker is not None:
            along["track"] = self.tracker.state_dict()
        if self.recorder is not None:
            along["trajectory_rows"] = self.recorder.written
        return checkpoint_dict(
            self.model, self.run, self.epoch, self.identity.tokenizer_ref, self.identity.fingerprint,
            base=self.identity.base, **along, started_from=self.identity.started_from,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), rng=_rng_state(self.device),
            history=self.history, train_time_s=self.train_time, train_tokens=self.train_tokens,
            train_flops=self.train_flops,
            **({} if self.rotated is None else {"latent": [t.detach().cpu() for t in self.rotated.latent]}),
            **({"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}))

    def load_state_dict(self, ckpt: dict, path: Path) -> None:
        """Continue from last.pt's dict (read from `path`), as the process that wrote it would have continued."""
        load_weights(self.model, ckpt, path)
        if self.rotated is not None:
            with torch.no_grad():
                for latent, saved in zip(self.rotated.latent, ckpt["latent"]):
                    latent.copy_(saved)
            self.rotated.push()
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.history = ckpt["history"]
        self.train_time, self.train_tokens, self.epoch = ckpt["train_time_s"], ckpt["train_tokens"], ckpt["epoch"]
        self.train_flops = ckpt.get("train_flops", 0)  # a last.pt of an older version counted none
        _set_rng_state(ckpt["rng"], self.device, self.run.seed, self.epoch)
        if self.tracker is not None:
            self.tracker = SharpnessTracker(self.run.train.track, self.run.train, ckpt["track"])
        if self.run.train.trajectory.every:
            self.trajectory_rows = ckpt["trajectory_rows"]

    def open_trajectory(self, run_dir: Path, total_steps: int) -> CorruptFileError | None:
        """train.trajectory, on the rank that writes: trajectory.npy created for a fresh run, or opened at the rows
        last.pt counts; the CorruptFileError of a trajectory.npy that does not fit the run (which then starts over)."""
        if not (self.run.train.trajectory.every and distributed.writes()):  # in a torchrun job, rank 0 records
            return None
        weights = [p for p in self.model.parameters() if p.requires_grad]
        if self.trajectory_rows is None:
            init = flatten(weights).cpu()
        else:  # θ₀ from init.pt
            state = read_checkpoint(run_dir / "init.pt")["model"]
            init = flatten([state[name] for name, p in self.model.named_parameters() if p.requires_grad])
        try:
            self.recorder = TrajectoryRecorder(run_dir, self.run.train.trajectory.every, total_steps, weights, init,
                                               self.trajectory_rows)
        except CorruptFileError as err:
            return err
        return None
