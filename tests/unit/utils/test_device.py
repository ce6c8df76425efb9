"""utils.device's free memory: what the HVPs' kept gradient graphs are budgeted against (optimization.objective)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import utils.device
from utils.device import free_memory


def test_the_cpus_free_memory_is_the_available_ram_shared_among_the_local_ranks(monkeypatch):
    monkeypatch.setattr(utils.device.psutil, "virtual_memory", lambda: SimpleNamespace(available=12 * 2**30))
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert free_memory(torch.device("cpu")) == 12 * 2**30
    monkeypatch.setenv("WORLD_SIZE", "4")  # a torchrun job of 2 machines, 2 ranks on this one
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert free_memory(torch.device("cpu")) == 6 * 2**30
