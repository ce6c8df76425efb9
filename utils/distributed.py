"""Several processes on one job, through torch.distributed: `torchrun --nproc_per_node N run.py ...`.

torchrun starts N copies of run.py and sets RANK, WORLD_SIZE and LOCAL_RANK; `start()` joins them into one
process group (NCCL between GPUs, gloo on the CPU). Every rank runs the same code on the same files. The
stages that split work across ranks (pipeline.COLLECTIVE_STAGES) run inside `collective()`: there `shard`
hands each rank its share of a list and `all_reduce_sum` adds the ranks' partial sums, so every rank holds the
same totals and takes the same decisions. Rank 0 alone writes files (utils.io asks `writes()`) and prints;
the other stages run on rank 0 while the others wait. Outside torchrun, or with one process, all of this is
a no-op: a single process is rank 0 of 1.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from utils.errors import UserError

_state = {"collective": False}
TIMEOUT_S = 1800  # a collective waits this long for a rank before the job fails (a Hessian pass can be long)


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device_name: str) -> None:
    """Join the process group that torchrun's environment describes (once); NCCL when the run is on CUDA."""
    if not launched() or dist.is_initialized():
        return
    on_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if on_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group("nccl" if on_cuda else "gloo", timeout=timedelta(seconds=TIMEOUT_S))
    except (RuntimeError, ValueError) as err:
        raise UserError(f"could not join the torchrun job ({str(err).splitlines()[0]})") from None


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def writes() -> bool:
    """Whether this process writes files: rank 0 of a job, or a single process."""
    return is_main()


def rank_seed(seed: int, *also: int) -> int:
    """This rank's seed for its random draws (dropout masks): `seed` itself on rank 0 and in a single process, and
    on every other rank of a splitting job its own seed derived from (seed, rank, *also), so that the ranks' shares
    of a batch get independent masks, as the texts of one process's batch do, not every rank the same ones."""
    here = rank() if splits() else 0
    return seed if here == 0 else int(np.random.SeedSequence([seed, here, *also]).generate_state(1)[0])


def splits() -> bool:
    """Whether work is being split across ranks now (inside `collective()` of a job of several)."""
    return _state["collective"] and world_size() > 1


@contextmanager
def collective():
    """Within the block, every rank runs the same code and splits its work (`shard`, `all_reduce_sum`)."""
    before, _state["collective"] = _state["collective"], True
    try:
        yield
    finally:
        _state["collective"] = before


@contextmanager
def alone():
    """Within the block, this rank works on whole sets again (no `shard`, no sums): for work split by other
    means, such as the points of a landscape grid (visualization.surface.fill_surface)."""
    before, _state["collective"] = _state["collective"], False
    try:
        yield
    finally:
        _state["collective"] = before


def shard(items: list) -> list:
    """This rank's share of `items` (every world_size-th, from its rank), or all of them when not splitting."""
    return items[rank()::world_size()] if splits() else list(items)


def all_reduce_sum(tensor: torch.Tensor, split: bool | None = None) -> torch.Tensor:
    """The sum of `tensor` over the ranks, in place and returned; unchanged unless the work is `split`
    (by default: whether it is being split now, `splits()`)."""
    if splits() if split is None else split:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_floats(*values: float, split: bool | None = None) -> list[float]:
    """Python numbers summed over the ranks (float64, so that a sum of partial losses keeps its digits)."""
    if not (splits() if split is None else split):
        return list(values)
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=_collective_device()), True).tolist()


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on some rank: for decisions every rank must take together (a time budget)."""
    if not splits():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(value):
    """Rank 0's `value` on every rank (`value` itself when not splitting): what rank 0 alone read or computed."""
    if not splits():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(value) -> list:
    """`value` of every rank, in rank order, on every rank ([value] when not splitting)."""
    if not splits():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    """Wait for every rank of the job (between stages)."""
    if dist.is_initialized() and world_size() > 1:
        dist.barrier()


def sync() -> None:
    """Wait for every rank, inside a collective stage (a no-op elsewhere, where rank 0 may be alone)."""
    if splits():
        dist.barrier()


def _collective_device() -> torch.device:
    """NCCL reduces tensors on the rank's GPU; gloo on the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
