"""What one pass of each kind (optimization.stage_cost: forward, gradient, HVP and its graph, training step) and each
bookkeeping around a training take on the experiment's device, for the stage estimates.

On a CPU: a loss, a gradient and a training step of the run's model (random weights, random tokens) timed at each batch
shape the stages use; on a GPU, FLOPs / (its datasheet peak at the run's precision × the price table's assumed_mfu), as
optimization.estimate prices training. The bookkeeping (BOOKKEEPING) is timed on the calibration's model and on a
scratch study: a training's set-up only where the model is small enough to be timed on a CPU (a model priced by its
FLOPs trains for minutes or more, and its set-up takes seconds).
"""

from __future__ import annotations

import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from config.schema import RunConfig
from models.adapters import add_adapter
from optimization.cost import cpu_matmul_peak, kind_flops, load_prices, model_config, peak_for_name, sequence_flops
from utils.io import save_torch

BOOKKEEPING = ("setup", "study", "trial")  # a training's set-up, a study opened, a trial told (stage_cost's docstring)
CALIBRATION_SECONDS = 0.5  # a forward this long is compute-bound: larger batches of the model reuse its FLOP/s
# A model with more weights is not built for timing (its weights would take GBs of memory before the run needs them):
# it is compute-bound, and its passes run at the CPU's matmul peak (cost.cpu_matmul_peak) × the price table's assumed_mfu
CALIBRATION_WEIGHTS = 5e8


class Throughput:
    """Seconds of one pass of each kind over a batch of a run's model on `device`. On a CPU, a loss, a gradient and
    a training step (its optimizer's update included) of the model (random weights) on random tokens, timed once per
    architecture and batch shape: a small model's passes cost more per call than their FLOPs say (a tiny model's
    gradient took 7 forwards, not 3; an AdaHessian step 4.6 gradients), and the timing sees it; once a forward takes
    CALIBRATION_SECONDS or more it is compute-bound, and every pass of that architecture runs at its FLOP/s. On a
    GPU: its peak × the price table's assumed_mfu."""

    def __init__(self, device: torch.device):
        self.device = device
        # (architecture, length) -> {(batch size, with adapter[, optimizer]), or 0 once compute-bound: FLOP/s}
        self.rates: dict[tuple, dict] = {}
        self.architectures: dict[str, str] = {}  # model settings -> its transformers config (JSON)
        self.objectives: dict[tuple, object] = {}  # a timed (architecture, length, shape)'s Objective, for its steps
        self.setups: dict[tuple, dict] = {}  # (architecture, with adapter) -> seconds of building it, of a weights file
        self.study_s: dict[str, float] = {}  # _timed_study's
        self.calibration_s = 0.0
        self.source = ""

    def seconds(self, run: RunConfig, kind: str, batch_size: int, merged: bool = False) -> float:
        """Seconds of one pass of `kind` over a batch of batch_size texts of data.max_length tokens (of a BOOKKEEPING
        kind: its seconds once)."""
        if kind in BOOKKEEPING:
            return self._bookkeeping(run, kind)
        work = batch_size * kind_flops(run, kind, merged)
        if self.device.type == "cuda":
            peak, source = peak_for_name(torch.cuda.get_device_name(self.device), run.train.precision)
            mfu = load_prices().assumed_mfu
            self.source = f"{source} × assumed_mfu {mfu:g}"
            return work / ((peak or math.nan) * mfu)
        if repr(run.model) not in self.architectures:  # runs of one architecture share their rates
            self.architectures[repr(run.model)] = model_config(run).to_json_string()
        rates = self.rates.setdefault((self.architectures[repr(run.model)], run.data.max_length), {})
        shape = (batch_size, run.model.adapter.type != "none" and not merged)
        if 0 not in rates and shape not in rates:
            with torch.random.fork_rng(devices=[]):  # the random weights and tokens draw nothing from the run's RNG
                rates[shape] = self._timed(run, shape, merged)
            if rates[shape]["bound"]:
                rates[0] = rates[shape]
        if kind == "step" and 0 not in rates:
            update = (*shape, repr(run.train))
            if update not in rates:
                with torch.random.fork_rng(devices=[]):
                    rates[update] = self._timed_step(shape, run, batch_size * kind_flops(run, "step", merged))
            rate = rates[update]["rate"]
        else:
            rate = (rates.get(0) or rates[shape])["forward" if kind == "forward" else "gradient"]
        self._say_timed()
        return work / rate

    def _say_timed(self) -> None:
        self.source = (f"a loss, a gradient and a training step timed per batch shape on the {self.device.type}, and "
                       f"the bookkeeping: {self.calibration_s:.1f} s")

    def _timed(self, run: RunConfig, shape: tuple[int, bool], merged: bool) -> dict:
        """Forward and gradient FLOP/s of the model at this batch shape (_typical_time of each), and whether the
        forward is compute-bound (then the gradient is not timed but taken at the forward's FLOP/s); a model of
        more than CALIBRATION_WEIGHTS is not timed at all."""
        from transformers import AutoModelForCausalLM

        from optimization.objective import Objective

        start = time.perf_counter()
        (batch_size, adapted), config = shape, model_config(run)
        forward, gradient = (batch_size * f for f in sequence_flops(run, merged))
        if forward / (2 * batch_size * run.data.max_length) > CALIBRATION_WEIGHTS:  # ≈ its matmul weights
            rate = cpu_matmul_peak() * load_prices().assumed_mfu  # compute-bound: as a GPU's peak × assumed_mfu
            return {"forward": rate, "gradient": rate, "bound": True}
        model = AutoModelForCausalLM.from_config(config)
        if adapted:
            model = add_adapter(model, run.model.adapter, 0)
        model = model.to(self.device)
        build_s = time.perf_counter() - start
        tokens = torch.randint(0, config.vocab_size, (batch_size, run.data.max_length))
        batch = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens), "labels": tokens}
        objective = Objective(model, [batch])
        forward_s = _typical_time(objective.loss)
        bound = forward_s >= CALIBRATION_SECONDS
        if not bound:
            self.objectives[(self.architectures[repr(run.model)], run.data.max_length, *shape)] = objective
        gradient_rate = forward / forward_s if bound else gradient / _typical_time(objective.loss_and_grad)
        built = (self.architectures[repr(run.model)], adapted)
        if built not in self.setups:  # the same at every batch shape
            self.setups[built] = {"build": build_s, "weights_file": _saving_time({"model": model.state_dict()})}
        self.calibration_s += time.perf_counter() - start
        return {"forward": forward / forward_s, "gradient": gradient_rate, "bound": bound}

    def _bookkeeping(self, run: RunConfig, kind: str) -> float:
        """Seconds of a training's set-up (on a CPU, for a model small enough to be timed: none otherwise), of opening
        a study, or of a trial's asking and telling it (BOOKKEEPING)."""
        if kind != "setup":
            if not self.study_s:
                start = time.perf_counter()
                self.study_s = _timed_study()
                self.calibration_s += time.perf_counter() - start
                if self.device.type != "cuda":
                    self._say_timed()
            return self.study_s[kind]
        if self.device.type == "cuda":
            return 0.0
        self.seconds(run, "step", run.train.batch_size)  # times the model, and its steps unless compute-bound
        architecture, adapted = self.architectures[repr(run.model)], run.model.adapter.type != "none"
        setup = self.setups.get((architecture, adapted))
        if setup is None:  # too large to be built for timing
            return 0.0
        # last.pt timed with the run's optimizer, or (a compute-bound model's steps are not timed) as a weights file
        last = self.rates[(architecture, run.data.max_length)].get((run.train.batch_size, adapted, repr(run.train)))
        return (setup["build"] + 2 * setup["weights_file"]  # init.pt, checkpoint.pt
                + (run.train.epochs - 1) * (last or {}).get("file", setup["weights_file"]))

    def _timed_step(self, shape: tuple[int, bool], run: RunConfig, gradient: float) -> dict:
        """FLOP/s of a training step with the run's optimizer (its weights put back after), and the seconds of
        writing last.pt's weights and optimizer state."""
        from optimization.optimizers import hessian_diagonal, make_optimizer, needs_hessian_diagonal

        start = time.perf_counter()
        objective = self.objectives[(self.architectures[repr(run.model)], run.data.max_length, *shape)]
        optimizer, generator = make_optimizer(objective.params, run.train), torch.Generator().manual_seed(0)

        def step():  # as optimization.training._step takes it
            loss = objective.batch_loss.summed(objective.model, objective.batches[0]) / objective.n_tokens
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            inputs = {"hessian": hessian_diagonal(optimizer, objective.model, objective.batches[0], list(objective.params),
                                                  None, generator)} if needs_hessian_diagonal(optimizer) else {}
            optimizer.step(**inputs)

        seconds = _typical_time(step)
        file_s = _saving_time({"model": objective.model.state_dict(), "optimizer": optimizer.state_dict()})
        objective.restore()
        self.calibration_s += time.perf_counter() - start
        return {"rate": gradient / seconds, "file": file_s}


def _saving_time(checkpoint: dict) -> float:
    """Seconds of writing `checkpoint` as the stages write theirs (utils.io.save_torch: its checksum too), into a
    scratch folder; 0 where the scratch folder has no room for it (the estimate is then the passes')."""
    try:
        with tempfile.TemporaryDirectory() as scratch:
            return _typical_time(lambda: save_torch(Path(scratch) / "checkpoint.pt", checkpoint))
    except OSError:
        return 0.0


def _timed_study() -> dict[str, float]:
    """Seconds of opening a study (a SQLite storage, as search.storage's default) and of a trial's asking and telling
    it, on a scratch study (optimization.search_stage's trials do more: locks, the manifest; their own runs)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        opened = itertools.count()

        def open_study():
            storage = optuna.storages.RDBStorage(f"sqlite:///{Path(scratch) / f'study-{next(opened)}.db'}")
            return optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))

        study = open_study()  # the first opening also imports the database's modules: the process's, not a study's
        study_s = _typical_time(open_study)

        def trial():
            asked = study.ask()
            study.tell(asked, asked.suggest_float("lr", 1e-5, 1e-2, log=True))
            study.get_trials(deepcopy=False)

        return {"study": study_s, "trial": _typical_time(trial)}


def _typical_time(work) -> float:
    """The median of up to seven timed calls after a warm-up, within CALIBRATION_SECONDS (the first call alone when
    it took that long): the machine as it is now, other processes' load included, as the stages will find it."""
    elapsed: list[float] = []
    while len(elapsed) < 8 and sum(elapsed) < CALIBRATION_SECONDS:
        begin = time.perf_counter()
        work()
        elapsed.append(time.perf_counter() - begin)
    return statistics.median(elapsed[1:] or elapsed)
