"""Fine-tune (or train from scratch) one run for one seed, with exact resume.

Files in the run folder <output>/<experiment>/<run>/seed-<seed>/:
  init.pt         the weights before the first step
  last.pt         written after every epoch while the run is unfinished: the TrainState (optimization.train_state:
                  model, optimizer, scheduler, RNG state, history, budgets spent, …); an interrupted run
                  continues from it with bit-identical results on CPU (the data order is a pure function of
                  seed and epoch)
  checkpoint.pt   the final weights (last.pt is then removed)
  metrics.json    learning curves, test loss, cost (optimization.cost: steps, tokens, the job's FLOPs,
                  utilisation per device, memory, seconds), the devices it ran on (world_size: a torchrun
                  job's ranks) and provenance
  track.json      with train.track: the Hessian measured along training (optimization.tracking)
  trajectory.npy  with train.trajectory: θ − θ₀ every N steps, float16 (optimization.trajectory), and
                  trajectory.json, the steps of its rows
  tokenizer/      the tokenizer, when it is not a hub id

train_run is its phases: set up (optimization.train_setup), then per epoch its steps, its validation and last.pt,
then the finish (checkpoint.pt, what was measured along the way, metrics.json).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch

from config.schema import RunConfig
from data.batches import Batch, batches_in_order, count_targets, epoch_order, fixed_batches, to_device
from models.adapters import adapted_modules
from models.checkpoint import TOKENIZER_DIR, read_checkpoint, save_checkpoint
from models.runs import TRAJECTORY, TRAJECTORY_INDEX, base_weights, started_from, training_fingerprint
from optimization.cost import device_peak_flops, mfu
from optimization.evaluation import evaluate, perplexity, summed_token_loss
from optimization.optimizers import hessian_diagonal, needs_hessian_diagonal
from optimization.train_setup import Training, base_run_weights, set_up
from utils import distributed
from utils.device import device_name, resolve_device
from utils.errors import CorruptFileError, DivergedError, UserError
from utils.io import read_json, remove, save_torch, verify, versions, write_json
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


def _weights_and_distance(model, init_path: Path) -> dict:
    """‖θ‖₂ and ‖θ − θ₀‖₂ over the trained weights (a LoRA run's adapter): two of Jiang et al.'s (2020)
    generalization measures."""
    init = read_checkpoint(init_path)["model"]
    trained = [(name, p.detach()) for name, p in model.named_parameters() if p.requires_grad]
    norm = math.sqrt(sum(float(p.double().pow(2).sum()) for _, p in trained))
    distance = math.sqrt(sum(float((p.double() - init[name].to(p.device).double()).pow(2).sum()) for name, p in trained))
    return {"weight_norm": norm, "distance_from_init": distance}


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


def _step(t: Training, batch: Batch, epoch: int, step: int) -> tuple[float, int]:
    """One optimizer step on a global batch (this rank's share of it); its summed loss and its targets."""
    run, state = t.run, t.state
    shares = rank_shares(batch, t.ranks)
    if t.flops_of_step is not None:
        state.train_flops += sum(t.flops_of_step(*share["input_ids"].shape) for share in shares
                                 if len(share["input_ids"]))
    n_targets = count_targets(batch)  # of the global batch: the loss is its token-weighted mean
    mine = shares[distributed.rank() if t.ranks > 1 else 0]
    empty = not len(mine["input_ids"])  # fewer texts than ranks: a zero-weighted text joins the all-reduce
    with t.autocast:
        loss_sum, _ = summed_token_loss(t.forward, to_device(shares[0] if empty else mine, t.device))
    loss_sum = loss_sum * 0 if empty else loss_sum
    loss = loss_sum * t.ranks / n_targets  # DDP divides the summed gradients by the number of ranks
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()  # with fp32 and bf16, the scaler does nothing
    if state.rotated is not None:
        state.rotated.pull_gradients()
    if run.train.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.trainable, run.train.grad_clip)
    value = distributed.sum_floats(loss_sum.item())[0]  # of the global batch
    if not math.isfinite(value):
        kept = "last.pt" if (t.run_dir / "last.pt").is_file() else "init.pt"
        raise DivergedError(f"{t.label}: the training loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                            f"stopped, {t.run_dir / kept} keeps the last good weights "
                            "(lower train.lr or set train.grad_clip)")
    step_inputs = {}
    if needs_hessian_diagonal(state.optimizer):  # AdaHessian: diag(H) of this batch by Hutchinson, own random stream
        generator = torch.Generator().manual_seed(run.seed * 1_000_003 + state.scheduler.last_epoch)
        step_inputs["hessian"] = hessian_diagonal(state.optimizer, state.model, batch, state.trainable,
                                                  None if state.rotated is None else state.rotated.rotation, generator)
    state.scaler.step(state.optimizer, **step_inputs)  # fp16: skipped (and the scale lowered) where a gradient overflowed
    state.scaler.update()
    if state.rotated is not None:
        state.rotated.push()
    state.scheduler.step()
    return value, n_targets


def _train_epoch(t: Training, epoch: int) -> tuple[int, float, str | None]:
    """One epoch's steps, fewer when train.budget is spent during it: the optimizer steps done by its end, its
    training loss, and "seconds" or "flops" when the budget stopped it."""
    run, state, data, budget = t.run, t.state, t.data, t.run.train.budget
    state.model.train()
    epoch_start, aside_s = time.perf_counter(), 0.0
    loss_total, target_total, epoch_tokens, spent = 0.0, 0, 0, None
    order = epoch_order(data.lengths, run.data.order, run.seed, epoch)
    batches = batches_in_order(data.train_seqs, order, run.train.batch_size, data.pad_id)
    bar = progress(batches, total=data.steps_per_epoch, desc=f"{t.label} epoch {epoch + 1}/{run.train.epochs}")
    for step, batch in enumerate(bar):
        epoch_tokens += int(batch["attention_mask"].sum())
        value, n_targets = _step(t, batch, epoch, step)
        state.history["step_loss"].append(value / n_targets)
        loss_total += value
        target_total += n_targets
        global_step = epoch * data.steps_per_epoch + step + 1
        aside_s += t.along_the_way(global_step)
        elapsed = time.perf_counter() - epoch_start - aside_s
        bar.set_postfix(loss=f"{loss_total / target_total:.4f}", tok_s=f"{epoch_tokens / max(elapsed, 1e-9):.0f}",
                        refresh=False)  # redrawn with the next step, as often as the bar allows
        if global_step % run.logging.every == 0:
            t.log.scalars(global_step, {"loss": value / n_targets, "lr": state.scheduler.get_last_lr()[0],
                                        "tokens_per_s": epoch_tokens / max(elapsed, 1e-9)}, prefix="train/")
        if budget.flops and state.train_flops >= budget.flops:
            spent = "flops"
        elif budget.seconds and distributed.any_rank(state.train_time + elapsed >= budget.seconds):
            spent = "seconds"
        if spent:
            break
    bar.close()
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)
    state.train_time += time.perf_counter() - epoch_start - aside_s
    state.train_tokens += epoch_tokens
    return epoch * data.steps_per_epoch + step + 1, loss_total / target_total, spent


def _evaluate_epoch(t: Training, epoch: int, steps_done: int, train_loss: float) -> float:
    """Validation after an epoch, into the learning curves, the log and the line printed; the validation loss."""
    state, history = t.state, t.state.history
    val_loss = evaluate(state.model, t.data.val_batches, t.device)
    if not math.isfinite(val_loss):
        raise DivergedError(f"{t.label}: the validation loss became {val_loss} after epoch {epoch + 1}; stopped "
                            "(lower train.lr or set train.grad_clip)")
    history["train_loss"].append(train_loss)
    history["val_loss"].append(val_loss)
    history["val_perplexity"].append(perplexity(val_loss))
    history["lr"].append(state.scheduler.get_last_lr()[0])
    for key, spent in (("at_step", steps_done), ("at_seconds", state.train_time),
                       ("at_flops", state.train_flops if t.flops_of_step is not None else None)):
        history.setdefault(key, []).append(spent)  # a run resumed from an older last.pt has none before
    t.log.scalars(steps_done, {"train_loss": train_loss, "val_loss": val_loss,
                               "val_perplexity": perplexity(val_loss)}, prefix="epoch/")
    print(f"{t.label} epoch {epoch + 1}/{t.run.train.epochs}: train loss {train_loss:.4f}, "
          f"val loss {val_loss:.4f}, val ppl {perplexity(val_loss):.2f}")
    state.epoch = epoch + 1
    return val_loss


def _stop_reason(t: Training, epoch: int, val_loss: float, steps_done: int, spent: str | None,
                 stop_after: Callable[[int, float], bool] | None) -> str | None:
    """Why training ends after this epoch, before its last: "seconds" or "flops" (train.budget spent), "pruner"
    (the search's stop_after says so), or None."""
    if not spent and stop_after is not None and stop_after(epoch, val_loss):
        print(f"{t.label}: stopped by the search's pruner after epoch {epoch + 1}")
        return "pruner"
    if spent:
        print(f"{t.label}: train.budget.{spent} spent after {steps_done} steps ({t.state.train_time:.1f} s, "
              f"{t.state.train_flops:.3g} FLOPs); stopping")
    return spent


def _save_last(t: Training) -> None:
    """last.pt: the TrainState after an epoch, for a resume (the trajectory's rows on disk before it counts them)."""
    if t.state.recorder is not None:
        t.state.recorder.flush()
    save_torch(t.run_dir / "last.pt", t.state.state_dict())


def train_run(run: RunConfig, run_dir: Path, force: bool = False, label: str = "",
              stop_after: Callable[[int, float], bool] | None = None) -> dict:
    """Train one run into `run_dir` (resuming or skipping as appropriate); return its metrics.
    `stop_after(epoch, val_loss)`, asked after each epoch's validation, may end training there (a search's
    pruner): the run is then finished early, and metrics.json says so under "pruned"."""
    run_dir = Path(run_dir)
    label = label or f"{run.name}/seed-{run.seed}"
    if not force and is_trained(run, run_dir, label):
        print(f"{label}: already trained with this config; skipping (--force retrains)")
        return read_json(run_dir / "metrics.json")
    started = base_run_weights(run, run_dir, label)
    device = resolve_device(run.device)
    if run.train.precision != "fp32" and device.type not in MIXED_PRECISION_DEVICES:
        raise UserError(f"{label}: train.precision {run.train.precision} needs a CUDA device (got {device}); "
                        "use fp32 on CPU")
    t = set_up(run, run_dir, label, device, started, force)
    if t is None:
        return train_run(run, run_dir, force=True, label=label, stop_after=stop_after)
    steps_done, stopped_by = 0, None
    for epoch in range(t.state.epoch, run.train.epochs):
        steps_done, train_loss, spent = _train_epoch(t, epoch)
        val_loss = _evaluate_epoch(t, epoch, steps_done, train_loss)
        stopped_by = _stop_reason(t, epoch, val_loss, steps_done, spent, stop_after)
        if stopped_by:
            break
        if epoch + 1 < run.train.epochs:
            _save_last(t)
    return _finish(t, steps_done, stopped_by)


def _along_the_way_outputs(t: Training, steps_done: int, stopped_by: str | None) -> dict:
    """track.json and trajectory.npy finished (before metrics.json, which marks the run trained), and what
    metrics.json says of them and of an early stop."""
    run, state, along = t.run, t.state, {}
    if state.tracker is not None:
        write_json(t.run_dir / "track.json", {"run": run.name, "seed": run.seed,
                                              "fingerprint": state.identity.fingerprint, **state.tracker.record()})
        along["track"] = {"points": len(state.tracker.points), "hvps": state.tracker.hvps,
                          "seconds": state.tracker.seconds}
    if state.recorder is not None:
        state.recorder.finish()
        along["trajectory"] = {"rows": state.recorder.written, "bytes": (t.run_dir / TRAJECTORY).stat().st_size}
    total_steps = t.data.total_steps
    if stopped_by == "pruner":
        along["pruned"] = {"epoch": state.epoch, "step": steps_done, "of_steps": total_steps}
    if run.train.budget.seconds or run.train.budget.flops:
        along["budget"] = {"stopped_by": None if stopped_by == "pruner" else stopped_by, "step": steps_done,
                           "of_steps": total_steps, "epochs": steps_done / t.data.steps_per_epoch}
    return along


def _finish(t: Training, steps_done: int, stopped_by: str | None) -> dict:
    """The end of training: the final evaluations, checkpoint.pt, what was measured along the way, and
    metrics.json (written last: it marks the run trained); last.pt is then removed. The metrics."""
    run, model, device, identity = t.run, t.state.model, t.device, t.state.identity
    t.log.close()
    peak_memory = t.memory.stop()
    test_loss = evaluate(model, t.data.test_batches, device)
    # At the final weights, in eval mode: the train side of the generalization gap (test − train loss)
    final_train_loss = evaluate(model, fixed_batches(t.data.train_seqs, run.train.eval_batch_size, t.data.pad_id),
                                device)
    weights = _weights_and_distance(model, t.run_dir / "init.pt")
    save_checkpoint(t.run_dir / "checkpoint.pt", model, run, run.train.epochs, identity.tokenizer_ref,
                    identity.fingerprint, base=identity.base)
    along = _along_the_way_outputs(t, steps_done, stopped_by)
    peak_flops, peak_source = device_peak_flops(device, run.train.precision)
    metrics = _metrics(t, {"test_loss": test_loss, "test_perplexity": perplexity(test_loss),
                           "final_train_loss": final_train_loss, "generalization_gap": test_loss - final_train_loss,
                           **weights}, steps_done, peak_flops, peak_source, peak_memory, along)
    write_json(t.run_dir / "metrics.json", metrics)
    remove(t.run_dir / "last.pt")
    print(f"{t.label}: done; test loss {test_loss:.4f}, test ppl {perplexity(test_loss):.2f}, "
          f"{metrics['tokens_per_s']:.0f} tokens/s")
    return metrics


def _metrics(t: Training, final: dict, steps_done: int, peak_flops: float, peak_source: str, peak_memory: float,
             along: dict) -> dict:
    """metrics.json: the learning curves, the `final` evaluations, the cost and the provenance."""
    run, state, device = t.run, t.state, t.device
    counted, train_time, train_flops = t.flops_of_step is not None, state.train_time, state.train_flops
    started = state.identity.started_from
    return {
        "run": run.name,
        "seed": run.seed,
        "fingerprint": state.identity.fingerprint,
        **({"started_from": {"run": run.model.base_run, "weights": started}} if started else {}),
        **state.history,
        **final,
        "epochs": run.train.epochs,
        "n_train_texts": len(t.data.train_seqs),
        "texts": t.data.texts.counts(),
        "train_time_s": train_time,
        "wall_time_s": time.perf_counter() - t.wall_start,  # the whole train stage of this run, this invocation
        "optimizer_steps": steps_done,
        "train_tokens": state.train_tokens,
        "tokens_per_s": state.train_tokens / max(train_time, 1e-9),
        "train_flops": train_flops if counted else None,
        "flops_per_s": train_flops / max(train_time, 1e-9) if counted else None,
        "device_peak_flops": peak_flops,  # of one device
        "device_peak_source": peak_source,
        "mfu": mfu(train_flops, train_time, peak_flops, t.ranks) if counted else None,  # per device
        "world_size": t.ranks,  # the processes that trained, a device each: dollars are price × world_size × hours
        "devices": distributed.gather_objects(device_name(device)),  # each rank's, in rank order
        "peak_memory_mb": peak_memory,
        "device": str(device),
        "device_name": device_name(device),
        "n_parameters": sum(p.numel() for p in state.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in state.model.parameters() if p.requires_grad),
        **({"adapted_modules": adapted_modules(state.model)} if run.model.adapter.type != "none" else {}),
        **along,
        "versions": versions(),
        "config": run.to_dict(),
    }
