"""Device choice, its name, and the peak memory of a stretch of work."""

from __future__ import annotations

import os
import platform
import threading

import psutil
import torch

from utils.distributed import launched
from utils.errors import UserError


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


def device_name(device: torch.device) -> str:
    """The GPU's model name (what price and peak tables are matched against), or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {psutil.cpu_count(logical=True)} threads"


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
