"""What a run costs (metrics.json), training budgets (train.budget) and the experiment trackers (logging)."""

from __future__ import annotations

import json

import pytest

from optimization.cost import step_flops
from optimization.train_stage import train_stage
from pipeline import run_experiment
from models.runs import run_dir, training_fingerprint

RUNS = """
train: {optimizer: adamw, lr: 0.01, epochs: 4}
runs:
  full: {}
  lora: {model: {adapter: {type: lora, r: 2}}}
"""


def _metrics(tmp_path, exp, run):
    return json.loads((run_dir(tmp_path, exp, run) / "metrics.json").read_text())


def test_metrics_record_steps_tokens_flops_and_utilisation(tiny_experiment, tmp_path):
    exp = tiny_experiment(RUNS)
    train_stage(exp, tmp_path, force=False)
    full, lora = (_metrics(tmp_path, exp, run) for run in exp.runs)
    for m in (full, lora):
        assert m["optimizer_steps"] == 4 * 6 and m["at_step"] == [6, 12, 18, 24]
        assert m["at_flops"][-1] == m["train_flops"] > 0 and m["at_seconds"][-1] == m["train_time_s"]
        assert m["device_peak_flops"] > 0 and "probe" in m["device_peak_source"]
        assert m["mfu"] == pytest.approx(m["train_flops"] / m["train_time_s"] / m["device_peak_flops"])
        assert m["peak_memory_mb"] > 0 and m["wall_time_s"] >= m["train_time_s"]
    assert full["trainable_parameters"] == full["n_parameters"] == lora["n_parameters"] - lora["trainable_parameters"]
    assert lora["train_flops"] < full["train_flops"]  # the frozen weights get no weight gradients


def test_a_flop_budget_stops_training_where_it_is_spent(tiny_experiment, tmp_path):
    exp = tiny_experiment(RUNS)
    train_stage(exp, tmp_path / "free", force=False)
    full = _metrics(tmp_path / "free", exp, exp.runs[0])
    budget = full["at_flops"][1] * 0.75  # spent during the second epoch
    limited = tiny_experiment(RUNS, overrides=[f"train.budget.flops={budget}"])
    assert training_fingerprint(limited.runs[0]) != training_fingerprint(exp.runs[0])
    train_stage(limited, tmp_path / "budget", force=False)
    for run, free in zip(limited.runs, exp.runs):
        m, unlimited = _metrics(tmp_path / "budget", limited, run), _metrics(tmp_path / "free", exp, free)
        step = m["budget"]["step"]
        assert m["budget"]["stopped_by"] == "flops" and m["optimizer_steps"] == step == m["at_step"][-1]
        assert m["train_flops"] >= budget  # spent by the step it stopped after
        per_step = unlimited["train_flops"] / unlimited["optimizer_steps"]
        assert m["train_flops"] - budget < 2 * per_step  # and not a step later
        assert m["train_loss"][0] == unlimited["train_loss"][0]  # the same training up to the stop
        assert (run_dir(tmp_path / "budget", limited, run) / "checkpoint.pt").is_file()
    full, lora = (_metrics(tmp_path / "budget", limited, run) for run in limited.runs)
    assert lora["optimizer_steps"] > full["optimizer_steps"]  # the same FLOPs buy LoRA more steps


def test_step_flops_follow_the_padded_batch_shape(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    assert step_flops(model, 4, 16) == 4 * step_flops(model, 1, 16)
    assert step_flops(model, 2, 32) > 2 * step_flops(model, 2, 16)  # attention grows with T²


def test_tensorboard_logs_the_steps_the_epochs_and_the_figures(tiny_experiment, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp = tiny_experiment("logging: {backend: tensorboard, every: 2}\nlandscape: {resolution: 3, points: 3, "
                          "eval_batches: 1, eval_batch_size: 4}\n")
    run_experiment(exp, ["train", "landscape", "report"], tmp_path)
    events = EventAccumulator(str(run_dir(tmp_path, exp, exp.runs[0]) / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    metrics = _metrics(tmp_path, exp, exp.runs[0])
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(2, 13, 2))
    assert [e.value for e in losses] == pytest.approx(metrics["step_loss"][1::2], rel=1e-6)
    assert [e.value for e in events.Scalars("epoch/val_loss")] == pytest.approx(metrics["val_loss"], rel=1e-6)
    figures = EventAccumulator(str(tmp_path / exp.name / "tensorboard"), size_guidance={"images": 0})
    figures.Reload()
    assert "figures/learning_curves" in figures.Tags()["images"]


def test_a_local_llama_is_counted_and_a_model_without_a_count_trains_and_refuses_a_flop_budget(tmp_path, write_config,
                                                                                                monkeypatch):
    from transformers import AutoModelForCausalLM, LlamaConfig

    import optimization.train_setup
    import run
    from models.models import byte_tokenizer

    tokenizer = byte_tokenizer()
    llama = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    config = write_config(f"model: {{init: pretrained, name: {tmp_path / 'llama'}, tokenizer: '', config: {{}}}}\n"
                          "train: {epochs: 1}\n")
    assert run.main(["--config", str(config), "--output", str(tmp_path / "out"), "--stages", "train"]) == 0
    metrics = json.loads(next((tmp_path / "out").glob("*/*/seed-*/metrics.json")).read_text())
    assert metrics["train_flops"] > 0 and metrics["mfu"] > 0 and metrics["optimizer_steps"] == 6

    def uncountable(*args):
        raise ValueError("the model's step cannot be counted on the meta device (an example)")

    monkeypatch.setattr(optimization.train_setup, "step_flops", uncountable)
    assert run.main(["--config", str(config), "--output", str(tmp_path / "plain"), "--stages", "train"]) == 0
    metrics = json.loads(next((tmp_path / "plain").glob("*/*/seed-*/metrics.json")).read_text())
    assert metrics["train_flops"] is None and metrics["mfu"] is None and metrics["optimizer_steps"] == 6
    assert run.main(["--config", str(config), "--output", str(tmp_path / "budget"), "--stages", "train",
                     "--set", "train.budget.flops=1e9"]) == 1
    assert not list((tmp_path / "budget").glob("*/*/seed-*/*.pt"))  # stopped before anything was written


def test_peak_memory_sees_a_peak_inside_its_window_that_has_gone_by_its_end(monkeypatch):
    """The sampling thread catches a resident-set peak that is over before stop() (a process whose memory rises to
    300 MiB and falls back to 120 MiB between the start and the stop), and not the process's earlier peaks. The
    process is a stand-in: a real allocation may reuse pages already resident, which no RSS probe can see."""
    import threading
    from types import SimpleNamespace

    import torch

    import utils.device
    from utils.device import PeakMemory

    read_start, sampled = threading.Event(), threading.Event()
    readings = iter([100, 300])  # MiB: at the start, then at the first sample; 120 afterwards

    class Process:
        def memory_info(self):
            rss = next(readings, 120)
            if rss == 300:  # the thread's first sample waits until the test has read the start's: no race on a busy CPU
                read_start.wait(600)
            if rss == 120:
                sampled.set()
            return SimpleNamespace(rss=rss * 2**20)

    monkeypatch.setattr(utils.device.psutil, "Process", Process)
    memory = PeakMemory(torch.device("cpu"), interval=0.001)
    assert memory.peak == 100 * 2**20
    read_start.set()
    assert sampled.wait(600)  # the thread has sampled past the peak (a guard against a hang, not a speed check)
    assert memory.stop() == 300


def test_tracked_sharpness_is_logged_live_beside_the_loss(tiny_experiment, tmp_path):
    """train.track's points reach TensorBoard as they are measured (track/lambda_max, its threshold), step 0
    included, with the values track.json holds."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp = tiny_experiment("logging: {backend: tensorboard}\ntrain: {track: {every: 4, iters: 10}}\n"
                          "sharpness: {batches: 1, batch_size: 4}\n")
    run_experiment(exp, ["train"], tmp_path)
    folder = run_dir(tmp_path, exp, exp.runs[0])
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    points = json.loads((folder / "track.json").read_text())["points"]
    logged = events.Scalars("track/lambda_max")
    assert [e.step for e in logged] == [p["step"] for p in points] and logged[0].step == 0
    assert [e.value for e in logged] == pytest.approx([p["lambda_max"] for p in points], rel=1e-6)
    assert [e.value for e in events.Scalars("track/threshold")] == pytest.approx([p["threshold"] for p in points])
