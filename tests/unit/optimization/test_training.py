"""Training: it learns, checkpoints round-trip, resume is exact, NaN stops, finished runs are skipped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import optimization.train_state as train_state
import optimization.training as training
import run
from data.batches import tokenize
from data.corpus import load_texts
from models.checkpoint import load_trained
from optimization.optimizers import make_optimizer
from optimization.train_stage import train_stage
from models.runs import run_dir
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[3]


def test_training_lowers_the_loss_and_writes_every_output(tiny_experiment, tmp_path):
    exp = tiny_experiment("train: {epochs: 3}\n")
    train_stage(exp, tmp_path, force=False)
    folder = run_dir(tmp_path, exp, exp.runs[0])
    assert folder == tmp_path / "exp" / "default" / "seed-42"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]
    assert metrics["val_loss"][-1] < metrics["init_val_loss"]
    assert len(metrics["val_perplexity"]) == 3 and metrics["test_perplexity"] == pytest.approx(
        torch.tensor(metrics["test_loss"]).exp().item(), rel=1e-6)
    for key in ("train_time_s", "tokens_per_s", "peak_memory_mb", "seed", "versions"):
        assert key in metrics
    texts = load_texts(exp.runs[0].data).train
    tokenizer = load_trained(folder / "checkpoint.pt").tokenizer
    assert metrics["train_tokens"] == 3 * sum(len(s) for s in tokenize(texts, tokenizer, exp.runs[0].data.max_length))
    assert metrics["tokens_per_s"] == pytest.approx(metrics["train_tokens"] / metrics["train_time_s"], rel=1e-9)
    assert set(metrics["versions"]) == {"torch", "transformers", "git_commit"}
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    assert not (folder / "last.pt").exists()
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_checkpoints_load_with_weights_only_and_rebuild_the_model(tiny_experiment, tmp_path):
    exp = tiny_experiment("train: {epochs: 1}\n")
    train_stage(exp, tmp_path, force=False)
    folder = run_dir(tmp_path, exp, exp.runs[0])
    for name, epoch in (("init.pt", 0), ("checkpoint.pt", 1)):
        ckpt = torch.load(folder / name, weights_only=True)
        assert {"model", "model_config", "config", "epoch"} <= set(ckpt) and ckpt["epoch"] == epoch
        assert ckpt["config"]["train"]["epochs"] == 1 and ckpt["model_config"]["n_layer"] == 2
        trained = load_trained(folder / name)
        assert all(torch.equal(trained.model.state_dict()[k], v) for k, v in ckpt["model"].items())
        assert trained.run.train.lr == exp.runs[0].train.lr and len(trained.tokenizer) == 300
    init, final = (torch.load(folder / n, weights_only=True)["model"] for n in ("init.pt", "checkpoint.pt"))
    assert not torch.equal(init["transformer.wte.weight"], final["transformer.wte.weight"])


def test_corrupt_or_missing_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        load_trained(bad)
    with pytest.raises(UserError, match="not found"):
        load_trained(tmp_path / "missing.pt")


def _weights(folder):
    return torch.load(folder / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.parametrize("order, train, model", [
    ("random", "{epochs: 3}", "{}"), ("sorted", "{epochs: 3}", "{}"),
    ("random", "{epochs: 3, optimizer: adam, lr: 0.003, rotation: global}", "{}"),
    ("random", "{epochs: 3, optimizer: adamw, lr: 0.01}", "{adapter: {type: lora, r: 2, dropout: 0.1}}"),
    ("random", "{epochs: 3, optimizer: adamw, lr: 0.01, precision: fp16, grad_clip: 1.0}", "{}")])
def test_kill_and_resume_gives_bit_identical_weights(tiny_experiment, tmp_path, monkeypatch, order, train, model):
    """fp16 (its gradient scaler's state resumed too) runs here on the CPU's autocast, which the pipeline refuses
    to users as slow."""
    monkeypatch.setattr(training, "MIXED_PRECISION_DEVICES", ("cuda", "cpu"))
    exp = tiny_experiment(f"train: {train}\ndata: {{order: {order}}}\nmodel: {model}\n")
    train_stage(exp, tmp_path / "straight", force=False)

    calls = {"n": 0}
    real_loss = training.summed_token_loss

    def killed_in_third_epoch(model, batch):
        calls["n"] += 1
        if calls["n"] == 15:  # 6 steps per epoch: step 3 of epoch 3
            raise KeyboardInterrupt
        return real_loss(model, batch)

    monkeypatch.setattr(training, "summed_token_loss", killed_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_stage(exp, tmp_path / "resumed", force=False)
    folder = run_dir(tmp_path / "resumed", exp, exp.runs[0])
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 2
    assert not (folder / "checkpoint.pt").exists()
    monkeypatch.setattr(training, "summed_token_loss", real_loss)
    train_stage(exp, tmp_path / "resumed", force=False)

    straight, resumed = _weights(run_dir(tmp_path / "straight", exp, exp.runs[0])), _weights(folder)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    a, b = (json.loads((run_dir(tmp_path / d, exp, exp.runs[0]) / "metrics.json").read_text())
            for d in ("straight", "resumed"))
    assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    assert a["step_loss"] == b["step_loss"] and len(a["step_loss"]) == 3 * 6  # no step lost or repeated


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(write_config, tmp_path, monkeypatch, capsys):
    real_loss = training.summed_token_loss
    calls = {"n": 0}

    def nan_in_second_epoch(model, batch):
        calls["n"] += 1
        loss_sum, n = real_loss(model, batch)
        return (loss_sum * float("nan") if calls["n"] == 8 else loss_sum), n

    monkeypatch.setattr(training, "summed_token_loss", nan_in_second_epoch)
    out = tmp_path / "out"
    code = run.main(["--config", str(write_config()), "--output", str(out), "--stages", "train"])
    err = capsys.readouterr().err
    assert code == 1
    assert "training loss became nan at epoch 2, step 2" in err and len(err.strip().splitlines()) == 1
    folder = out / "exp" / "default" / "seed-42"
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 1
    assert not (folder / "checkpoint.pt").exists() and not (folder / "metrics.json").exists()


def test_finished_runs_are_skipped_unless_forced_or_changed(tiny_experiment, tmp_path, capsys):
    exp = tiny_experiment("train: {epochs: 1}\n")
    train_stage(exp, tmp_path, force=False)
    folder = run_dir(tmp_path, exp, exp.runs[0])
    stamp = (folder / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    train_stage(exp, tmp_path, force=False)
    assert "already trained with this config; skipping" in capsys.readouterr().out
    assert (folder / "checkpoint.pt").stat().st_mtime_ns == stamp
    train_stage(exp, tmp_path, force=True)
    assert (folder / "checkpoint.pt").stat().st_mtime_ns != stamp
    changed = tiny_experiment("train: {epochs: 1, lr: 0.1}\n")
    stamp = (folder / "checkpoint.pt").stat().st_mtime_ns
    train_stage(changed, tmp_path, force=False)
    assert (folder / "checkpoint.pt").stat().st_mtime_ns != stamp
    assert json.loads((folder / "metrics.json").read_text())["config"]["train"]["lr"] == 0.1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_is_refused(tiny_experiment, tmp_path, precision):
    exp = tiny_experiment(f"train: {{precision: {precision}}}\n")
    with pytest.raises(UserError, match=f"{precision} needs a CUDA device"):
        train_stage(exp, tmp_path, force=False)


def test_fp16_training_scales_its_gradients_and_follows_fp32(tiny_experiment, tmp_path, monkeypatch):
    """fp16 autocast (the CPU's, here) with the gradient scaler: the scale starts at 2^16 and the loss curve
    stays within 1% of fp32's; the fingerprint tells the two apart."""
    monkeypatch.setattr(training, "MIXED_PRECISION_DEVICES", ("cuda", "cpu"))
    scales = []
    real_update = torch.amp.GradScaler.update

    def recorded(self, *args):
        if self.is_enabled():
            scales.append(self.get_scale())
        return real_update(self, *args)

    monkeypatch.setattr(torch.amp.GradScaler, "update", recorded)
    curves = {}
    for precision in ("fp32", "fp16"):
        exp = tiny_experiment(f"train: {{epochs: 2, precision: {precision}}}\n")
        train_stage(exp, tmp_path / precision, force=False)
        curves[precision] = json.loads((run_dir(tmp_path / precision, exp, exp.runs[0]) / "metrics.json").read_text())
    assert scales[0] == 2.0**16 and len(scales) == 12  # the fp16 run's 12 steps (fp32's scaler is off)
    assert curves["fp16"]["val_loss"] == pytest.approx(curves["fp32"]["val_loss"], rel=1e-2)
    assert curves["fp16"]["val_loss"] != curves["fp32"]["val_loss"]
    assert curves["fp16"]["fingerprint"] != curves["fp32"]["fingerprint"]


def test_a_compiled_model_trains_like_the_eager_one(tiny_experiment, tmp_path, monkeypatch):
    """train.compile: torch.compile of the training forward, here with the aot_eager backend (TorchDynamo's graph
    capture and AOTAutograd's backward, without inductor's minute of C++ compilation on this CPU); no dropout, so
    the same losses to rounding, and the same fingerprint (the same computation)."""
    calls = []
    real_compile = torch.compile

    def compile_for_the_test(module, **kwargs):
        calls.append(module)
        return real_compile(module, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_for_the_test)
    curves = {}
    for compiled in (False, True):
        exp = tiny_experiment(f"train: {{epochs: 1, compile: {str(compiled).lower()}}}\n"
                              "model: {config: {resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}}\n")
        train_stage(exp, tmp_path / str(compiled), force=False)
        curves[compiled] = json.loads((run_dir(tmp_path / str(compiled), exp, exp.runs[0]) / "metrics.json").read_text())
    assert len(calls) == 1
    assert curves[True]["step_loss"] == pytest.approx(curves[False]["step_loss"], rel=1e-5)
    assert curves[True]["fingerprint"] == curves[False]["fingerprint"]


def test_quickstart_config_leaves_every_training_file_for_both_runs(tmp_path):
    code = run.main(["--config", str(REPO / "config" / "quickstart.yaml"), "--stages", "train", "--output", str(tmp_path),
                     "--set", "train.epochs=1", "--set", "data.n_train=32"])
    assert code == 0
    manifest = json.loads((tmp_path / "quickstart" / "experiment.json").read_text())
    assert manifest["runs"] == ["small-batch", "large-batch"]
    for name in manifest["runs"]:
        folder = tmp_path / "quickstart" / name / "seed-42"
        for file in ("checkpoint.pt", "init.pt", "metrics.json", "tokenizer/tokenizer.json"):
            assert (folder / file).is_file(), file


def test_optimizers_and_schedules_follow_the_config():
    from config.schema import TrainConfig

    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(params, TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4
    adamw = make_optimizer(params, TrainConfig(optimizer="adamw", lr=1e-4, weight_decay=5e-4))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 5e-4

    def lrs(cfg, total):
        optimizer = torch.optim.SGD(params, lr=1.0)
        scheduler = train_state.make_scheduler(optimizer, cfg, total)
        values = []
        for _ in range(total):
            values.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return values

    assert lrs(TrainConfig(), 5) == [1.0] * 5  # the study's constant rate
    warm_cosine = lrs(TrainConfig(schedule="cosine", warmup_steps=2), 6)
    assert warm_cosine[:2] == [0.5, 1.0]
    assert warm_cosine[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)], abs=1e-12)


def test_gradient_clipping_bounds_the_update(tiny_experiment, tmp_path, monkeypatch):
    norms = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        real_clip(parameters, max_norm, *args, **kwargs)
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))))

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    train_stage(tiny_experiment("train: {epochs: 1, grad_clip: 0.01}\n"), tmp_path, force=False)
    assert len(norms) == 6 and max(norms) <= 0.01 * (1 + 1e-5)


def test_step_losses_are_the_token_mean_loss_of_each_step(tiny_experiment, tmp_path):
    """With one batch per epoch, each step's loss is that epoch's training loss (both token-weighted)."""
    exp = tiny_experiment("train: {epochs: 3, batch_size: 48}\n")
    train_stage(exp, tmp_path, force=False)
    metrics = json.loads((run_dir(tmp_path, exp, exp.runs[0]) / "metrics.json").read_text())
    assert metrics["step_loss"] == metrics["train_loss"] and len(metrics["step_loss"]) == 3


def test_each_rank_of_a_resumed_torchrun_job_draws_its_own_dropout_masks(monkeypatch):
    """last.pt of 2 ranks gives each rank its own random state back; last.pt of one process resumed by 2 ranks gives
    rank 0 that process's state and rank 1 a stream of its own (not rank 0's: the same masks on both shares), the
    same one on every resume."""
    from utils import distributed

    monkeypatch.setattr(distributed, "splits", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)

    def resumed(rank: int, saved: dict) -> torch.Tensor:
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        train_state._set_rng_state(saved, torch.device("cpu"), seed=42, epoch=3)
        return torch.get_rng_state()

    with torch.random.fork_rng():
        one = {"torch": torch.manual_seed(0).get_state()}
        two = {**one, "ranks": [one, {"torch": torch.manual_seed(1).get_state()}]}
        assert torch.equal(resumed(0, two), one["torch"]) and torch.equal(resumed(1, two), two["ranks"][1]["torch"])
        assert torch.equal(resumed(0, one), one["torch"])
        assert not torch.equal(resumed(1, one), one["torch"]) and torch.equal(resumed(1, one), resumed(1, one))


def test_a_run_that_starts_over_for_a_damaged_trajectory_keeps_its_pruner(tiny_experiment, tmp_path, monkeypatch,
                                                                          capsys):
    """A resume whose trajectory.npy is damaged starts over (it crashed on a malformed error before); a search's
    pruner (stop_after) still stops it, as it would have stopped the resumed run."""
    import optimization.training as training

    run = tiny_experiment("train: {epochs: 3, trajectory: {every: 2}}\n").runs[0]
    folder = tmp_path / "run"
    train_epoch = training._train_epoch

    def killed_in_the_last_epoch(t, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return train_epoch(t, epoch)

    monkeypatch.setattr(training, "_train_epoch", killed_in_the_last_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.train_run(run, folder)
    monkeypatch.setattr(training, "_train_epoch", train_epoch)
    (folder / "trajectory.npy").write_bytes(b"not an array")
    metrics = training.train_run(run, folder, stop_after=lambda epoch, val_loss: True)
    assert "trajectory.npy is corrupt" in capsys.readouterr().out
    assert metrics["pruned"]["epoch"] == 1 and len(metrics["val_loss"]) == 1


@pytest.mark.parametrize("period, calls", [(1, 6), (2, 3)])
def test_adahessian_gets_the_hessian_diagonal_of_each_step_in_the_rotated_coordinates(tiny_experiment, tmp_path,
                                                                                      monkeypatch, period, calls):
    """Without it AdaHessian differentiates the gradient itself, which the step does not keep a graph for: it fails."""
    given = []
    real = training.hessian_diagonal

    def recording(optimizer, model, batch, trainable, rotation, generator):
        given.append(rotation is not None and all(t.requires_grad for t in trainable))
        return real(optimizer, model, batch, trainable, rotation, generator)

    monkeypatch.setattr(training, "hessian_diagonal", recording)
    exp = tiny_experiment("train: {optimizer: adahessian, lr: 0.05, epochs: 1, rotation: global, "
                          f"optimizer_args: {{update_period: {period}}}}}\n")
    train_stage(exp, tmp_path, force=False)
    metrics = json.loads((run_dir(tmp_path, exp, exp.runs[0]) / "metrics.json").read_text())
    assert given == [True] * calls and all(math.isfinite(x) for x in metrics["step_loss"])
