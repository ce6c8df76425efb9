"""Checkpoints reload the tokenizer they were trained with, and are hashed once per command while unchanged."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
import torch

import models.checkpoint
import utils.io
from config.schema import ModelConfig, RunConfig
from models.checkpoint import load_trained, save_checkpoint
from models.models import build_model, byte_tokenizer


@pytest.mark.parametrize("tokenizer, asked", [("", ("EleutherAI/pythia-14m", "step1000")), ("gpt2", ("gpt2", ""))])
def test_a_hub_model_s_own_tokenizer_is_reloaded_at_its_revision(tmp_path, monkeypatch, tokenizer, asked):
    model = build_model(ModelConfig(init="scratch", config={"n_layer": 1, "n_embd": 16, "n_head": 2}),
                        byte_tokenizer(), seed=0)
    run = dataclasses.replace(RunConfig(), model=ModelConfig(name="EleutherAI/pythia-14m", revision="step1000",
                                                             tokenizer=tokenizer))
    save_checkpoint(tmp_path / "checkpoint.pt", model, run, 0, tokenizer or run.model.name, "fingerprint")
    loaded = []
    monkeypatch.setattr(models.checkpoint, "load_tokenizer", lambda *args: loaded.append(args) or byte_tokenizer())
    load_trained(tmp_path / "checkpoint.pt")
    assert loaded == [asked]


QUICK_STAGES = """
seeds: [1, 2]
train: {epochs: 1}
sharpness: {max_iter: 4, random_directions: 1, worst_case_steps: 0, trace_samples: 0}
geometry: {cauchy_vectors: 5, bootstrap: 0, frobenius_probes: 0, rotation: none}
"""


def settle(folder: Path) -> None:
    """Date every file under `folder` a minute back: written longer ago than any file system's clock tick."""
    old = time.time_ns() - 60 * 10**9
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(old, old))


def counting_hashes(monkeypatch) -> list[str]:
    """The names of the files utils.io reads to hash from now on."""
    hashed, real = [], utils.io.hash_file
    monkeypatch.setattr(utils.io, "_digests", {})
    monkeypatch.setattr(utils.io, "hash_file", lambda path: hashed.append(Path(path).name) or real(path))
    return hashed


def test_a_verified_checkpoint_is_hashed_once_per_command(tiny_experiment, tmp_path, monkeypatch):
    """Each measuring stage checks every run's files (models.runs.trained_runs) and then loads its checkpoint,
    checked again: before, checkpoint.pt was read four times for two stages."""
    from pipeline import run_experiment

    experiment, out = tiny_experiment(QUICK_STAGES), tmp_path / "out"
    run_experiment(experiment, ["train"], out)
    settle(out)
    hashed = counting_hashes(monkeypatch)
    run_experiment(experiment, ["sharpness", "geometry"], out)
    assert hashed.count("checkpoint.pt") == hashed.count("init.pt") == len(experiment.jobs()) == 2


def test_a_checkpoint_changed_after_it_was_hashed_is_caught(tmp_path, monkeypatch):
    from utils.errors import CorruptFileError
    from utils.io import save_torch, verify

    path = tmp_path / "checkpoint.pt"
    save_torch(path, {"weights": torch.arange(1000.0)})
    hashed = counting_hashes(monkeypatch)
    verify(path)
    verify(path)
    assert hashed == ["checkpoint.pt", "checkpoint.pt"]  # just written: a change now might keep its date and size
    settle(tmp_path)
    verify(path)
    verify(path)
    assert len(hashed) == 3  # settled: known by its date, size and inode
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # the same size, written now
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="sha256"):
        verify(path)
