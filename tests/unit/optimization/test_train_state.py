"""TrainState: last.pt is its state_dict() and the resume its load_state_dict(); last.pt keeps the layout that the
training code wrote before TrainState existed, and resumes to the numbers of an uninterrupted run."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import optimization.training as training
import run as cli
from optimization.train_state import RunIdentity, TrainState
from tests.unit.optimization.layout_of import layout_of

# case: (experiment file on conftest's tiny one, run). rotated: Adam on a rotated loss in fp16, clipped, tracked and
# recorded; lora: a LoRA adapter with dropout on model.base_run's weights.
CASES = {
    "rotated": ("experiment: rotated\ntrain: {epochs: 3, optimizer: adam, lr: 0.003, rotation: global, precision: fp16, "
                "grad_clip: 1.0, track: {every: 3, iters: 6}, trajectory: {every: 4}}\n", "default"),
    "lora": ("experiment: lora\ntrain: {epochs: 3, optimizer: adamw, lr: 0.01}\nruns:\n  base: {train: {epochs: 1}}\n"
             "  tuned: {model: {base_run: base, adapter: {type: lora, r: 2, dropout: 0.1}}}\n", "tuned"),
}
# The layout of the last.pt files that the training code wrote before TrainState existed (commit f4cd338, killed in
# epoch 3 of 3): a last.pt of today has the same keys and kinds of values, so those files still resume.
LAYOUT = json.loads((Path(__file__).parent / "last_pt_layout.json").read_text())


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("case", list(CASES))
def test_last_pt_keeps_its_layout_and_resumes_to_an_uninterrupted_run(case, write_config, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setattr(training, "MIXED_PRECISION_DEVICES", ("cuda", "cpu"))  # fp16 on the CPU's autocast
    text, run = CASES[case]
    config = write_config(text)  # conftest's tiny experiment
    experiment = text.split("\n")[0].split(": ")[1]
    assert cli.main(["--config", str(config), "--stages", "train", "--output", str(tmp_path / "straight")]) == 0

    train_epoch = training._train_epoch

    def killed_in_the_last_epoch(t, epoch):
        if epoch == 2 and t.run.name == run:
            raise KeyboardInterrupt
        return train_epoch(t, epoch)

    monkeypatch.setattr(training, "_train_epoch", killed_in_the_last_epoch)
    assert cli.main(["--config", str(config), "--stages", "train", "--output", str(tmp_path / "resumed")]) == 130
    resumed = tmp_path / "resumed" / experiment / run / "seed-42"
    assert layout_of(torch.load(resumed / "last.pt", weights_only=True)) == LAYOUT[case]
    monkeypatch.setattr(training, "_train_epoch", train_epoch)
    capsys.readouterr()
    assert cli.main(["--config", str(config), "--stages", "train", "--output", str(tmp_path / "resumed")]) == 0
    assert "resuming after epoch 2 of 3" in capsys.readouterr().out  # not started over

    straight = tmp_path / "straight" / experiment / run / "seed-42"
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    for key in ("init_val_loss", "step_loss", "train_loss", "val_loss", "lr", "at_step", "at_flops", "test_loss",
                "final_train_loss", "weight_norm", "distance_from_init", "optimizer_steps", "train_tokens",
                "train_flops", "fingerprint", "started_from"):
        assert a.get(key) == b.get(key), key
    assert len(b["step_loss"]) == 3 * 6 and not (resumed / "last.pt").exists()
    weights = [torch.load(d / "checkpoint.pt", weights_only=True)["model"] for d in (straight, resumed)]
    assert _equal(*weights)
    if case == "rotated":
        track = [json.loads((d / "track.json").read_text())["points"] for d in (straight, resumed)]
        assert [{k: v for k, v in p.items() if k != "seconds"} for p in track[0]] == \
            [{k: v for k, v in p.items() if k != "seconds"} for p in track[1]]
        assert np.array_equal(np.load(straight / "trajectory.npy"), np.load(resumed / "trajectory.npy"))


@pytest.mark.parametrize("train", ["{optimizer: sgd, lr: 0.3, momentum: 0.9}",
                                   "{optimizer: adam, lr: 0.003, rotation: global, track: {every: 2}}"])
def test_load_state_dict_restores_what_state_dict_saved_and_the_next_step_is_the_same(
        tiny_experiment, tiny_model_and_tokenizer, tmp_path, train):
    run = tiny_experiment(f"train: {train}\n").runs[0]
    model, _ = tiny_model_and_tokenizer
    identity = RunIdentity("fingerprint", "tokenizer", None, None)
    written = TrainState(run, model, torch.device("cpu"), total_steps=12, identity=identity)

    def step(state: TrainState, seed: int) -> None:
        gradients = torch.Generator().manual_seed(seed)
        for p in state.trainable:
            p.grad = torch.randn(p.shape, generator=gradients)
        state.optimizer.step()
        if state.rotated is not None:
            state.rotated.push()
        state.scheduler.step()

    for seed in range(3):
        step(written, seed)
    written.epoch, written.train_time, written.train_tokens, written.train_flops = 1, 2.5, 300, 7_000
    written.history["val_loss"].append(4.0)
    buffer = io.BytesIO()
    torch.save(written.state_dict(), buffer)  # through a file, as last.pt: nothing shared with the live state
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)

    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # weights the resume must replace
    torch.manual_seed(12345)  # a random state the resume must replace
    resumed = TrainState(run, fresh, torch.device("cpu"), total_steps=12, identity=identity)
    resumed.load_state_dict(saved, tmp_path / "last.pt")
    assert _equal(resumed.state_dict(), saved)
    step(written, 3)
    step(resumed, 3)
    assert _equal(resumed.model.state_dict(), written.model.state_dict())
