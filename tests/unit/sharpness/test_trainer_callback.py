"""The Trainer callback on a tiny Llama trained for four steps by a plain Hugging Face Trainer, offline: its track
against the Hessian formed explicitly at the final weights (a 672-weight block, float64), its logs in the
Trainer's reporters (TensorBoard's event file), and a run with it against one without."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainingArguments

from optimization.optimizers import diagonal_preconditioner
from sharpness.hessian import as_batch
from optimization.tracking import gd_threshold
from sharpness.trainer_callback import SharpnessCallback, track_sharpness, train_settings
from tests.conftest import in_forked_processes
from tests.unit.sharpness.test_hessian import VOCAB, formed_hessian, tiny_llama
from utils.io import read_json

LR, BETA1 = 1e-2, 0.9


def texts() -> list[dict]:
    generator = torch.Generator().manual_seed(3)
    return [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, VOCAB, (8, 10), generator=generator)]


def trainer(folder, report_to: str, max_steps: int = 4, save_steps: int = 0) -> Trainer:
    saving = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "no"}
    args = TrainingArguments(output_dir=str(folder), max_steps=max_steps, per_device_train_batch_size=2,
                             learning_rate=LR, adam_beta1=BETA1, lr_scheduler_type="constant", report_to=report_to,
                             logging_steps=100, **saving, use_cpu=True, seed=0,
                             disable_tqdm=True, dataloader_num_workers=0)
    return Trainer(model=tiny_llama(), args=args, train_dataset=texts())


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tracked")
    batches = [torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TENSORBOARD_LOGGING_DIR", str(folder / "tb"))  # else ./runs
        run = trainer(folder, "tensorboard")
        # Llama's RMSNorm computes in float32 even in a float64 model: a warm point's residual cannot show below
        # ~1e-7, so at tol 1e-9 its refinement stalls there (and stops) instead of converging
        callback = track_sharpness(run, batches, every=2, iters=200, tol=1e-9)
        run.train()
    return run, batches, callback, folder


def test_the_track_holds_the_formed_hessians_top_eigenvalues_at_the_final_weights(tracked):
    run, batches, callback, folder = tracked
    track = read_json(folder / "track.json")
    assert track["optimizer"] == "adamw" and track["every"] == 2 and track["seed"] == 0
    points = track["points"]
    assert [p["step"] for p in points] == [0, 2, 4]
    assert points[0]["preconditioned_lambda_max"] is None  # no second moment before the first step
    exact = formed_hessian(run.model, [as_batch(b) for b in batches])
    assert points[-1]["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(exact)[-1]), rel=1e-6)
    params = [p for p in run.model.parameters() if p.requires_grad]
    scale = diagonal_preconditioner(run.optimizer.optimizer, params).rsqrt()
    preconditioned = scale[:, None] * exact * scale[None, :]
    assert points[-1]["preconditioned_lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(preconditioned)[-1]),
                                                                    rel=1e-6)
    assert points[-1]["preconditioned_threshold"] == pytest.approx((2 + 2 * BETA1) / ((1 - BETA1) * LR))
    assert points[-1]["threshold"] is None
    assert all(p["lambda_max_converged"] or p["lambda_max_stalled"] for p in points)
    assert all(p["lambda_max_hvps"] < 200 for p in points)


def test_the_points_after_steps_reach_the_trainers_logs_and_tensorboard(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _, folder = tracked
    track = read_json(folder / "track.json")["points"]
    logged = [entry for entry in run.state.log_history if "sharpness/lambda_max" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    assert [entry["sharpness/lambda_max"] for entry in logged] == [p["lambda_max"] for p in track[1:]]
    events = EventAccumulator(str(next((folder / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    scalars = events.Scalars("train/sharpness/preconditioned_lambda_max")
    assert [s.step for s in scalars] == [2, 4]
    assert [s.value for s in scalars] == pytest.approx([p["preconditioned_lambda_max"] for p in track[1:]], rel=1e-6)


def test_training_is_the_same_with_and_without_the_callback(tracked, tmp_path):
    tracked_run = tracked[0]
    plain = trainer(tmp_path, "none")
    plain.train()
    for (name, a), b in zip(plain.model.named_parameters(), tracked_run.model.parameters()):
        assert torch.equal(a, b), name
    assert plain.state.log_history[-1]["train_loss"] == tracked_run.state.log_history[-1]["train_loss"]


def test_a_resumed_run_continues_the_track_from_its_checkpoints_step(tracked, tmp_path):
    """Trained to step 2 with a checkpoint, then (as if stopped at step 3) resumed to step 4: the track holds
    steps 0, 2, 4 as the uninterrupted run's, its point past the checkpoint dropped."""
    track = read_json(tracked[3] / "track.json")["points"]
    batches = tracked[1]
    first = trainer(tmp_path, "none", max_steps=3, save_steps=2)
    track_sharpness(first, batches, every=2, iters=200, tol=1e-9)
    first.train()
    resumed = trainer(tmp_path, "none", save_steps=2)
    track_sharpness(resumed, batches, every=2, iters=200, tol=1e-9)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    points = read_json(tmp_path / "track.json")["points"]
    assert [p["step"] for p in points] == [0, 2, 4]
    assert [p["lambda_max"] for p in points] == pytest.approx([p["lambda_max"] for p in track], rel=1e-6)


def test_every_must_be_a_positive_number_of_steps_and_metrics_the_trackers():
    with pytest.raises(ValueError, match="every must be at least 1"):
        SharpnessCallback([torch.zeros(1, 2, dtype=torch.long)], every=0)
    with pytest.raises(ValueError, match="metrics must be some of lambda_max"):
        SharpnessCallback([torch.zeros(1, 2, dtype=torch.long)], every=1, metrics=["lambda_min"])


def test_the_thresholds_settings_are_read_from_the_trainers_optimizer():
    weights = [torch.nn.Parameter(torch.zeros(2))]
    heavy_ball = train_settings(torch.optim.SGD(weights, lr=0.1, momentum=0.9))
    assert heavy_ball.optimizer == "sgd" and gd_threshold(heavy_ball, 0.1) == pytest.approx(38.0)
    assert gd_threshold(train_settings(torch.optim.SGD(weights, lr=0.1, momentum=0.9, nesterov=True)), 0.1) is None
    adam = train_settings(torch.optim.Adam(weights, lr=0.1, betas=(0.8, 0.99), eps=1e-6))
    assert (adam.optimizer, adam.betas, adam.eps, adam.optimizer_args) == ("adam", [0.8, 0.99], 1e-6, {})
    assert train_settings(torch.optim.NAdam(weights)).optimizer == "NAdam"


MEASURED = {"metrics": ("lambda_max", "trace"), "iters": 30, "tol": 1e-9, "trace_samples": 2}


def _measure_on_rank(rank: int, folder: str, batches: list) -> None:
    """One rank of a gloo job (in_forked_processes): the callback's first point on its share of `batches`; the
    shares it measured on, in shares-<rank>.json."""
    import json

    import torch.distributed as dist

    import sharpness.trainer_callback as callback_module

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # the rendezvous in the environment in_forked_processes gives its ranks
    shares = []

    class Recorded(callback_module.Hessian):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            shares.append(len(self.objective.batches))

    callback_module.Hessian = Recorded
    model = tiny_llama()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    callback = SharpnessCallback(batches, every=1, folder=folder, **MEASURED)
    args = SimpleNamespace(output_dir=folder, run_name="ddp", seed=0)
    callback.on_train_begin(args, SimpleNamespace(global_step=0), None, model=model, optimizer=optimizer)
    (Path(folder) / f"shares-{rank}.json").write_text(json.dumps({"shares": shares, **callback.tracker.points[0]}))
    dist.destroy_process_group()


def test_under_ddp_each_rank_measures_its_share_and_gets_the_whole_sets_numbers(tmp_path):
    """Two gloo processes, each given the same 2 batches: each measures on one (its share), and λ_max and the trace,
    on every rank, are those of one process measuring both."""
    import json

    generator = torch.Generator().manual_seed(5)
    batches = [torch.randint(0, VOCAB, (2, 12), generator=generator) for _ in range(2)]
    folder = tmp_path / "ddp"
    folder.mkdir()
    in_forked_processes(_measure_on_rank, str(folder), batches)
    whole = SharpnessCallback(batches, every=1, folder=tmp_path / "one", **MEASURED)
    model = tiny_llama()
    whole.on_train_begin(SimpleNamespace(output_dir=str(tmp_path / "one"), run_name="one", seed=0),
                         SimpleNamespace(global_step=0), None, model=model,
                         optimizer=torch.optim.SGD(model.parameters(), lr=LR))
    expected = whole.tracker.points[0]
    for rank in range(2):
        point = json.loads((folder / f"shares-{rank}.json").read_text())
        assert point["shares"] == [1]  # one of the two batches
        assert point["lambda_max"] == pytest.approx(expected["lambda_max"], rel=1e-9)
        assert point["trace"] == pytest.approx(expected["trace"], rel=1e-9)
    assert read_json(folder / "track.json")["points"][0]["lambda_max"] == pytest.approx(expected["lambda_max"], rel=1e-9)
