"""Setting up one run's training: its starting model and tokenizer, its data, and its TrainState, fresh (the run
folder emptied, init.pt written) or resumed from last.pt (optimization.train_state); what the steps then run
through (the forward of DDP or torch.compile, autocast, the FLOP counter, the log)."""

from __future__ import annotations

import functools
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from config.schema import RunConfig
from data.batches import Batch, fixed_batches, to_device, tokenize
from data.corpus import Texts, load_texts
from data.measurement import FixedSet, measurement_set
from models.adapters import add_adapter, is_adapted
from models.checkpoint import TOKENIZER_DIR, load_trained, read_checkpoint, save_checkpoint, tokenizer_identity
from models.models import build_model, build_tokenizer, load_tokenizer, tokenizer_is_hub_id
from models.runs import base_folder, base_weights, training_fingerprint
from optimization.cost import step_flops
from optimization.evaluation import evaluate
from optimization.experiment_log import RunLog, open_log
from optimization.measured_run import shared_measurement_set
from optimization.objective import Objective
from optimization.optimizers import diagonal_preconditioner
from optimization.train_state import RunIdentity, TrainState
from utils import distributed
from utils.device import PeakMemory
from utils.errors import CorruptFileError, UserError
from utils.io import atomic_dir, make_dir


def _starting_point(run: RunConfig, run_dir: Path, train_texts: list[str], resuming: bool):
    """The run's tokenizer, how checkpoints refer to it (a hub id, or the folder saved with the run), and its model
    before the first step: built as model.init says, or the trained model of model.base_run (merged, if that run
    has an adapter) with its tokenizer."""
    if run.model.base_run:
        base = load_trained(base_folder(run, run_dir) / "checkpoint.pt", space="merged")
        ref = base.checkpoint.get("tokenizer") or run.model.name
        return base.tokenizer, ref, base.model.train()
    saved = run_dir / TOKENIZER_DIR
    if tokenizer_is_hub_id(run.model):
        tokenizer, ref = build_tokenizer(run.model, train_texts), run.model.tokenizer or run.model.name
    elif resuming and saved.is_dir():
        tokenizer, ref = load_tokenizer(str(saved)), TOKENIZER_DIR
    else:
        tokenizer, ref = build_tokenizer(run.model, train_texts), TOKENIZER_DIR
    return tokenizer, ref, build_model(run.model, tokenizer, run.seed)


def _flop_counter(model, run: RunConfig, label: str) -> Callable[[int, int], int] | None:
    """The FLOPs of one training step by batch shape (counted once per sequence length: a step of B sequences
    costs B times one), or None where the model cannot be counted on the meta device (then no FLOPs and MFU are
    recorded, and train.budget.flops is refused)."""
    of_sequence = functools.lru_cache(maxsize=None)(lambda length: step_flops(model, 1, length))

    def flops_of_step(size: int, length: int) -> int:
        return size * of_sequence(length)

    try:
        of_sequence(1)
    except ValueError as err:
        if run.train.budget.flops:
            raise UserError(f"{label}: train.budget.flops needs the FLOP count, but {err}; use train.budget.seconds") from None
        print(f"{label}: note: no FLOP count ({err}); FLOPs and MFU are not recorded")
        return None
    return flops_of_step


@dataclass
class TrainData:
    """The run's texts, tokenized and batched: what the epochs and evaluations read."""
    texts: Texts
    train_seqs: list[list[int]]
    lengths: list[int]
    val_batches: list[Batch]
    test_batches: list[Batch]
    pad_id: int
    steps_per_epoch: int
    total_steps: int


def _tokenized(run: RunConfig, texts: Texts, tokenizer) -> TrainData:
    pad_id = tokenizer.eos_token_id
    train_seqs = tokenize(texts.train, tokenizer, run.data.max_length)
    val_batches = fixed_batches(tokenize(texts.validation, tokenizer, run.data.max_length), run.train.eval_batch_size, pad_id)
    test_batches = fixed_batches(tokenize(texts.test, tokenizer, run.data.max_length), run.train.eval_batch_size, pad_id)
    steps_per_epoch = math.ceil(len(train_seqs) / run.train.batch_size)
    return TrainData(texts, train_seqs, [len(s) for s in train_seqs], val_batches, test_batches, pad_id, steps_per_epoch,
                 steps_per_epoch * run.train.epochs)


LIVE_TRACK = ("lambda_max", "threshold", "preconditioned_lambda_max", "preconditioned_threshold", "trace")

@dataclass
class Training:
    """One invocation's training of a run: its data, its TrainState and what the steps run through (the forward
    of DDP or torch.compile, autocast, the FLOP counter), the log and the peak-memory probe."""
    run: RunConfig
    run_dir: Path
    label: str
    device: torch.device
    data: TrainData
    state: TrainState
    flops_of_step: Callable[[int, int], int] | None  # None: no FLOP count for this model
    wall_start: float
    track_batches: list[Batch] | None = None  # train.track: the measurement set, on the device
    log: RunLog | None = None
    memory: PeakMemory | None = None
    autocast: torch.autocast | None = None
    ranks: int = 1  # the processes that share every global batch
    forward: Callable | None = None

    def along_the_way(self, step: int) -> float:
        """Track the Hessian and record the weights at `step` (optimizer steps so far) where asked; the seconds."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's queued kernels are training time
        start = time.perf_counter()
        state = self.state
        if state.tracker is not None and state.tracker.due(step):
            objective = Objective(state.model, self.track_batches, hvp_mode=self.run.sharpness.hvp,
                                  graph_memory=self.run.sharpness.graph_memory)
            latent = objective.params if state.rotated is None else state.rotated.latent
            point = state.tracker.measure(step, state.scheduler.get_last_lr()[0], objective,
                                          diagonal_preconditioner(state.optimizer, latent),
                                          None if state.rotated is None else state.rotated.rotation)
            # live in TensorBoard/wandb beside the loss, on its step axis (track.json holds every field)
            self.log.scalars(step, {key: point.get(key) for key in LIVE_TRACK}, prefix="track/")
            state.model.train()
        if state.recorder is not None:
            state.recorder.record(step)
        return time.perf_counter() - start


def base_run_weights(run: RunConfig, run_dir: Path, label: str) -> str | None:
    """model.base_run: which weights of that run this one starts from (models.runs.base_weights)."""
    if not run.model.base_run:
        return None
    started = base_weights(run, run_dir)
    if started is None:
        raise UserError(f"{label}: model.base_run {run.model.base_run}: {base_folder(run, run_dir)} holds no "
                        "trained run; train it first (a base run trains before the runs that start from it)")
    return started


def _unfinished(run: RunConfig, run_dir: Path, label: str, started: str | None) -> dict | None:
    """last.pt of an unfinished training of this config from the same starting weights; None: start over."""
    last = run_dir / "last.pt"
    if not last.is_file():
        return None
    try:
        resume = read_checkpoint(last)
    except CorruptFileError as err:
        print(f"{label}: warning: {err}; starting over")
        return None
    if resume.get("fingerprint") != training_fingerprint(run):
        print(f"{label}: the config changed since the unfinished run; starting over")
        return None
    if resume.get("started_from") != started:
        print(f"{label}: its base run {run.model.base_run} holds other weights now; starting over")
        return None
    return resume


def set_up(run: RunConfig, run_dir: Path, label: str, device: torch.device, started: str | None,
           force: bool) -> Training | None:
    """The model, data and TrainState, resumed from last.pt (unless `force`) or fresh (the folder emptied, init.pt
    written); None when trajectory.npy does not fit last.pt (the run then starts over)."""
    resume = None if force else _unfinished(run, run_dir, label, started)
    distributed.sync()  # torchrun: every rank has read the folder before rank 0 changes it
    wall_start = time.perf_counter()
    texts = load_texts(run.data)
    tokenizer, tokenizer_ref, model = _starting_point(run, run_dir, texts.train, resuming=resume is not None)
    if run.model.adapter.type != "none":
        model = add_adapter(model, run.model.adapter, run.seed)
    model = model.to(device)
    flops_of_step = _flop_counter(model, run, label)
    if resume is None:
        if run_dir.exists() and distributed.writes():
            shutil.rmtree(run_dir)  # a fresh start: nothing stale (checkpoints, measurements) may survive
        make_dir(run_dir)
        if tokenizer_ref == TOKENIZER_DIR:
            with atomic_dir(run_dir / TOKENIZER_DIR) as tmp:
                tokenizer.save_pretrained(str(tmp))
    data = _tokenized(run, texts, tokenizer)
    base = run_dir / "init.pt" if is_adapted(model) else None  # a LoRA run's frozen weights live in init.pt
    state = TrainState(run, model, device, data.total_steps,
                       RunIdentity(training_fingerprint(run), tokenizer_ref, base, started))
    if resume is not None:
        state.load_state_dict(resume, run_dir / "last.pt")
        print(f"{label}: resuming after epoch {state.epoch} of {run.train.epochs}")
    else:
        save_checkpoint(run_dir / "init.pt", model, run, 0, tokenizer_ref, state.identity.fingerprint)
        torch.manual_seed(distributed.rank_seed(run.seed))  # dropout draws do not depend on how the model was built
        state.history["init_val_loss"] = evaluate(model, data.val_batches, device)
    t = Training(run, run_dir, label, device, data, state, flops_of_step, wall_start)
    # Along the way (train.track, train.trajectory): measured between steps, outside the training time.
    if run.train.track.every:
        t.track_batches = [to_device(b, device) for b in _track_set(run, run_dir, texts, tokenizer, tokenizer_ref).batches]
    damaged = state.open_trajectory(run_dir, data.total_steps)
    if distributed.any_rank(damaged is not None):  # torchrun: every rank starts over with rank 0
        print(f"{label}: warning: {damaged}; starting over")
        return None
    # The log first: the tracked point at step 0 is logged too. torchrun: rank 0 logs.
    t.log = open_log(run.logging.backend if distributed.writes() else "none", t.run_dir, t.label, run.logging.project,
                     run.to_dict(), resume_step=t.state.epoch * t.data.steps_per_epoch)
    if resume is None:
        t.along_the_way(0)
    _ready_to_step(t)
    return t


def _track_set(run: RunConfig, run_dir: Path, texts: Texts, tokenizer, tokenizer_ref: str) -> FixedSet:
    """The measurement set train.track measures on: the later stages' (shared_measurement_set), built once per
    command for both. A torchrun rank that does not write the run folder builds its own: the saved tokenizer that
    names the set is rank 0's, and may not be written yet."""
    if not distributed.writes():
        return measurement_set(texts.train, run.sharpness, tokenizer, run.data.max_length)
    return shared_measurement_set(run, texts.train, tokenizer, tokenizer_identity(tokenizer_ref, run_dir, run))


def _ready_to_step(t: Training) -> None:
    """The peak-memory probe, autocast, and the forward the steps run (DDP's in a torchrun job)."""
    run, device = t.run, t.device
    t.memory = PeakMemory(device)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.train.precision)
    t.autocast = torch.autocast(device.type, dtype=low or torch.float32, enabled=low is not None)
    # In a torchrun job each rank takes its share of every global batch; DDP averages the gradients.
    t.ranks = distributed.world_size() if distributed.splits() else 1
    model = t.state.model
    t.forward = model if t.ranks == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    if run.train.compile:
        t.forward = torch.compile(t.forward)  # evaluation and Hessian work use the model itself
