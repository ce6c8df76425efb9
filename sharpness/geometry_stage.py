"""The `geometry` stage: the Hessian's ℓ∞ against ℓ2 geometry of every trained run (sharpness.geometry).

Writes <run dir>/geometry.json with one frame per coordinate system: `original` (H) and, unless
geometry.rotation is none, `rotated` (RᵀHR, the Hessian of θ̃ ↦ L(Rθ̃)). It measures on the sharpness
measurement set (data.measurement.measurement_set: the same texts as sharpness.json) with the sharpness
eigen-solver settings.

Work survives a kill at two levels: while a frame's Cauchy sketch is computed, geometry_sketch_<frame>.npy
(and its .json state, with a checksum per finished row, verified on resuming) hold the finished rows; a
finished frame is kept in geometry.partial.json until the run's geometry.json is written; `hvps` and
`hvp_total` count the work behind the figures, whichever run did it. Each frame records the settings it depends on (`stamp`), so a frame whose
settings did not change, for instance the original frame after geometry.rotation changed, is not measured
again.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import psutil
import torch

from data.corpus import load_texts
from data.measurement import measurement_set
from models.checkpoint import load_trained
from optimization.objective import Objective
from optimization.rotation import build_rotation
from sharpness.geometry import CHUNK, measure_frame, remove_sketch
from config.schema import Experiment, RunConfig
from utils.device import resolve_device
from utils.errors import ConfigError
from utils.io import fingerprint, read_own_output, remove, write_json
from models.runs import run_label, trained_runs, trained_with
from utils.progress import progress

EIGEN_KEYS = ("batches", "batch_size", "seed", "max_iter", "tol", "hvp")  # the sharpness settings it uses
PARTIAL = "geometry.partial.json"


def geometry_settings(run: RunConfig) -> dict:
    return {"geometry": asdict(run.geometry), "sharpness": {key: getattr(run.sharpness, key) for key in EIGEN_KEYS}}


def frame_stamps(run: RunConfig, checkpoint: str, frame: str) -> tuple[str, str]:
    """(the stamp of the frame's results, the stamp of its Cauchy sketch): the settings each depends on."""
    g, s = run.geometry, run.sharpness
    sketch = {"checkpoint": checkpoint, "frame": frame, "cauchy_vectors": g.cauchy_vectors, "seed": g.seed,
              "measurement": [s.batches, s.batch_size, s.seed, s.hvp]}
    if frame == "rotated":
        sketch["rotation"] = [g.rotation, g.rotation_seed]
    # "intervals" names how they are made, so a geometry.json of the bootstrap's too-wide ones is measured again
    results = {**sketch, "bootstrap": g.bootstrap, "confidence": g.confidence, "frobenius_probes": g.frobenius_probes,
               "eigen": [s.max_iter, s.tol], "intervals": "half-samples; Cox for ‖H‖_F"}
    return fingerprint(results), fingerprint(sketch)


def check_sketch_fits(k: int, dim: int, sketches: list[Path], label: str) -> None:
    """Refuse, before any file is made, a Cauchy sketch (k × d float32 on disk, for each of the frames still to
    measure, whose `sketches` are made one at a time and each removed when done) that the disk cannot hold, or
    whose statistics (a few k × CHUNK float64 arrays at a time) the memory cannot."""
    if not sketches:
        return
    folder = sketches[0].parent
    disk = 4 * k * dim
    free = shutil.disk_usage(folder).free + max(p.stat().st_size if p.is_file() else 0 for p in sketches)
    memory, available = 4 * 8 * k * min(dim, CHUNK), psutil.virtual_memory().available  # row_estimates' copies
    if disk > free or memory > available:
        raise ConfigError(f"{label}: geometry.cauchy_vectors {k} needs a {k} × {dim} float32 sketch ({disk / 1e9:.3g} GB "
                          f"on disk, {memory / 1e9:.3g} GB of memory), but {folder} has {free / 1e9:.3g} GB free and "
                          f"{available / 1e9:.3g} GB of memory are available; lower geometry.cauchy_vectors")


def _bar(total: int, desc: str):
    return progress(total=total, desc=desc)


def geometry_stage(experiment: Experiment, output: Path, force: bool) -> None:
    for run, folder in trained_runs(experiment, output):
        label = run_label(experiment, run)
        settings = geometry_settings(run)
        checkpoint = trained_with(folder)
        stamp = fingerprint({"settings": settings, "checkpoint": checkpoint})
        result_path = folder / "geometry.json"
        frames = ["original"] + ([] if run.geometry.rotation == "none" else ["rotated"])
        stamps = {frame: frame_stamps(run, checkpoint, frame) for frame in frames}
        for sketch in folder.glob("geometry_sketch_*.npy"):  # a frame no longer measured, or a forced redo
            if force or sketch.stem.removeprefix("geometry_sketch_") not in frames:
                remove_sketch(sketch)
        done = {} if force else read_own_output(result_path, label=label) or {}
        partial = {} if force else read_own_output(folder / PARTIAL, label=label) or {}  # an interrupted run's frames
        finished = {frame: data for frame, data in {**done.get("frames", {}), **partial.get("frames", {})}.items()
                    if frame in stamps and data.get("stamp") == stamps[frame][0]}
        if set(finished) == set(frames) and done.get("fingerprint") == stamp:
            print(f"{label}: geometry already measured with these settings; skipping (--force redoes it)")
            continue

        device = resolve_device(run.device)
        trained = load_trained(folder / "checkpoint.pt", device)
        texts = load_texts(run.data)
        measurement = measurement_set(texts.train, run.sharpness, trained.tokenizer, run.data.max_length)
        objective = Objective(trained.model, measurement.batches, hvp_mode=run.sharpness.hvp)
        names, numels = list(objective.names), [p.numel() for p in objective.params]
        check_sketch_fits(run.geometry.cauchy_vectors, objective.dim,
                          [folder / f"geometry_sketch_{frame}.npy" for frame in frames if frame not in finished], label)
        start = time.perf_counter()
        result = {}
        for frame in frames:
            if frame in finished:
                print(f"{label}: {frame} frame already measured with these settings; kept")
                result[frame] = finished[frame]
                continue
            matvec = objective.hvp
            if frame == "rotated":
                rotation = build_rotation(run.geometry.rotation, names, numels, run.geometry.rotation_seed,
                                          objective.device, objective.base.dtype)

                def matvec(v, rotation=rotation):  # the Hessian of θ̃ ↦ L(Rθ̃) is RᵀHR
                    return rotation.transpose(objective.hvp(rotation.apply(v)))
            result[frame] = measure_frame(matvec, objective.base, names, numels, run.geometry, run.sharpness,
                                          folder / f"geometry_sketch_{frame}.npy", stamps[frame][1], _bar,
                                          f"{label} {frame}")
            result[frame]["stamp"] = stamps[frame][0]
            if frame == "rotated":
                result[frame].update(rotation=run.geometry.rotation, rotation_seed=run.geometry.rotation_seed)
            write_json(folder / PARTIAL, {"frames": result})
        timings = {f"{frame}_s": result[frame]["time_s"] for frame in frames}
        timings["total_s"] = time.perf_counter() - start
        hvps = sum(result[frame]["hvps"] for frame in frames)  # kept frames' too: all the work behind the file
        write_json(result_path, {"run": run.name, "seed": run.seed, "fingerprint": stamp, "checkpoint": checkpoint,
                                 "settings": settings, "device": str(device), "dim": objective.dim,
                                 "n_tokens": objective.n_tokens, "texts": texts.counts(),
                                 "measurement_indices": measurement.indices, "frames": result,
                                 "hvp_total": hvps, "timings": timings})
        remove(folder / PARTIAL)
        line = ", ".join(f"{frame}: ‖H‖₁,₁/d {result[frame]['l11']['median']['per_coordinate']:.3g}, "
                         f"‖H‖₂ {result[frame]['spectral']['value']:.3g}, ratio {result[frame]['ratio']['median']:.3g}"
                         for frame in frames)
        print(f"{label}: {line}; {hvps} HVPs, {timings['total_s']:.1f} s")
        del objective, trained
        if device.type == "cuda":
            torch.cuda.empty_cache()
