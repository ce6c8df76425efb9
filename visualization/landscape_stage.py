"""The landscape stage: 1D interpolations and 2D loss surfaces of every trained run, and their figures.

For every (run, seed), in its run folder:
  interpolation.json          loss along init.pt -> checkpoint.pt (not for a run measured as is, train.epochs: 0:
                              the two are the same weights, the line flat)
  landscape_directions.pt     the two directions of the plane (reused while the settings hold)
  landscape_2d.npz            the loss on the plane around checkpoint.pt and which points are done,
                              written after every row; with landscape.directions: pca also the training
                              path projected on the plane and the directions' explained variance

landscape.directions: random draws two normalised random directions (visualization.directions); pca
takes the top two principal directions of the run's trajectory (train.trajectory; visualization.pca), unit
vectors, and the grid spans landscape.range × PATH_MARGIN × the path's extent along each of them.
For the experiment, in <output>/<experiment>/:
  interpolation.json          loss along the line between every pair of runs, per seed
  figures/                    interpolation, init_to_final_*, surface_2d_*, surface_3d_* (PNG and PDF),
                              and index.json: the data each figure was drawn from

Every output records a fingerprint of the settings and checkpoints it depends on, and the training
fingerprint of each checkpoint it was computed from (which the report checks); an output with the
current fingerprint is skipped (a partial 2D grid is continued) unless `force`. All losses are taken
on fixed evaluation sets: the same texts for every run, tokenized once per run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from data.corpus import load_texts
from data.measurement import FixedSet, fixed_set, same_texts
from models.checkpoint import TrainedModel, load_trained
from optimization.measured_run import Result, TrainedRun, measure_runs, measured_runs
from optimization.objective import Objective
from utils import distributed
from config.schema import Experiment, RunConfig, section_settings
from utils.device import resolve_device
from utils.errors import CorruptFileError, UserError
from utils.io import (fingerprint, load_npz, load_torch, read_json, read_own_output, save_figure, save_npz, verify,
                      write_json)
from models.runs import TRAJECTORY, TRAJECTORY_INDEX, experiment_dir
from visualization.figure_index import drawn_from, record_figure
from visualization.directions import conv1d_weight_names, directions_for, random_directions, save_directions
from visualization.interpolation import curve_record, interpolate, interpolation_alphas, weights_in
from visualization.pca import trajectory_pca
from visualization.surface_plots import (Surface, interpolation_figure, surface_3d_figure, surface_contour_figure,
                                         weight_space_name)
from visualization.surface import empty_grid, fill_surface, grid_axis

PATH_MARGIN = 1.2  # pca: the grid reaches this far beyond the path's extent (times landscape.range)
PCA_CHUNK_BYTES = 1 << 28  # pca: float64 block of the trajectory read at a time
# Each output depends on the whole landscape section but for the fields that shape only another output:
LINE_ONLY = ("points", "alpha_min", "alpha_max")  # the 1D lines' points
PLANE_ONLY = ("directions", "norm", "ignore", "seed", "resolution", "range", "val_surface")  # a run's 2D plane and grid


def landscape_settings(run: RunConfig, leave_out: tuple[str, ...]) -> dict:
    """The landscape section (config.schema.section_settings) but the fields in `leave_out`."""
    return {key: value for key, value in section_settings(run, "landscape")["landscape"].items() if key not in leave_out}


def between_runs_settings(run: RunConfig) -> dict:
    """What the lines between runs depend on, and what every run must share: they are taken on the merged weights
    (landscape.space is the run's own) along the shared evaluation sets, on no plane."""
    return landscape_settings(run, PLANE_ONLY + ("space",))


def space(run: RunConfig) -> str:
    """The weight space a run's landscape is taken in: a LoRA run's landscape.space, else the full model's."""
    return run.landscape.space if run.model.adapter.type != "none" else "adapter"


def landscape_results(trained: TrainedRun) -> list[Result]:
    """interpolation.json (init -> final, in the run's space; none for a run measured as is, whose init is its
    final) and landscape_2d.npz (finished when every point is; its directions, landscape_directions.pt, carry its
    stamp)."""
    surface = trained.result("landscape_2d.npz", landscape_settings(trained.run, LINE_ONLY), "2D landscape",
                             read=load_npz, complete=lambda saved: bool(saved["done"].all()))
    if trained.run.train.epochs == 0:
        print(f"{trained.label}: measured as is: no training path (train.epochs: 0), so no init -> final interpolation")
        return [surface]
    line = trained.result("interpolation.json", landscape_settings(trained.run, PLANE_ONLY), "init -> final interpolation")
    return [line, surface]


class EvaluationSets:
    """Each run's fixed training and validation sets, tokenized once (the texts: once per command, load_texts)."""

    def __init__(self):
        self.sets = {}

    def of(self, job: TrainedRun, tokenizer) -> tuple[FixedSet, FixedSet]:
        if job.label not in self.sets:
            run, cfg = job.run, job.run.landscape
            texts = load_texts(run.data)
            self.sets[job.label] = tuple(
                fixed_set(split, cfg.eval_batches, cfg.eval_batch_size, cfg.eval_seed, tokenizer, run.data.max_length)
                for split in (texts.train, texts.validation))
        return self.sets[job.label]


def landscape_stage(experiment: Experiment, output: Path, force: bool) -> None:
    jobs = measured_runs(experiment, output)
    check_shared_settings(jobs)
    sets = EvaluationSets()
    measure_runs(jobs, force, landscape_results, lambda job, todo: run_landscape(job, todo, sets, force))
    between_runs(experiment, jobs, experiment_dir(output, experiment), sets, force)
    draw_figures(jobs, experiment_dir(output, experiment), force)


def check_shared_settings(jobs: list[TrainedRun]) -> None:
    for first, job in zip(jobs, jobs[1:]):  # no job at all (a search's templates only): nothing to check
        shared, own = between_runs_settings(first.run), between_runs_settings(job.run)
        for key in dict.fromkeys([*shared, *own]):
            if shared.get(key) != own.get(key):
                raise UserError(f"landscape.{key} differs between runs {first.run.name} and {job.run.name}; "
                                "the evaluation sets and interpolation points are shared by all runs of an experiment")


# ----------------------------------------------------------------------------------------------
# One run: init -> final, and the 2D surface.

def run_landscape(job: TrainedRun, todo: list[Result], sets: EvaluationSets, force: bool) -> None:
    final = job.load(space(job.run))
    train_set, val_set = sets.of(job, final.tokenizer)
    for result in todo:
        if result.path.name == "interpolation.json":
            init_to_final(job, final, train_set, val_set, result)
        else:
            surface_2d(job, final, train_set, val_set, result, force)


def init_to_final(job: TrainedRun, final: TrainedModel, train_set: FixedSet, val_set: FixedSet, result: Result) -> None:
    init = job.load(space(job.run), "init.pt")
    objectives = {"train": Objective(init.model, train_set.batches), "val": Objective(init.model, val_set.batches)}
    alphas = interpolation_alphas(job.run.landscape)
    theta1 = weights_in(objectives["train"], final.model, job.label)
    losses = interpolate(objectives, theta1, alphas, desc=f"{job.label} init -> final")
    record = curve_record(alphas, losses["train"], losses["val"])
    result.write({"alphas": alphas.tolist(), "endpoints": ["init", "final"], **record,
                  "eval_tokens": {"train": train_set.n_tokens, "validation": val_set.n_tokens}})
    print(f"{job.label}: init -> final barrier {record['barrier']:.4f} at α = {record['barrier_alpha']:.2f}")


def plane(job: TrainedRun, final: TrainedModel, objective: Objective, plane_print: str, force: bool) -> tuple[tuple, dict]:
    """The run's two directions, the saved ones if made with the same settings (`plane_print`: the surface's stamp),
    else new ones (saved), and what the figure needs besides (pca: the path's coordinates, steps and explained
    variance; the extents)."""
    path, cfg = job.folder / "landscape_directions.pt", job.run.landscape
    saved = None if force else read_own_output(path, load_torch, job.label)
    if saved is not None and saved.get("fingerprint") == plane_print:
        directions = directions_for(saved, objective)
    else:
        settings = {"norm": cfg.norm, "ignore": cfg.ignore, "seed": cfg.seed, "directions": cfg.directions,
                    "fingerprint": plane_print}
        if cfg.directions == "pca":
            d1, d2, path_info = pca_directions(job, objective)
            settings.update(path_info)
        else:
            d1, d2 = random_directions(objective, conv1d_weight_names(final.model), cfg.norm, cfg.ignore, cfg.seed)
        save_directions(path, objective, d1, d2, settings)
        saved, directions = settings, (d1, d2)
    info = {key: saved[key] for key in ("path_coordinates", "path_steps", "explained_variance") if key in saved}
    if cfg.directions == "pca":
        extents = [cfg.range * PATH_MARGIN * float(abs(saved["path_coordinates"][:, i]).max()) for i in range(2)]
    else:
        extents = [cfg.range, cfg.range]
    return directions, {**info, "extents": extents}


def pca_directions(job: TrainedRun, objective: Objective) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The top two principal directions of the run's trajectory around its final weights (Li et al. 2018 §7)
    and the path on them: its coordinates (θ_t − θ_f)·dᵢ, the steps they were saved at, the explained variance."""
    rows_path, index_path = job.folder / TRAJECTORY, job.folder / TRAJECTORY_INDEX
    retrain = job.retrain
    absent = [path.name for path in (rows_path, index_path) if not path.is_file()]
    if absent:  # the train stage, which writes both, trains a run again that lacks either
        raise UserError(f"{job.label}: landscape.directions is pca but {job.folder} has no {' or '.join(absent)}; "
                        f"train the run with train.trajectory.every > 0 ({retrain})")
    try:
        verify(rows_path)
        steps = read_json(index_path)["steps"]
    except CorruptFileError as err:
        raise err.needing(f"train the run again with: {retrain} and --force") from None
    rows = np.load(rows_path, mmap_mode="r")
    init = job.load(name="init.pt")
    final = (objective.base - weights_in(objective, init.model, job.label)).float().cpu().numpy()
    start = time.perf_counter()
    try:
        pca = trajectory_pca(rows, final, 2, chunk=max(1, PCA_CHUNK_BYTES // (8 * len(rows))))
    except ValueError as err:
        raise UserError(f"{job.label}: no PCA plane from {rows_path}: {err}") from None
    print(f"{job.label}: PCA of {len(rows)} snapshots of the weights along training in {time.perf_counter() - start:.1f} s; explained "
          f"variance {pca.explained_variance_ratio[0]:.1%} and {pca.explained_variance_ratio[1]:.1%}")
    d1, d2 = (torch.from_numpy(d).to(device=objective.device, dtype=objective.base.dtype) for d in pca.directions)
    return d1, d2, {"path_coordinates": torch.from_numpy(pca.coordinates), "path_steps": steps,
                    "explained_variance": torch.from_numpy(pca.explained_variance_ratio)}


def surface_2d(job: TrainedRun, final: TrainedModel, train_set: FixedSet, val_set: FixedSet, result: Result,
               force: bool) -> None:
    cfg, saved = job.run.landscape, result.saved(force)  # a grid made with these settings, continued
    with distributed.alone():  # torchrun: the ranks split the grid's points, each on the whole evaluation set
        objectives = {"train_loss": Objective(final.model, train_set.batches)}
        if cfg.val_surface:
            objectives["val_loss"] = Objective(final.model, val_set.batches)
    directions, info = plane(job, final, objectives["train_loss"], result.stamp, force)
    alphas, betas = (grid_axis(cfg.resolution, extent) for extent in info["extents"])
    if saved is None:
        grids = {name: empty_grid(alphas, betas) for name in objectives}
        done = np.zeros((len(alphas), len(betas)), dtype=bool)
    else:
        grids = {name: saved[name].copy() for name in objectives}
        done = saved["done"].copy()
        print(f"{job.label}: resuming the 2D landscape ({int(done.sum())} of {done.size} points done)")
    base_loss = objectives["train_loss"].loss()
    earlier_s = 0.0 if saved is None else float(saved.get("time_s", 0.0))
    start = time.perf_counter()
    settings = {key: np.array(value) for key, value in result.settings.items()}
    settings.update({key: np.asarray(value) for key, value in info.items() if key != "extents"})

    def save():
        save_npz(result.path, alphas=alphas, betas=betas, **grids, done=done, **settings, base_loss=np.array(base_loss),
                 eval_tokens=np.array(train_set.n_tokens), time_s=np.array(earlier_s + time.perf_counter() - start),
                 checkpoint=np.array(job.checkpoint), fingerprint=np.array(result.stamp))

    fill_surface(objectives, directions, alphas, betas, grids, done, save, desc=f"{job.label} 2D landscape")
    loss = grids["train_loss"]
    finite = loss[np.isfinite(loss)]
    span = f"{finite.min():.4f} to {finite.max():.4f}" if finite.size else "no finite loss"
    diverged = f", {loss.size - finite.size} points diverged (loss not finite)" if finite.size < loss.size else ""
    print(f"{job.label}: 2D landscape done; loss {base_loss:.4f} at the model, {span} on the grid{diverged}")


# ----------------------------------------------------------------------------------------------
# Between runs: every pair, per seed.

def same_shapes(model_a, model_b) -> bool:
    """Whether the two models' trainable weights have the same names and shapes: a straight line joins them."""
    def shapes(model):
        return [(name, p.shape) for name, p in model.named_parameters() if p.requires_grad]
    return shapes(model_a) == shapes(model_b)


def between_runs(experiment: Experiment, jobs: list[TrainedRun], folder: Path, sets: EvaluationSets, force: bool) -> None:
    pairs = []
    for seed in experiment.seeds:
        same_seed = [job for job in jobs if job.run.seed == seed]
        pairs += [(a, b) for i, a in enumerate(same_seed) for b in same_seed[i + 1:]]
    if not pairs:
        return
    path = folder / "interpolation.json"
    alphas = interpolation_alphas(jobs[0].run.landscape)
    line_print = fingerprint({"landscape": between_runs_settings(jobs[0].run)})
    keys = [((a.run.name, b.run.name), a.run.seed) for a, b in pairs]
    checkpoints = {key: [a.checkpoint, b.checkpoint] for (a, b), key in zip(pairs, keys)}
    saved = read_own_output(path, label=experiment.name) or {}
    same_settings = saved.get("fingerprint") == line_print
    saved_pairs = {(tuple(pair["runs"]), pair["seed"]): pair for pair in saved.get("pairs", [])} if same_settings else {}
    others = [pair for key, pair in saved_pairs.items() if key not in checkpoints]  # runs left out by --runs: kept
    entries = {} if force else {key: pair for key, pair in saved_pairs.items()  # both weights unchanged
                                if key in checkpoints and pair.get("checkpoints") == checkpoints[key]}
    # Pairs whose runs see other texts (their data settings differ) or are other architectures have no common
    # loss: listed, not drawn.
    incomparable = {} if force or not same_settings else {
        (tuple(pair["runs"]), pair["seed"]): pair for pair in saved.get("incomparable", [])
        if pair.get("checkpoints") == checkpoints.get((tuple(pair["runs"]), pair["seed"]))}
    if all(key in entries or key in incomparable for key in keys):
        print(f"{experiment.name}: interpolation between runs already done with these settings; skipping "
              "(--force redoes it)")
        return
    for (a, b), key in zip(pairs, keys):
        if key in entries or key in incomparable:
            continue
        what = f"{experiment.name}: {a.run.name} -> {b.run.name}, seed {a.run.seed}"
        device = resolve_device(a.run.device)
        model_a = load_trained(a.folder / "checkpoint.pt", device, "merged")  # LoRA runs: A and B are not
        model_b = load_trained(b.folder / "checkpoint.pt", device, "merged")  # coordinates two runs share
        (train_a, val_a), (train_b, val_b) = sets.of(a, model_a.tokenizer), sets.of(b, model_b.tokenizer)
        if same_texts(train_a, train_b) and same_texts(val_a, val_b) and same_shapes(model_a.model, model_b.model):
            objectives = {"train": Objective(model_a.model, train_a.batches),
                          "val": Objective(model_a.model, val_a.batches)}
            theta1 = weights_in(objectives["train"], model_b.model, what)
            losses = interpolate(objectives, theta1, alphas, desc=what)
            entries[key] = {"runs": list(key[0]), "seed": key[1], "checkpoints": checkpoints[key],
                            **curve_record(alphas, losses["train"], losses["val"])}
            print(f"{what}: barrier {entries[key]['barrier']:.4f} at α = {entries[key]['barrier_alpha']:.2f}")
        else:
            incomparable[key] = {"runs": list(key[0]), "seed": key[1], "checkpoints": checkpoints[key]}
            print(f"{what}: skipped: the two runs see different evaluation texts or tokenizers (their data "
                  "settings differ) or have different architectures, so no one loss is defined along the line "
                  "between them")
        write_json(path, {"alphas": alphas.tolist(), "pairs": [entries[k] for k in keys if k in entries] + others,
                          "incomparable": list(incomparable.values()),
                          "eval_tokens": {"train": train_a.n_tokens, "validation": val_a.n_tokens},
                          "fingerprint": line_print})


# ----------------------------------------------------------------------------------------------
# Figures: redrawn when missing, drawn from other data than the file holds now, or forced.

def draw_figures(jobs: list[TrainedRun], folder: Path, force: bool) -> None:
    figures = folder / "figures"
    between = folder / "interpolation.json"
    if between.is_file():
        draw(figures / "interpolation", between, force, lambda: pairs_figure(read_json(between)))
    for job in jobs:
        name, title = f"{job.run.name}_seed-{job.run.seed}", f"{job.run.name}, seed {job.run.seed}"
        line = job.folder / "interpolation.json"
        if line.is_file() and job.run.train.epochs > 0:  # as is: an older version's flat line, not drawn
            draw(figures / f"init_to_final_{name}", line, force, lambda: init_to_final_figure(read_json(line), title))
        surface = job.folder / "landscape_2d.npz"
        if not surface.is_file():
            continue
        data = load_npz(surface)
        if "done" not in data or not data["done"].all():
            continue  # unfinished: drawn once every point is evaluated
        plane = surface_of(job, data)
        draw(figures / f"surface_2d_{name}", surface, force, lambda: surface_contour_figure(plane))
        draw(figures / f"surface_3d_{name}", surface, force, lambda: surface_3d_figure(plane))


def surface_of(job: TrainedRun, data: dict) -> Surface:
    """A finished landscape_2d.npz as its figures show it: the directions and weight space in the title and labels."""
    path = data.get("path_coordinates")
    directions = f"{data['norm']}-normalised directions" if path is None else "PCA directions of the training path"
    return Surface(f"{job.run.name}, seed {job.run.seed}: {directions}", data["alphas"], data["betas"],
                   data["train_loss"], path, data.get("explained_variance"),
                   weight_space_name(job.run.model.adapter.type, space(job.run)))


def pairs_figure(data: dict):
    pairs = data["pairs"]
    return interpolation_figure(data["alphas"], pairs, [tuple(p["runs"]) for p in pairs],
                                [f"{p['runs'][0]} → {p['runs'][1]}, seed {p['seed']}" for p in pairs])


def init_to_final_figure(data: dict, title: str):
    return interpolation_figure(data["alphas"], [data], [("init", "final")], [f"{title}: init → final"])


def draw(stem: Path, source: Path, force: bool, make_figure) -> None:
    """Write stem.png and stem.pdf from `make_figure()`, unless they were drawn from what `source`
    holds now (figures/index.json records it: a date says nothing when files are copied or restored)."""
    if not force and drawn_from(stem.parent, stem.name, source):
        return
    figure = make_figure()
    save_figure(stem, figure)
    record_figure(stem.parent, stem.name, source)
