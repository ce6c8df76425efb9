"""Checkpoints reload the tokenizer they were trained with."""

from __future__ import annotations

import dataclasses

import pytest

import models.checkpoint
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
