"""Every stage's cost before it runs (optimization.stage_cost): the passes it counts are the passes the stages make."""

from __future__ import annotations

import json

import pytest
import torch

import optimization.prune_stage
import optimization.train_setup
import optimization.training
from models.runs import run_dir
from optimization.objective import Objective
from optimization.cost import GRAPH_PER_GRADIENT, HVP_PER_GRADIENT, sequence_flops
from optimization.stage_cost import (DEFAULT_STAGES, KINDS, PASSES, UNCOSTED_STAGES, Passes, _line_points,
                                     hvp_passes, search_passes, train_passes,
                                     announce_long_run, flops, seconds, stage_costs, stage_passes, totals)
from optimization.throughput import Throughput
from pipeline import STAGES
from utils.errors import UserError

# Every solver at most 10 steps: Lanczos cannot flag convergence before (optimization.curvature.MIN_STABLE_STEPS), so
# it runs to max_iter and the counts are exact, not bounds.
EVERY_PASS = """
sharpness: {batches: 2, batch_size: 4, max_iter: 6, top_k: 2, epsilons: [1.0e-3, 1.0e-2], random_directions: 2,
            worst_case_steps: 2, trace_samples: 2, merged: true, density: {probes: 1, steps: 4}}
geometry: {cauchy_vectors: 5, bootstrap: 0, frobenius_probes: 4, rotation: global}
landscape: {resolution: 3, points: 3, alpha_min: 0.0, alpha_max: 1.0, eval_batches: 2, eval_batch_size: 4,
            val_surface: true}
prune: {fractions: [0.0, 0.5], random_seeds: 1, lambda_max_fractions: [0.5], rewind: true, rewind_fractions: [0.5]}
runs:
  full: {}
  lora: {model: {adapter: {type: lora, r: 2}}}
"""


@pytest.fixture
def counted(monkeypatch):
    """Batch passes of each kind that the stages make: the objectives' losses, gradients and HVPs, the training's
    evaluations, the pruning's retraining steps (the training's steps: metrics.json); and the trainings set up."""
    made = dict.fromkeys(KINDS, 0)

    def counting(method, kind):
        def wrapper(self, *args, **kwargs):
            made[kind] += len(self.batches)
            return method(self, *args, **kwargs)
        return wrapper

    for name, kind in (("loss", "forward"), ("loss_and_grad", "gradient"), ("hvp", "hvp")):
        monkeypatch.setattr(Objective, name, counting(getattr(Objective, name), kind))
    made["graph"] = 0
    build = Objective._gradient_graph

    def building(self, *args, **kwargs):  # one batch's gradient graph, built for HVPs
        made["graph"] += 1
        return build(self, *args, **kwargs)

    monkeypatch.setattr(Objective, "_gradient_graph", building)
    evaluate, retrain = optimization.training.evaluate, optimization.prune_stage.retrain_masked

    def evaluating(model, batches, device):
        made["forward"] += len(batches)
        return evaluate(model, batches, device)

    def retraining(*args, **kwargs):
        losses = retrain(*args, **kwargs)
        made["step"] += len(losses)
        return losses

    for module in (optimization.training, optimization.train_setup):
        monkeypatch.setattr(module, "evaluate", evaluating)
    made["setup"], set_up = 0, optimization.training.set_up

    def setting_up(*args, **kwargs):  # a training's model built and its checkpoints written
        made["setup"] += 1
        return set_up(*args, **kwargs)

    monkeypatch.setattr(optimization.training, "set_up", setting_up)
    monkeypatch.setattr(optimization.prune_stage, "retrain_masked", retraining)
    return made


def test_every_stage_makes_the_passes_its_estimate_counts(tiny_experiment, tmp_path, counted):
    experiment = tiny_experiment(EVERY_PASS)
    stages = ["train", "sharpness", "geometry", "landscape", "prune"]
    for stage in stages:
        before = dict(counted)
        STAGES[stage].handler()(experiment, tmp_path, False)
        made = {kind: counted[kind] - before[kind] for kind in counted}
        estimated = totals([p for _, _, passes in stage_passes(experiment, stage, stages) for p in passes])
        if stage == "train":  # training steps are not the objective's: metrics.json counts them
            made["step"] = sum(json.loads((run_dir(tmp_path, experiment, run) / "metrics.json").read_text())
                               ["optimizer_steps"] for run in experiment.jobs())
        assert made == estimated, stage
    assert counted["gradient"] and counted["hvp"] and counted["step"] and counted["setup"]  # every kind is exercised
    folder = run_dir(tmp_path, experiment, experiment.runs[0])
    hvps = json.loads((folder / "sharpness.json").read_text())["hvp_total"]
    # sharpness.json's own count: 6 Lanczos steps, 3 true residuals, 1 + 2 curvatures, 2 trace samples
    assert hvps == 6 + 3 + 3 + 2


def test_a_search_trains_its_trials_as_the_estimate_counts(tiny_experiment, tmp_path, monkeypatch):
    """search.n_trials trainings, each making the passes train_passes counts of its run (exact: the test above);
    a space over train.lr leaves every trial's passes the search run's, so the estimate is the count."""
    import optimization.search_stage

    trained = []
    monkeypatch.setattr(optimization.search_stage, "train_run",
                        lambda run, *args, **kwargs: trained.append(run) or {"val_loss": [1.0]})
    experiment = tiny_experiment("search: {n_trials: 3, space: {train.lr: {loguniform: [0.01, 1.0]}}, "
                                 f"storage: 'journal:{tmp_path / 'study.log'}'}}\n")  # quicker to open than SQLite
    STAGES["search"].handler()(experiment, tmp_path, False)
    made = totals([p for run in trained for p in train_passes(run)])
    estimated = totals([p for _, _, passes in stage_passes(experiment, "search", ["search"]) for p in passes])
    assert len(trained) == 3 and made == estimated
    assert estimated == {kind: 3 * count for kind, count in totals(train_passes(experiment.runs[0])).items()}


def test_flops_and_seconds_of_a_pass():
    """A pass's FLOPs are its texts times one sequence's (an HVP HVP_PER_GRADIENT gradients, and its graphs
    GRAPH_PER_GRADIENT each time they are built); its seconds are its batches times one batch's, timed once per batch
    shape."""
    from config.schema import RunConfig

    run = RunConfig()
    run.model.init, run.model.tokenizer, run.model.bpe_vocab_size = "scratch", "bpe", 300
    run.model.config = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32}
    run.data.max_length = 32
    forward, gradient = sequence_flops(run)
    assert gradient == pytest.approx(3 * forward, rel=0.05)  # backward: two matmuls per forward one, bar the embeddings
    hvp = hvp_passes(run, "hvps", 5, 2, 10, 4)  # 5 HVPs at 2 weights: their graphs built twice
    per_hvp = 5 * HVP_PER_GRADIENT + 2 * GRAPH_PER_GRADIENT
    assert hvp.batches == 3 and flops(run, hvp) == pytest.approx(10 * per_hvp * gradient)
    throughput, rng = Throughput(torch.device("cpu")), torch.get_rng_state()
    per_gradient = throughput.seconds(run, "gradient", 4)
    assert seconds(run, hvp, throughput) == pytest.approx(3 * per_hvp * per_gradient)
    run.sharpness.graph_memory = 0  # no graph kept: each HVP builds its own
    assert hvp_passes(run, "hvps", 5, 2, 10, 4).graphs == 5
    timing = throughput.calibration_s
    assert throughput.seconds(run, "gradient", 4) == per_gradient and throughput.calibration_s == timing  # timed once
    assert throughput.seconds(run, "step", 4) > 0 and throughput.calibration_s > timing  # a step is timed on its own
    assert throughput.seconds(run, "forward", 4) > 0 and "timed per batch shape on the cpu" in throughput.source
    assert torch.equal(torch.get_rng_state(), rng)  # run.py times before training: no draw may change the run's
    run.train.optimizer = "adahessian"  # its step takes the Hessian's diagonal, as training gives it
    assert throughput.seconds(run, "step", 4) > 0 and len(throughput.rates[next(iter(throughput.rates))]) == 3


def test_the_bookkeeping_of_a_training_and_a_search_is_timed_once_and_priced_per_run(monkeypatch):
    """A training's set-up: its model built, init.pt and checkpoint.pt written (weights) and last.pt (weights and the
    optimizer's state) after every epoch but the last; a search: its study opened once, its trials told. No FLOPs."""
    import optimization.throughput
    from config.schema import RunConfig

    run = RunConfig()
    run.model.init, run.model.tokenizer, run.model.bpe_vocab_size = "scratch", "bpe", 300
    run.model.config = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32}
    run.data.max_length, run.train.epochs, run.search.n_trials = 32, 3, 4
    saved = []  # what _saving_time writes: a weights file takes 0.1 s here, a last.pt 0.3 s, any pass 1 ms
    monkeypatch.setattr(optimization.throughput, "save_torch", lambda path, checkpoint: saved.append(sorted(checkpoint)))

    def typical_time(work):
        files = len(saved)
        work()
        return 1e-3 if len(saved) == files else 0.3 if "optimizer" in saved[-1] else 0.1

    monkeypatch.setattr(optimization.throughput, "_typical_time", typical_time)
    throughput = Throughput(torch.device("cpu"))
    setup = seconds(run, Passes("set-up", "setup", 1, 1, 1), throughput)
    build = throughput.setups[next(iter(throughput.setups))]["build"]
    assert 0 < build < 5 and setup == pytest.approx(build + 2 * 0.1 + (3 - 1) * 0.3)
    assert saved == [["model"], ["model", "optimizer"]]  # timed once each
    studied = []
    monkeypatch.setattr(optimization.throughput, "_timed_study", lambda: studied.append(1) or {"study": 3.0, "trial": 0.5})
    search = search_passes(run)
    assert [p.count for p in search if p.kind in ("setup", "study", "trial")] == [4, 1, 4]
    assert sum(seconds(run, p, throughput) for p in search if p.kind in ("setup", "study", "trial")) == pytest.approx(
        4 * setup + 3.0 + 4 * 0.5)
    assert studied == [1] and totals(search)["setup"] == 4  # the study timed once
    assert all(flops(run, p) == 0 for p in search if p.kind in ("setup", "study", "trial"))
    assert Throughput(torch.device("cuda")).seconds(run, "setup", 1) == 0  # a GPU's runs: priced by their FLOPs


def test_a_scratch_folder_without_room_prices_no_checkpoint(monkeypatch):
    import errno

    import optimization.throughput

    def full(path, checkpoint):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(optimization.throughput, "save_torch", full)
    assert optimization.throughput._saving_time({"model": {"w": torch.zeros(3)}}) == 0.0


def test_a_scratch_study_is_opened_and_told_as_a_search_does():
    from optimization.throughput import _timed_study

    timed = _timed_study()
    assert sorted(timed) == ["study", "trial"] and all(0 < s < 30 for s in timed.values())


def test_a_large_model_is_not_built_to_be_timed(monkeypatch):
    """Its weights could take GBs: its passes run at the CPU's matmul peak × assumed_mfu, as a GPU's at its peak."""
    from config.schema import RunConfig
    from optimization.cost import cpu_matmul_peak, load_prices

    run = RunConfig()  # DistilGPT2's shape
    forward, step = sequence_flops(run)  # counted on the meta device (and kept)
    monkeypatch.setattr("optimization.throughput.CALIBRATION_WEIGHTS", 1e6)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_config", None)  # building it would fail
    throughput = Throughput(torch.device("cpu"))
    rate = cpu_matmul_peak() * load_prices().assumed_mfu
    assert throughput.seconds(run, "forward", 8) == pytest.approx(8 * forward / rate)
    assert throughput.seconds(run, "step", 8) == pytest.approx(8 * step / rate)
    assert throughput.seconds(run, "setup", 1) == 0  # not built: its passes take minutes, its set-up seconds


def test_a_long_run_is_announced_stage_by_stage(tiny_experiment, capsys, monkeypatch, tmp_path):
    experiment = tiny_experiment(EVERY_PASS)
    costs, _ = stage_costs(experiment, ["train", "sharpness", "report"], torch.device("cpu"))
    assert [cost.stage for cost in costs] == ["train", "sharpness"]  # the report does no such work
    assert costs[0].seconds == pytest.approx(sum(costs[0].parts.values()))
    assert costs[0].largest_part().startswith(max(costs[0].parts, key=costs[0].parts.get) + " (")
    timed = []
    monkeypatch.setattr(Throughput, "_timed", lambda *args: timed.append(args))
    announce_long_run(experiment, ["train", "sharpness"], tmp_path)
    assert capsys.readouterr().out == "" and not timed  # seconds even at 1% of the CPU's peak: nothing is timed
    monkeypatch.undo()
    monkeypatch.setattr("optimization.stage_cost.LONG_RUN_S", 0)
    announce_long_run(experiment, ["train", "sharpness", "report"], tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"{experiment.name}: estimated at most ")
    assert lines[1].startswith("  train ") and "training-step batch passes" in lines[1]
    assert lines[2].startswith("  sharpness ") and " HVP batch passes" in lines[2]


def test_inputs_the_training_cannot_read_stop_the_run_before_the_model_is_counted_or_timed(tiny_experiment, monkeypatch,
                                                                                            tmp_path):
    """An offline hub dataset: its error comes first (it once came after a DistilGPT2 was counted and timed); a run
    trained already, which the train stage skips, has its texts left unread."""
    import data.corpus

    experiment = tiny_experiment("runs: {a: {}, b: {data: {n_train: 24}}}")
    read, counted = [], []

    def unreadable(cfg):
        read.append(cfg.n_train)
        raise UserError("could not load dataset wikitext/wikitext-2-raw-v1 from the hub or its cache")

    monkeypatch.setattr(data.corpus, "_read_texts", unreadable)
    monkeypatch.setattr("optimization.stage_cost.stage_passes", lambda *args: counted.append(args) or [])
    monkeypatch.setattr(Throughput, "_timed", lambda *args: counted.append(args))
    (run_dir(tmp_path, experiment, experiment.runs[0])).mkdir(parents=True)
    (run_dir(tmp_path, experiment, experiment.runs[0]) / "metrics.json").write_text("{}")  # a trained
    with pytest.raises(UserError, match="could not load dataset"):
        announce_long_run(experiment, ["train", "sharpness"], tmp_path)
    assert read == [24] and not counted
    announce_long_run(experiment, ["sharpness"], tmp_path)  # nothing to train: no texts read for it
    assert read == [24] and counted


def test_a_hub_model_the_training_cannot_load_stops_the_run_before_it_is_counted(tiny_experiment, monkeypatch,
                                                                                 tmp_path):
    """Its config is read first (kilobytes); counted, its error would leave the run unannounced, not stopped."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    experiment = tiny_experiment("model: {init: pretrained, name: nobody/no-such-model, tokenizer: '', config: {}}")
    with pytest.raises(UserError, match="'nobody/no-such-model' is not in the local Hugging Face cache"):
        announce_long_run(experiment, ["train"], tmp_path)


def test_what_the_estimate_knows_of_other_layers_is_theirs(tiny_experiment):
    """optimization imports neither pipeline nor visualization: its copies of their facts must agree with them."""
    from pipeline import DEFAULT_STAGES as PIPELINE_DEFAULTS, STAGES as PIPELINE_STAGES
    from visualization.interpolation import interpolation_alphas

    assert list(DEFAULT_STAGES) == [stage for stage in PIPELINE_DEFAULTS if stage in PASSES]
    assert set(PASSES) | set(UNCOSTED_STAGES) == set(PIPELINE_STAGES) and not set(PASSES) & set(UNCOSTED_STAGES)
    for line in ("{}", "{points: 5, alpha_min: 0.0, alpha_max: 1.0}", "{points: 4, alpha_min: -0.3, alpha_max: 1.7}",
                 "{points: 2, alpha_min: 0.25, alpha_max: 0.75}"):
        run = tiny_experiment(f"landscape: {line}\n").runs[0]
        assert _line_points(run) == len(interpolation_alphas(run.landscape)), line


def test_tracked_points_make_at_most_the_hvps_counted_and_exactly_that_when_none_converges(tiny_experiment, tmp_path):
    """train.track: a cold first point (its Lanczos steps and a true residual), then warm points (the two kept
    vectors and the steps added); Adam's preconditioned λ from the first step on. With a tolerance no point meets,
    every point takes all its steps: the estimate is then the count, not a bound."""
    experiment = tiny_experiment("train: {epochs: 1, optimizer: adam, lr: 0.003, "
                                 "track: {every: 2, iters: 5, tol: 1.0e-12, metrics: [lambda_max, preconditioned_lambda_max]}}")
    STAGES["train"].handler()(experiment, tmp_path, False)
    track = json.loads((run_dir(tmp_path, experiment, experiment.runs[0]) / "track.json").read_text())
    (estimated,) = [p.count for p in train_passes(experiment.runs[0]) if p.what == "train.track"]
    assert [p["lambda_max_start"] for p in track["points"]] == ["cold"] + ["warm"] * (len(track["points"]) - 1)
    assert track["hvps"] == estimated == (5 + 1) + 3 * (5 + 2) + (5 + 1) + 2 * (5 + 2)  # 6 steps: 4 points
