"""What every stage of an experiment costs before it runs: the passes over data that its settings imply, their FLOPs
and their time on the run's device (optimization.estimate prints them; run.py before a long run).

Every stage's work is passes of four kinds over fixed sets of texts, each pass batch by batch (their FLOPs:
optimization.cost.kind_flops):
  forward   a loss (an evaluation, a grid point, a point of a line): forward_flops of each batch
  gradient  a loss and its gradient (sharpness's gradient, a worst-case ascent step): step_flops
  hvp       a Hessian-vector product on a kept gradient graph: cost.HVP_PER_GRADIENT gradients, plus the graph's build
            (cost.GRAPH_PER_GRADIENT gradients) once at each weights its pass is taken at (`graphs`); every HVP builds
            its graphs when sharpness.graph_memory is 0 (optimization.objective; the estimate takes the graphs to fit)
  step      a training step: a gradient and the optimizer's update (step_flops: the update's FLOPs are not counted)
and, with no FLOPs, the bookkeeping around a training that outweighs its steps in short runs (BOOKKEEPING):
  setup     a training's set-up: its model built, init.pt and checkpoint.pt written, and last.pt (the weights and the
            optimizer's state) after every epoch but the last
  study     a search's study opened (its SQLite storage)
  trial     a search trial's asking and telling the study
The counts are read off each stage's code (sharpness.sharpness_stage, sharpness.geometry and its stage,
visualization.landscape_stage, optimization.prune_stage, optimization.tracking, optimization.search_stage: its
trials are trainings of the search's run, each counted at the values its space leaves); an iterative solver counts at its
max_iter (Lanczos stops earlier once its estimates converge, so its counts are upper bounds; exact when it runs to
max_iter, as tests/unit/optimization/test_stage_cost.py checks against the passes the stages make). Every batch is
counted at data.max_length tokens and every set at the texts it asks for: upper bounds where texts are shorter or the
corpus has fewer of them. Not counted: the measuring stages' loading of checkpoints, loading texts and tokenizing them
(once per command), the geometry stage's row norms and bootstrap (CPU work on its sketch), the PCA of a trajectory,
figures.

Time: each pass's and each bookkeeping's seconds on the experiment's device, optimization.throughput.Throughput.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from config.schema import Experiment, RunConfig
from models.runs import run_dir
from optimization.cost import cpu_matmul_peak, estimate, hub_model_config, kind_flops
from optimization.throughput import BOOKKEEPING, Throughput
from utils.errors import UserError

KINDS = ("forward", "gradient", "hvp", "step")
KIND_NAMES = {"forward": "forward", "gradient": "gradient", "hvp": "HVP", "step": "training-step"}
# pipeline.DEFAULT_STAGES that do such work, and pipeline's stages that do none (optimization does not import
# pipeline; a test keeps them in step)
DEFAULT_STAGES = ("train", "sharpness", "landscape")
UNCOSTED_STAGES = ("correlate", "report")


@dataclass(frozen=True)
class Passes:
    """`count` passes of one kind over a set of `texts` texts taken `batch_size` at a time, in the run's trained
    weights (`merged`: a LoRA run's merged full model, adapter-free)."""
    what: str
    kind: str
    count: int
    texts: int
    batch_size: int
    merged: bool = False
    graphs: int = 0  # an HVP pass's gradient graphs built (each over the set's batches): hvp_passes

    @property
    def batches(self) -> int:
        """Batches per pass."""
        return math.ceil(self.texts / self.batch_size)


# ----------------------------------------------------------------------------------------------
# Each stage's passes.

def hvp_passes(run: RunConfig, what: str, count: int, points: int, texts: int, batch_size: int,
               merged: bool = False) -> Passes:
    """`count` HVPs taken at `points` weights (from the last weights HVPs were taken at: 0): their gradient graphs are
    built once at each, or for every HVP when sharpness.graph_memory keeps none."""
    graphs = min(points, count) if run.sharpness.graph_memory else count
    return Passes(what, "hvp", count, texts, batch_size, merged, graphs)


def measurement_texts(run: RunConfig) -> int:
    """Texts of the sharpness measurement set (data.measurement.measurement_set), at most."""
    return min(run.sharpness.batches * run.sharpness.batch_size, run.data.n_train)


def sharpness_passes(run: RunConfig) -> list[Passes]:
    """sharpness.json (and sharpness_merged.json, density.json): sharpness.sharpness_stage.measure_sharpness."""
    cfg, texts, size = run.sharpness, measurement_texts(run), run.sharpness.batch_size
    eps = len(cfg.epsilons)
    # Lanczos measures the true residual of each estimate it returns (the top k and the smallest): one HVP each
    solver = cfg.max_iter + (min(cfg.top_k, cfg.max_iter) + 1 if cfg.method == "lanczos" else 0)
    passes = []
    for merged in [False] + ([True] if cfg.merged and run.model.adapter.type != "none" else []):
        space = " (merged)" if merged else ""
        passes += [Passes(f"gradient{space}", "gradient", 1, texts, size, merged),
                   hvp_passes(run, f"{cfg.method}{space}", solver, 1, texts, size, merged),
                   hvp_passes(run, f"curvatures{space}", 1 + cfg.random_directions, 0, texts, size, merged),
                   Passes(f"eps-sharpness{space}", "forward", eps * (2 + 2 * cfg.random_directions), texts, size, merged)]
        if cfg.worst_case_steps:
            passes += [Passes(f"worst-case{space}", "gradient", eps * cfg.worst_case_steps, texts, size, merged),
                       Passes(f"worst-case{space}", "forward", eps, texts, size, merged)]
        if cfg.trace_samples:
            # after the eps-sharpness moved the weights and put them back
            passes.append(hvp_passes(run, f"trace{space}", cfg.trace_samples, bool(cfg.epsilons), texts, size, merged))
    if cfg.density.probes:
        # on the trace's graphs, at the trained weights, when it ran last (sharpness_stage.measure_run)
        passes.append(hvp_passes(run, "density", cfg.density.probes * cfg.density.steps, not cfg.trace_samples, texts,
                                 size))
    return passes


def geometry_passes(run: RunConfig, after_sharpness: bool = False) -> list[Passes]:
    """geometry.json, each frame: sharpness.geometry.measure_frame (the rotated frame's R costs no pass). The original
    frame takes ‖H‖₂ from sharpness.json when the sharpness stage measured it with Lanczos (`after_sharpness`: it runs
    first; sharpness.geometry_stage.spectral_from_sharpness), else from a Lanczos of its own."""
    cfg, texts, size = run.geometry, measurement_texts(run), run.sharpness.batch_size
    frames = 1 if cfg.rotation == "none" else 2
    own_lanczos = frames - (after_sharpness and run.sharpness.method == "lanczos")
    return [hvp_passes(run, "Cauchy sketches", frames * cfg.cauchy_vectors, 1, texts, size),  # all at the trained weights
            hvp_passes(run, "‖H‖₂ Lanczos", own_lanczos * run.sharpness.max_iter, 0, texts, size),
            hvp_passes(run, "‖H‖_F", frames * cfg.frobenius_probes, 0, texts, size)]


def _line_points(run: RunConfig) -> int:
    """len(visualization.interpolation.interpolation_alphas): landscape.points evenly spaced, and 0 and 1 where missing
    (optimization does not import visualization; a test keeps the two in step)."""
    cfg = run.landscape
    evenly = [cfg.alpha_min + (cfg.alpha_max - cfg.alpha_min) * i / (cfg.points - 1) for i in range(cfg.points)]
    return len({round(alpha, 12) for alpha in [*evenly, 0.0, 1.0]})


def _landscape_texts(run: RunConfig) -> tuple[int, int]:
    """Texts of the landscape's training and validation evaluation sets (data.measurement.fixed_set), at most."""
    wanted = run.landscape.eval_batches * run.landscape.eval_batch_size
    return min(wanted, run.data.n_train), min(wanted, run.data.n_val)


def landscape_passes(run: RunConfig) -> list[Passes]:
    """interpolation.json (init -> final) and landscape_2d.npz of one run: visualization.landscape_stage."""
    cfg, (train, val) = run.landscape, _landscape_texts(run)
    merged = run.model.adapter.type != "none" and cfg.space == "merged"
    points, grid = _line_points(run), cfg.resolution**2
    passes = [Passes("init -> final", "forward", points, train, cfg.eval_batch_size, merged),
              Passes("init -> final (validation)", "forward", points, val, cfg.eval_batch_size, merged),
              Passes("2D grid", "forward", grid + 1, train, cfg.eval_batch_size, merged)]  # + the loss at the model
    if cfg.val_surface:
        passes.append(Passes("2D grid (validation)", "forward", grid, val, cfg.eval_batch_size, merged))
    return passes


def between_runs_passes(run: RunConfig, pairs: int) -> list[Passes]:
    """The lines between `pairs` pairs of runs like `run` (on the merged weights, both evaluation sets)."""
    (train, val), size, points = _landscape_texts(run), run.landscape.eval_batch_size, _line_points(run)
    merged = run.model.adapter.type != "none"
    return [Passes("lines between runs", "forward", pairs * points, train, size, merged),
            Passes("lines between runs (validation)", "forward", pairs * points, val, size, merged)]


def prune_passes(run: RunConfig) -> list[Passes]:
    """prune.json of a LoRA run (none for another): optimization.prune_stage.prune_run."""
    if run.model.adapter.type == "none":
        return []
    cfg, size = run.prune, run.train.eval_batch_size
    masks = len(cfg.fractions) * (1 + cfg.random_seeds)
    lambdas, rewinds = len(cfg.lambda_max_fractions), len(cfg.rewind_fractions) if cfg.rewind else 0
    passes = [Passes("masks (validation)", "forward", masks + rewinds, run.data.n_val, size),
              Passes("masks (test)", "forward", masks + rewinds, run.data.n_test, size)]
    if lambdas:
        passes += [hvp_passes(run, "λ_max", lambdas * run.sharpness.max_iter, lambdas, measurement_texts(run),
                              run.sharpness.batch_size),
                   Passes("λ_max (loss)", "forward", lambdas, measurement_texts(run), run.sharpness.batch_size)]
    if rewinds:
        passes.append(Passes("rewind", "step", rewinds * cfg.rewind_epochs, run.data.n_train, run.train.batch_size))
    return passes


def train_passes(run: RunConfig) -> list[Passes]:
    """Training (optimization.estimate's steps), its evaluations, and train.track's points."""
    train, data = run.train, run.data
    steps = estimate(run)["steps"]
    passes = [Passes("steps", "step", 1, steps * train.batch_size, train.batch_size),
              # the initial weights' and every epoch's validation; the test set and the training set at the end
              Passes("validation", "forward", train.epochs + 1, data.n_val, train.eval_batch_size),
              Passes("test, final training loss", "forward", 1, data.n_test + data.n_train, train.eval_batch_size),
              Passes("set-up, checkpoints", "setup", 1, 1, 1)]
    track = train.track
    if track.every:
        from optimization.tracking import tracked_metrics

        points = 1 + steps // track.every
        metrics = tracked_metrics(track, train)

        def lanczos_hvps(measured: int) -> int:  # a cold first point (+ its true residual), then warm points
            return (track.iters + 1 + (measured - 1) * (track.iters + 2)) if measured > 0 else 0  # + the 2 kept vectors

        hvps = lanczos_hvps(points) * ("lambda_max" in metrics) + lanczos_hvps(points - 1) * (  # no P before step 1
            "preconditioned_lambda_max" in metrics) + points * track.trace_samples * ("trace" in metrics)
        measured = points - ("lambda_max" not in metrics and "trace" not in metrics)  # P's λ only: none at step 0
        passes.append(hvp_passes(run, "train.track", hvps, measured, measurement_texts(run), run.sharpness.batch_size))
    return passes


def search_passes(template: RunConfig) -> list[Passes]:
    """The search stage's study of `template`: search.n_trials trainings as train_passes counts them, each at the
    values the space leaves (what a trial draws may cost more or less; a pruned or failed trial stops early)."""
    trials = template.search.n_trials
    return [*(dataclasses.replace(p, what=f"trials' {p.what}", count=p.count * trials) for p in train_passes(template)),
            Passes("study", "study", 1, 1, 1), Passes("study", "trial", trials, 1, 1)]


PASSES = {"train": train_passes, "search": search_passes, "sharpness": sharpness_passes, "geometry": geometry_passes,
          "landscape": landscape_passes, "prune": prune_passes}


def stage_passes(experiment: Experiment, stage: str, stages: list[str] = ()) -> list[tuple[str, RunConfig, list[Passes]]]:
    """(label, run, its passes) of every (run, seed) of the experiment in `stage`, one of `stages` that run together
    (the search stage's: every study's template, at its seed); the landscape's lines between runs under the
    experiment's name, on the first run's model."""
    jobs = experiment.studies() if stage == "search" else experiment.jobs()
    count = (lambda run: geometry_passes(run, "sharpness" in stages)) if stage == "geometry" else PASSES[stage]
    passes = [(f"{run.name}/seed-{run.seed}", run, count(run)) for run in jobs]
    if stage == "landscape" and jobs:
        pairs = sum(math.comb(sum(run.seed == seed for run in jobs), 2) for seed in experiment.seeds)
        if pairs:
            passes.append((f"{experiment.name} (between runs)", jobs[0], between_runs_passes(jobs[0], pairs)))
    return passes


def totals(passes: list[Passes]) -> dict[str, int]:
    """Batch passes of each kind (a pass over a set of n batches counts n), the HVPs' gradient graphs built ("graph",
    per batch) and the trainings set up ("setup"): what the stages make."""
    return {**{kind: sum(p.count * p.batches for p in passes if p.kind == kind) for kind in KINDS},
            "graph": sum(p.graphs * p.batches for p in passes),
            "setup": sum(p.count for p in passes if p.kind == "setup")}


# ----------------------------------------------------------------------------------------------
# FLOPs and seconds.

def flops(run: RunConfig, passes: Passes) -> float:
    if passes.kind in BOOKKEEPING:
        return 0.0
    return (passes.count * passes.texts * kind_flops(run, passes.kind, passes.merged)
            + passes.graphs * passes.texts * kind_flops(run, "graph", passes.merged))



def seconds(run: RunConfig, passes: Passes, throughput: Throughput) -> float:
    """Seconds of all the passes (each batch at the batch size's rate; the last, smaller batch too)."""
    return passes.batches * (passes.count * throughput.seconds(run, passes.kind, passes.batch_size, passes.merged)
                             + passes.graphs * throughput.seconds(run, "graph", passes.batch_size, passes.merged))


@dataclass
class StageCost:
    stage: str
    passes: dict[str, int]  # batch passes of each kind, over all runs
    flops: float
    seconds: float
    parts: dict[str, float]  # seconds of each part of the stage (a Passes' `what`), over all runs

    def largest_part(self) -> str:
        """The part that takes most of the time, and its share."""
        if not self.seconds:
            return "–"
        what = max(self.parts, key=self.parts.__getitem__)
        return f"{what} ({self.parts[what] / self.seconds:.0%})"


def stage_costs(experiment: Experiment, stages: list[str], device: torch.device) -> tuple[list[StageCost], Throughput]:
    """The cost of each of `stages` that does work of the kinds above, over every (run, seed) of the experiment."""
    throughput = Throughput(device)
    costs = []
    for stage in stages:
        if stage not in PASSES:
            continue
        every = [(run, p) for _, run, passes in stage_passes(experiment, stage, stages) for p in passes]
        parts: dict[str, float] = {}
        for run, p in every:
            parts[p.what] = parts.get(p.what, 0.0) + seconds(run, p, throughput)
        costs.append(StageCost(stage, totals([p for _, p in every]), sum(flops(run, p) for run, p in every),
                               sum(parts.values()), parts))
    return costs, throughput


def duration(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value / 60:.1f} min" if value >= 90 else f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def read_training_inputs(experiment: Experiment, stages: list[str], output: Path, force: bool) -> None:
    """What the train stage reads first for every run it will train, read now: the texts (data.corpus.load_texts
    keeps them for it: once per command) and a hub model's config (kilobytes, cached by the hub library), so a
    dataset or model neither cached nor reachable says so before the seconds that counting and timing the model
    take (transformers' model code loads, a DistilGPT2 is timed), not after."""
    if "train" not in stages:
        return
    from data.corpus import load_texts

    for run in experiment.jobs():
        if force or not (run_dir(output, experiment, run) / "metrics.json").is_file():
            load_texts(run.data)
            model = run.model  # a base run's weights and a folder's are no download
            if model.init == "pretrained" and not model.base_run and not Path(model.name).expanduser().is_dir():
                hub_model_config(run)


LONG_RUN_S = 180  # run.py prints the estimate before stages estimated to take this long or longer
# The small experiments' stages ran at 5–19% of the CPU's matmul peak (bench/stage_cost.py): work that would end within
# LONG_RUN_S even at this share needs no timing before run.py starts it
SLOWEST_SHARE = 0.01


def announce_long_run(experiment: Experiment, stages: list[str], output: Path, force: bool = False) -> None:
    """Before stages estimated at LONG_RUN_S or more on the experiment's device: one line per stage (run.py). A model
    the estimate cannot count (optimization.estimate) leaves the run unannounced, not stopped; texts or a hub model
    the training cannot read stop it, before the model is counted or timed (read_training_inputs)."""
    from utils.device import resolve_device

    read_training_inputs(experiment, stages, output, force)
    device = resolve_device(experiment.runs[0].device if experiment.runs else "auto")
    try:
        if device.type == "cpu":  # no timing where even the slowest rate would finish in time (FLOPs are cheap)
            work = sum(flops(run, p) for stage in stages if stage in PASSES
                       for _, run, passes in stage_passes(experiment, stage, stages) for p in passes)
            if work < LONG_RUN_S * SLOWEST_SHARE * cpu_matmul_peak():
                return
        costs, _ = stage_costs(experiment, stages, device)
    except (UserError, ValueError):
        return
    total = sum(cost.seconds for cost in costs)
    if total < LONG_RUN_S:
        return
    print(f"{experiment.name}: estimated at most {duration(total)} on {device.type} (work already done is skipped):")
    width = max(len(cost.stage) for cost in costs)
    for cost in costs:
        passes = ", ".join(f"{cost.passes[kind]} {KIND_NAMES[kind]}" for kind in KINDS if cost.passes[kind])
        print(f"  {cost.stage:<{width}}  {duration(cost.seconds):>7}  ({passes} batch passes)", flush=True)
