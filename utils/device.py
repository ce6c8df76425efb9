"""Device choice, its name, torch's threads on the CPU, its free memory, and the peak memory of a stretch of work."""

from __future__ import annotations

import os
import platform
import threading

import psutil
import torch

from utils.distributed import launched
from utils.errors import UserError

_threads = {"count": None}  # what use_threads last chose in this process


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first CUDA device if there is one, else the CPU. In a torchrun job, 'auto' and 'cuda' are the
    rank's own GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but no CUDA GPU is available (use --device cpu or auto)")
    if name == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def threads_for(setting: int | str) -> tuple[int, str]:
    """torch's intra-op threads for this process, and the line that says why. `setting` is the experiment's
    `threads`: a count, or "auto": OMP_NUM_THREADS when the user set it, else the cores this process may run on
    less the 1-minute load average (rounded; at least 1), shared among the local ranks of a torchrun job. Threads
    beyond the free cores wait on each other: at load 5-11 on 2 cores one HVP took ~10x longer with 2 threads
    than with 1 (bench/threads.py)."""
    if setting != "auto":
        return setting, f"threads: {setting} (the experiment's `threads`)"
    asked = os.environ.get("OMP_NUM_THREADS", "")
    if asked.isdigit() and int(asked) > 0 and not launched():  # torchrun sets it to 1 for its ranks itself
        return int(asked), f"threads: {int(asked)} (OMP_NUM_THREADS)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1
    count = max(1, round(cores - load) // ranks)
    each = f" in each of {ranks} ranks" if ranks > 1 else ""
    return count, f"threads: {count}{each} of {cores} cores (load {load:.1f}); set `threads:` to choose"


def use_threads(setting: int | str) -> None:
    """Set torch's intra-op threads (threads_for) before the work; say so once, unless the count changes."""
    count, line = threads_for(setting)
    if count != _threads["count"]:
        torch.set_num_threads(count)
        print(line, flush=True)
        _threads["count"] = count


def device_name(device: torch.device) -> str:
    """The GPU's model name (what price and peak tables are matched against), or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {psutil.cpu_count(logical=True)} threads"


def free_memory(device: torch.device) -> int:
    """Bytes this process could still take on `device`: the GPU's free memory plus what torch's allocator holds
    unused; on the CPU the available RAM, shared among the local ranks of a torchrun job (they share the machine)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return max(0, torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1
    return psutil.virtual_memory().available // ranks


class PeakMemory:
    """Peak memory from now until stop(), in MiB: the largest GPU memory allocated by tensors on CUDA; on the
    CPU the process's largest resident set size, sampled by psutil every `interval` seconds on a thread (the
    kernel's own peak, getrusage's maxrss, covers the whole process life, earlier runs of the stage included)."""

    def __init__(self, device: torch.device, interval: float = 0.05):
        self.device, self.interval = device, interval
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            return
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        self.done.set()
        self.thread.join()
        return max(self.peak, self.process.memory_info().rss) / 2**20
