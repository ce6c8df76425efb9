"""Fine-tune (or train from scratch) one run for one seed, with exact resume.

Files in the run folder <output>/<experiment>/<run>/seed-<seed>/:
  init.pt         the weights before the first step
  last.pt         written after every epoch while the run is unfinished: model, optimizer, scheduler,
                  RNG state, history and, for a rotated run (train.rotation), the optimizer's weights θ̃;
                  an interrupted run continues from it with bit-identical results on CPU (the data
                  order is a pure function of seed and epoch)
  checkpoint.pt   the final weights (last.pt is then removed)
  metrics.json    learning curves, test loss, cost (optimization.cost: steps, tokens, the job's FLOPs,
                  utilisation per device, memory, seconds), the devices it ran on (world_size: a torchrun
                  job's ranks) and provenance
  track.json      with train.track: the Hessian measured along training (optimization.tracking)
  trajectory.npy  with train.trajectory: θ − θ₀ every N steps, float16 (optimization.trajectory), and
                  trajectory.json, the steps of its rows
  tokenizer/      the tokenizer, when it is not a hub id
"""

from __future__ import annotations

import functools
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from data.batches import Batch, batches_in_order, count_targets, epoch_order, fixed_batches, to_device, tokenize
from data.corpus import load_texts
from data.measurement import measurement_set
from models.adapters import add_adapter, is_adapted
from models.checkpoint import TOKENIZER_DIR, load_trained, load_weights, read_checkpoint, save_checkpoint
from models.models import build_model, build_tokenizer, load_tokenizer, tokenizer_is_hub_id
from optimization.cost import device_peak_flops, mfu, step_flops
from optimization.evaluation import evaluate, perplexity, summed_token_loss
from optimization.experiment_log import open_log
from optimization.objective import Objective, flatten
from optimization.optimizers import diagonal_preconditioner, make_optimizer
from optimization.rotation import RotatedWeights
from optimization.tracking import SharpnessTracker
from optimization.trajectory import TrajectoryRecorder
from utils import distributed
from config.schema import RunConfig
from utils.device import PeakMemory, device_name, resolve_device
from utils.errors import CorruptFileError, DivergedError, UserError
from utils.io import atomic_dir, make_dir, read_json, remove, verify, versions, write_json
from models.runs import TRAJECTORY, TRAJECTORY_INDEX, base_folder, base_weights, started_from, training_fingerprint
from utils.progress import progress


def is_trained(run: RunConfig, run_dir: Path, label: str = "") -> bool:
    """Whether run_dir holds the finished training of this config, intact. Only the train stage writes metrics.json,
    init.pt, checkpoint.pt, tokenizer/ and what it measures along the way (track.json, the trajectory), so any of them
    missing, corrupt, or (track.json) of another training counts as not trained, and the run is trained again."""
    metrics, weights = run_dir / "metrics.json", [run_dir / "init.pt", run_dir / "checkpoint.pt"]
    track, (rows, steps) = run_dir / "track.json", (run_dir / TRAJECTORY, run_dir / TRAJECTORY_INDEX)
    along = ([track] if run.train.track.every else []) + ([rows, steps] if run.train.trajectory.every else [])
    absent = [path.name for path in [metrics, *weights, *along] if not path.is_file()]
    if absent:
        if metrics.is_file():  # a finished run that lost a file, not one that never finished
            print(f"{label}: {', '.join(absent)} missing; training again")
        return False
    try:
        trained = read_json(metrics).get("fingerprint")
        if trained != training_fingerprint(run):
            return False
        if run.model.base_run and started_from(run_dir) != base_weights(run, run_dir):
            print(f"{label}: its base run {run.model.base_run} holds other weights now; training again")
            return False
        for path in weights + [run_dir / TOKENIZER_DIR] + ([rows] if rows in along else []):
            if path.exists():
                verify(path)
        if steps in along:
            read_json(steps)
        if track in along and read_json(track).get("fingerprint") != trained:
            print(f"{label}: {track} was measured along another training; training again")
            return False
    except CorruptFileError as err:
        print(f"{label}: warning: {err}; training again")
        return False
    return True


def _flat_init(model, init_path: Path) -> torch.Tensor:
    """θ₀ of a resumed run, flat over the model's trainable weights, from init.pt."""
    state = read_checkpoint(init_path)["model"]
    return flatten([state[name] for name, p in model.named_parameters() if p.requires_grad])


def _weights_and_distance(model, init_path: Path) -> dict:
    """‖θ‖₂ and ‖θ − θ₀‖₂ over the trained weights (a LoRA run's adapter): two of Jiang et al.'s (2020)
    generalization measures."""
    init = read_checkpoint(init_path)["model"]
    trained = [(name, p.detach()) for name, p in model.named_parameters() if p.requires_grad]
    norm = math.sqrt(sum(float(p.double().pow(2).sum()) for _, p in trained))
    distance = math.sqrt(sum(float((p.double() - init[name].to(p.device).double()).pow(2).sum()) for name, p in trained))
    return {"weight_norm": norm, "distance_from_init": distance}


def make_scheduler(optimizer, cfg, total_steps: int):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


MIXED_PRECISION_DEVICES = ("cuda",)  # where train.precision bf16 and fp16 run (CPU autocast is slow)


def rank_shares(batch: Batch, ranks: int) -> list[Batch]:
    """The global batch split into `ranks` shares (every ranks-th text, from each rank), each trimmed to its
    longest text; a share may be empty when the batch has fewer texts than there are ranks."""
    if ranks == 1:
        return [batch]
    shares = []
    for rank in range(ranks):
        share = {key: value[rank::ranks] for key, value in batch.items()}
        longest = int(share["attention_mask"].sum(dim=1).max()) if len(share["attention_mask"]) else 0
        shares.append({key: value[:, :longest] for key, value in share.items()})
    return shares


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


def train_run(run: RunConfig, run_dir: Path, force: bool = False, label: str = "",
              stop_after: Callable[[int, float], bool] | None = None) -> dict:
    """Train one run into `run_dir` (resuming or skipping as appropriate); return its metrics.
    `stop_after(epoch, val_loss)`, asked after each epoch's validation, may end training there (a search's
    pruner): the run is then finished early, and metrics.json says so under "pruned"."""
    run_dir = Path(run_dir)
    label = label or f"{run.name}/seed-{run.seed}"
    fingerprint = training_fingerprint(run)
    if not force and is_trained(run, run_dir, label):
        print(f"{label}: already trained with this config; skipping (--force retrains)")
        return read_json(run_dir / "metrics.json")

    started = None  # model.base_run: which weights of that run this one starts from (layout.trained_with)
    if run.model.base_run:
        started = base_weights(run, run_dir)
        if started is None:
            raise UserError(f"{label}: model.base_run {run.model.base_run}: {base_folder(run, run_dir)} holds no "
                            "trained run; train it first (a base run trains before the runs that start from it)")
    device = resolve_device(run.device)
    if run.train.precision != "fp32" and device.type not in MIXED_PRECISION_DEVICES:
        raise UserError(f"{label}: train.precision {run.train.precision} needs a CUDA device (got {device}); "
                        "use fp32 on CPU")

    last = run_dir / "last.pt"
    resume = None
    if last.is_file() and not force:
        try:
            resume = read_checkpoint(last)
        except CorruptFileError as err:
            print(f"{label}: warning: {err}; starting over")
        if resume is not None and resume.get("fingerprint") != fingerprint:
            print(f"{label}: the config changed since the unfinished run; starting over")
            resume = None
        if resume is not None and resume.get("started_from") != started:
            print(f"{label}: its base run {run.model.base_run} holds other weights now; starting over")
            resume = None

    distributed.sync()  # torchrun: every rank has read the folder before rank 0 changes it
    wall_start = time.perf_counter()
    texts = load_texts(run.data)
    tokenizer, tokenizer_ref, model = _starting_point(run, run_dir, texts.train, resuming=resume is not None)
    if run.model.adapter.type != "none":
        model = add_adapter(model, run.model.adapter, run.seed)
    model = model.to(device)
    base = run_dir / "init.pt" if is_adapted(model) else None  # a LoRA run's frozen weights live in init.pt
    flops_of_step = functools.lru_cache(maxsize=None)(lambda size, length: step_flops(model, size, length))  # by shape
    try:
        flops_of_step(1, 1)
        counted = True
    except ValueError as err:  # the analytic count knows GPT-2's blocks only
        if run.train.budget.flops:
            raise UserError(f"{label}: train.budget.flops needs the FLOP count, but {err}; use train.budget.seconds") from None
        print(f"{label}: note: no FLOP count ({err}); FLOPs and MFU are not recorded")
        counted = False
    if resume is None:
        if run_dir.exists() and distributed.writes():
            shutil.rmtree(run_dir)  # a fresh start: nothing stale (checkpoints, measurements) may survive
        make_dir(run_dir)
        if tokenizer_ref == TOKENIZER_DIR:
            with atomic_dir(run_dir / TOKENIZER_DIR) as tmp:
                tokenizer.save_pretrained(str(tmp))
    pad_id = tokenizer.eos_token_id
    train_seqs = tokenize(texts.train, tokenizer, run.data.max_length)
    lengths = [len(s) for s in train_seqs]
    val_batches = fixed_batches(tokenize(texts.validation, tokenizer, run.data.max_length), run.train.eval_batch_size, pad_id)
    test_batches = fixed_batches(tokenize(texts.test, tokenizer, run.data.max_length), run.train.eval_batch_size, pad_id)

    steps_per_epoch = math.ceil(len(train_seqs) / run.train.batch_size)
    total_steps = steps_per_epoch * run.train.epochs
    if resume is not None:
        load_weights(model, resume, last)
    rotated = None  # train.rotation: the optimizer sees θ̃, the model θ = Rθ̃
    if run.train.rotation != "none":
        rotated = RotatedWeights(model, run.train.rotation, run.train.rotation_seed,
                                 latent=None if resume is None else resume["latent"])
    trainable = [p for p in model.parameters() if p.requires_grad] if rotated is None else rotated.latent
    optimizer = make_optimizer(trainable, run.train)
    scheduler = make_scheduler(optimizer, run.train, total_steps)
    # at_step, at_seconds, at_flops: the optimizer steps, training seconds and FLOPs spent at each validation
    history = {"train_loss": [], "val_loss": [], "val_perplexity": [], "lr": [], "step_loss": [], "at_step": [],
               "at_seconds": [], "at_flops": []}
    train_time, train_tokens, train_flops, start_epoch = 0.0, 0, 0, 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history = resume["history"]
        train_time, train_tokens, start_epoch = resume["train_time_s"], resume["train_tokens"], resume["epoch"]
        train_flops = resume.get("train_flops", 0)  # a last.pt of an older version counted none
        _set_rng_state(resume["rng"], device, run.seed, start_epoch)
        print(f"{label}: resuming after epoch {start_epoch} of {run.train.epochs}")
    else:
        save_checkpoint(run_dir / "init.pt", model, run, 0, tokenizer_ref, fingerprint)
        torch.manual_seed(distributed.rank_seed(run.seed))  # dropout draws do not depend on how the model was built
        history["init_val_loss"] = evaluate(model, val_batches, device)

    # Along the way (train.track, train.trajectory): measured between steps, outside the training time.
    tracker, track_batches, recorder = None, None, None
    if run.train.track.every:
        tracker = SharpnessTracker(run.train.track, run.train, None if resume is None else resume["track"])
        track_batches = [to_device(b, device) for b in
                         measurement_set(texts.train, run.sharpness, tokenizer, run.data.max_length).batches]
    damaged = None
    if run.train.trajectory.every and distributed.writes():  # in a torchrun job, rank 0 records
        weights = [p for p in model.parameters() if p.requires_grad]
        init = flatten(weights).cpu() if resume is None else _flat_init(model, run_dir / "init.pt")
        try:
            recorder = TrajectoryRecorder(run_dir, run.train.trajectory.every, total_steps, weights, init,
                                          None if resume is None else resume["trajectory_rows"])
            del init
        except CorruptFileError as err:
            damaged = err
    if distributed.any_rank(damaged is not None):  # torchrun: every rank starts over with rank 0
        print(f"{label}: warning: {damaged}; starting over")
        return train_run(run, run_dir, force=True, label=label)

    def along_the_way(step: int) -> float:
        """Track the Hessian and record the weights at `step` (optimizer steps so far) where asked; the seconds."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the step's queued kernels are training time
        start = time.perf_counter()
        if tracker is not None and tracker.due(step):
            objective = Objective(model, track_batches, hvp_mode=run.sharpness.hvp)
            latent = objective.params if rotated is None else rotated.latent
            tracker.measure(step, scheduler.get_last_lr()[0], objective, diagonal_preconditioner(optimizer, latent),
                            None if rotated is None else rotated.rotation)
            model.train()
        if recorder is not None:
            recorder.record(step)
        return time.perf_counter() - start

    if resume is None:
        along_the_way(0)

    budget = run.train.budget
    stopped_by = None  # "seconds" or "flops" once train.budget is spent, "pruner" when stop_after says so
    log = open_log(run.logging.backend if distributed.writes() else "none", run_dir, label, run.logging.project,
                   run.to_dict(), resume_step=start_epoch * steps_per_epoch)  # torchrun: rank 0 logs
    memory = PeakMemory(device)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.train.precision)
    autocast = torch.autocast(device.type, dtype=low or torch.float32, enabled=low is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=run.train.precision == "fp16")  # fp16 gradients underflow
    if resume is not None and "scaler" in resume:
        scaler.load_state_dict(resume["scaler"])
    # In a torchrun job each rank takes its share of every global batch; DDP averages the gradients.
    ranks = distributed.world_size() if distributed.splits() else 1
    forward = model if ranks == 1 else DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if run.train.compile:
        forward = torch.compile(forward)  # evaluation and Hessian work use the model itself
    for epoch in range(start_epoch, run.train.epochs):
        model.train()
        epoch_start, aside_s = time.perf_counter(), 0.0
        loss_total, target_total, epoch_tokens = 0.0, 0, 0
        order = epoch_order(lengths, run.data.order, run.seed, epoch)
        batches = batches_in_order(train_seqs, order, run.train.batch_size, pad_id)
        bar = progress(batches, total=steps_per_epoch, desc=f"{label} epoch {epoch + 1}/{run.train.epochs}")
        for step, batch in enumerate(bar):
            epoch_tokens += int(batch["attention_mask"].sum())
            shares = rank_shares(batch, ranks)
            train_flops += sum(flops_of_step(*share["input_ids"].shape) for share in shares if len(share["input_ids"])) \
                if counted else 0
            n_targets = count_targets(batch)  # of the global batch: the loss is its token-weighted mean
            mine = shares[distributed.rank() if ranks > 1 else 0]
            empty = not len(mine["input_ids"])  # fewer texts than ranks: a zero-weighted text joins the all-reduce
            with autocast:
                loss_sum, _ = summed_token_loss(forward, to_device(shares[0] if empty else mine, device))
            loss_sum = loss_sum * 0 if empty else loss_sum
            loss = loss_sum * ranks / n_targets  # DDP divides the summed gradients by the number of ranks
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # with fp32 and bf16, the scaler does nothing
            if rotated is not None:
                rotated.pull_gradients()
            if run.train.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, run.train.grad_clip)
            value = distributed.sum_floats(loss_sum.item())[0]  # of the global batch
            if not math.isfinite(value):
                kept = "last.pt" if last.is_file() else "init.pt"
                raise DivergedError(f"{label}: the training loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                                f"stopped, {run_dir / kept} keeps the last good weights "
                                "(lower train.lr or set train.grad_clip)")
            scaler.step(optimizer)  # fp16: skipped (and the scale lowered) where a gradient overflowed
            scaler.update()
            if rotated is not None:
                rotated.push()
            scheduler.step()
            history["step_loss"].append(value / n_targets)
            loss_total += value
            target_total += n_targets
            global_step = epoch * steps_per_epoch + step + 1
            aside_s += along_the_way(global_step)
            elapsed = time.perf_counter() - epoch_start - aside_s
            bar.set_postfix(loss=f"{loss_total / target_total:.4f}", tok_s=f"{epoch_tokens / max(elapsed, 1e-9):.0f}",
                            refresh=False)  # redrawn with the next step, as often as the bar allows
            if global_step % run.logging.every == 0:
                log.scalars(global_step, {"loss": value / n_targets, "lr": scheduler.get_last_lr()[0],
                                          "tokens_per_s": epoch_tokens / max(elapsed, 1e-9)}, prefix="train/")
            if budget.flops and train_flops >= budget.flops:
                stopped_by = "flops"
            elif budget.seconds and distributed.any_rank(train_time + elapsed >= budget.seconds):
                stopped_by = "seconds"
            if stopped_by:
                break
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.perf_counter() - epoch_start - aside_s
        train_tokens += epoch_tokens
        steps_done = epoch * steps_per_epoch + step + 1
        val_loss = evaluate(model, val_batches, device)
        if not math.isfinite(val_loss):
            raise DivergedError(f"{label}: the validation loss became {val_loss} after epoch {epoch + 1}; stopped "
                                "(lower train.lr or set train.grad_clip)")
        history["train_loss"].append(loss_total / target_total)
        history["val_loss"].append(val_loss)
        history["val_perplexity"].append(perplexity(val_loss))
        history["lr"].append(scheduler.get_last_lr()[0])
        for key, spent in (("at_step", steps_done), ("at_seconds", train_time),
                           ("at_flops", train_flops if counted else None)):
            history.setdefault(key, []).append(spent)  # a run resumed from an older last.pt has none before
        log.scalars(steps_done, {"train_loss": history["train_loss"][-1], "val_loss": val_loss,
                                 "val_perplexity": perplexity(val_loss)}, prefix="epoch/")
        print(f"{label} epoch {epoch + 1}/{run.train.epochs}: train loss {history['train_loss'][-1]:.4f}, "
              f"val loss {val_loss:.4f}, val ppl {perplexity(val_loss):.2f}")
        if not stopped_by and stop_after is not None and stop_after(epoch, val_loss):
            stopped_by = "pruner"
            print(f"{label}: stopped by the search's pruner after epoch {epoch + 1}")
            break
        if stopped_by:
            print(f"{label}: train.budget.{stopped_by} spent after {steps_done} steps ({train_time:.1f} s, "
                  f"{train_flops:.3g} FLOPs); stopping")
            break
        if epoch + 1 < run.train.epochs:
            along = {}
            if tracker is not None:
                along["track"] = tracker.state_dict()
            if recorder is not None:
                recorder.flush()
                along["trajectory_rows"] = recorder.written
            save_checkpoint(last, model, run, epoch + 1, tokenizer_ref, fingerprint, base=base, **along, started_from=started,
                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            rng=_rng_state(device), history=history, train_time_s=train_time,
                            train_tokens=train_tokens, train_flops=train_flops,
                            **({} if rotated is None else {"latent": [t.detach().cpu() for t in rotated.latent]}),
                            **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}))

    log.close()
    peak_memory = memory.stop()
    test_loss = evaluate(model, test_batches, device)
    # At the final weights, in eval mode: the train side of the generalization gap (test − train loss)
    final_train_loss = evaluate(model, fixed_batches(train_seqs, run.train.eval_batch_size, pad_id), device)
    weights = _weights_and_distance(model, run_dir / "init.pt")
    save_checkpoint(run_dir / "checkpoint.pt", model, run, run.train.epochs, tokenizer_ref, fingerprint, base=base)
    along = {}  # written before metrics.json, which marks the run trained
    if tracker is not None:
        write_json(run_dir / "track.json", {"run": run.name, "seed": run.seed, "fingerprint": fingerprint,
                                            **tracker.record()})
        along["track"] = {"points": len(tracker.points), "hvps": tracker.hvps, "seconds": tracker.seconds}
    if recorder is not None:
        recorder.finish()
        along["trajectory"] = {"rows": recorder.written, "bytes": (run_dir / TRAJECTORY).stat().st_size}
    if stopped_by == "pruner":
        along["pruned"] = {"epoch": epoch + 1, "step": steps_done, "of_steps": total_steps}
    if budget.seconds or budget.flops:
        along["budget"] = {"stopped_by": None if stopped_by == "pruner" else stopped_by, "step": steps_done, "of_steps": total_steps,
                           "epochs": steps_done / steps_per_epoch}
    peak_flops, peak_source = device_peak_flops(device, run.train.precision)
    metrics = {
        "run": run.name,
        "seed": run.seed,
        "fingerprint": fingerprint,
        **({"started_from": {"run": run.model.base_run, "weights": started}} if started else {}),
        **history,
        "test_loss": test_loss,
        "test_perplexity": perplexity(test_loss),
        "final_train_loss": final_train_loss,
        "generalization_gap": test_loss - final_train_loss,
        **weights,
        "epochs": run.train.epochs,
        "n_train_texts": len(train_seqs),
        "texts": texts.counts(),
        "train_time_s": train_time,
        "wall_time_s": time.perf_counter() - wall_start,  # the whole train stage of this run, this invocation
        "optimizer_steps": steps_done,
        "train_tokens": train_tokens,
        "tokens_per_s": train_tokens / max(train_time, 1e-9),
        "train_flops": train_flops if counted else None,
        "flops_per_s": train_flops / max(train_time, 1e-9) if counted else None,
        "device_peak_flops": peak_flops,  # of one device
        "device_peak_source": peak_source,
        "mfu": mfu(train_flops, train_time, peak_flops, ranks) if counted else None,  # per device
        "world_size": ranks,  # the processes that trained, a device each: dollars are price × world_size × hours
        "devices": distributed.gather_objects(device_name(device)),  # each rank's, in rank order
        "peak_memory_mb": peak_memory,
        "device": str(device),
        "device_name": device_name(device),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        **along,
        "versions": versions(),
        "config": run.to_dict(),
    }
    write_json(run_dir / "metrics.json", metrics)
    remove(last)
    print(f"{label}: done; test loss {test_loss:.4f}, test ppl {perplexity(test_loss):.2f}, "
          f"{metrics['tokens_per_s']:.0f} tokens/s")
    return metrics
