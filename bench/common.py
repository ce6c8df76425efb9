"""What every benchmark shares: its texts, the machine's name, and timings that wait for the GPU."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from data.corpus import load_texts
from models.models import byte_tokenizer, load_tokenizer
from config.schema import DataConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def bench_texts():
    """(the study's 1000 filtered training texts, tokenizer, description): real WikiText-2 with the GPT-2
    tokenizer when ../shared/data has them, otherwise the builtin corpus with the byte tokenizer."""
    if (SHARED / "wikitext-2").is_dir() and (SHARED / "gpt2-tokenizer").is_dir():
        texts = load_texts(DataConfig(source="local", path=str(SHARED / "wikitext-2"))).train
        return texts, load_tokenizer(str(SHARED / "gpt2-tokenizer")), f"WikiText-2 ({SHARED / 'wikitext-2'}), GPT-2 tokenizer"
    return load_texts(DataConfig(source="builtin")).train, byte_tokenizer(), "builtin corpus, byte tokenizer"


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def timed(work, device: torch.device) -> float:
    """Seconds that `work()` takes, GPU work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
