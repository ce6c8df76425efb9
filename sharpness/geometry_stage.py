"""The `geometry` stage: the Hessian's ℓ∞ against ℓ2 geometry of every trained run (sharpness.geometry).

Writes <run dir>/geometry.json with one frame per coordinate system: `original` (H) and, unless
geometry.rotation is none, `rotated` (RᵀHR, the Hessian of θ̃ ↦ L(Rθ̃)). It measures on the sharpness
measurement set (data.measurement.measurement_set: the same texts as sharpness.json) with the sharpness
eigen-solver settings; the original frame's ‖H‖₂ is sharpness.json's when its Lanczos ran on the same weights and
set at least as strictly (spectral_from_sharpness), and each frame records where its ‖H‖₂ came from
(`spectral_norm_from`).

Work survives a kill at two levels: while a frame's Cauchy sketch is computed, geometry_sketch_<frame>.npy
(and its .json state, with a checksum per finished row, verified on resuming) hold the finished rows; a
finished frame is kept in geometry.partial.json until the run's geometry.json is written; `hvps` and
`hvp_total` count the products this stage took for the figures, whichever run did it. Each frame records the settings it depends on (`stamp`), so a frame whose
settings did not change, for instance the original frame after geometry.rotation changed, is not measured
again.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import psutil

from optimization.curvature import Estimate
from optimization.measured_run import Result, TrainedRun, measure_runs, measured_runs, sharpness_settings
from optimization.rotation import build_rotation
from sharpness.geometry import CHUNK, measure_frame, remove_sketch, spectral_of
from config.schema import Experiment, RunConfig, measurement_set_settings, section_settings
from utils import distributed
from utils.errors import ConfigError, CorruptFileError
from utils.io import fingerprint, read_json, read_own_output, remove, write_json
from utils.progress import progress

PARTIAL = "geometry.partial.json"
ROTATION_ONLY = ("rotation", "rotation_seed")  # the original frame is measured without R: they cannot change it


def geometry_result(trained: TrainedRun) -> Result:
    """geometry.json: it depends on the geometry section and, as it measures on the sharpness measurement set with
    the sharpness solver settings, on those of sharpness.json."""
    settings = {**section_settings(trained.run, "geometry"), "sharpness": sharpness_settings(trained.run)}
    return trained.result("geometry.json", settings, "geometry")


def frame_stamp(result: Result, frame: str) -> str:
    """The stamp of one frame's results and of its Cauchy sketch: the file's settings (the original frame's without
    the rotation's), its weights and the frame."""
    settings = result.settings
    if frame == "original":
        settings = {**settings, "geometry": {key: value for key, value in settings["geometry"].items()
                                             if key not in ROTATION_ONLY}}
    return fingerprint({"settings": settings, "checkpoint": result.checkpoint, "frame": frame})


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
    def plan(trained: TrainedRun) -> list[Result]:
        for sketch in trained.folder.glob("geometry_sketch_*.npy"):  # a frame no longer measured, or a forced redo
            if force or sketch.stem.removeprefix("geometry_sketch_") not in frames(trained.run):
                remove_sketch(sketch)
        return [geometry_result(trained)]

    measure_runs(measured_runs(experiment, output), force, plan,
                 lambda trained, todo: measure_geometry(trained, todo[0], force))


def spectral_from_sharpness(trained: TrainedRun) -> tuple[dict | None, str]:
    """The original frame's ‖H‖₂ (spectral_of) from sharpness.json's λ_max and λ_min, and "sharpness.json"; or None
    and "own lanczos: <why not>". They are reused when its Lanczos ran on these weights, on this measurement set with
    the same HVP, at least as strictly: a tolerance no looser, as many steps or more, and top_k ≥ 1 eigenvalues to
    converge where this stage's asks for 1 (so it runs at least as long as this stage's own from the same start)."""
    path = trained.folder / "sharpness.json"
    if not path.is_file():
        return None, "own lanczos: no sharpness.json"
    try:
        saved = read_json(path)
    except CorruptFileError:
        return None, "own lanczos: sharpness.json does not parse"
    recorded, now = saved.get("settings") or {}, sharpness_settings(trained.run)
    if saved.get("checkpoint") != trained.checkpoint:
        return None, "own lanczos: sharpness.json was measured on other weights"
    if any(recorded.get(key) != now.get(key) for key in [*measurement_set_settings(trained.run), "hvp"]):
        return None, "own lanczos: sharpness.json was measured on another measurement set or with another HVP"
    if recorded.get("method") != "lanczos" or saved.get("lambda_min") is None:
        return None, "own lanczos: sharpness.json's eigenvalues are from power iteration (no λ_min)"
    if not (recorded.get("tol", math.inf) <= now["tol"] and recorded.get("max_iter", 0) >= now["max_iter"]):
        return None, "own lanczos: sharpness.json's Lanczos had a looser tolerance or fewer steps"
    keys = [f"lambda_{end}{part}" for end in ("max", "min") for part in ("", "_residual", "_converged")]
    if any(key not in saved for key in [*keys, "hvp_count"]):
        return None, "own lanczos: sharpness.json lacks λ's residuals or HVP count (an older version's)"
    top, bottom = (Estimate(saved[f"lambda_{end}"], saved[f"lambda_{end}_residual"], saved[f"lambda_{end}_converged"])
                   for end in ("max", "min"))
    return spectral_of(top, bottom, saved["hvp_count"]), "sharpness.json"


def frames(run: RunConfig) -> list[str]:
    return ["original"] + ([] if run.geometry.rotation == "none" else ["rotated"])


def finished_frames(trained: TrainedRun, result: Result, force: bool) -> dict:
    """{frame: its results} of the frames already measured with these settings, in geometry.json or, for a run
    that was interrupted, in geometry.partial.json."""
    done = {} if force else read_own_output(result.path, label=trained.label) or {}
    partial = {} if force else read_own_output(trained.folder / PARTIAL, label=trained.label) or {}
    return {frame: data for frame, data in {**done.get("frames", {}), **partial.get("frames", {})}.items()
            if frame in frames(trained.run) and data.get("stamp") == frame_stamp(result, frame)}


def measure_geometry(trained: TrainedRun, result: Result, force: bool) -> None:
    run, label, folder, geometry = trained.run, trained.label, trained.folder, trained.run.geometry
    measuring = frames(run)
    finished = finished_frames(trained, result, force)
    opened = trained.open()
    objective = opened.objective
    names, numels = list(objective.names), [p.numel() for p in objective.params]
    check_sketch_fits(geometry.cauchy_vectors, objective.dim,
                      [folder / f"geometry_sketch_{frame}.npy" for frame in measuring if frame not in finished], label)
    start = time.perf_counter()
    measured = {}
    for frame in measuring:
        if frame in finished:
            print(f"{label}: {frame} frame already measured with these settings; kept")
            measured[frame] = finished[frame]
            continue
        matvec = objective.hvp
        if frame == "rotated":
            rotation = build_rotation(geometry.rotation, names, numels, geometry.rotation_seed, objective.device,
                                      objective.base.dtype)

            def matvec(v, rotation=rotation):  # the Hessian of θ̃ ↦ L(Rθ̃) is RᵀHR
                return rotation.transpose(objective.hvp(rotation.apply(v)))
        spectral, source = None, "own lanczos: sharpness.json measures H, not RᵀHR"
        if frame == "original":  # rank 0's reading: every rank of a torchrun job must take the same products
            spectral, source = distributed.broadcast_object(spectral_from_sharpness(trained))
            print(f"{label}: ‖H‖₂ from {source}")
        stamp = frame_stamp(result, frame)
        measured[frame] = measure_frame(matvec, objective.base, names, numels, geometry, run.sharpness,
                                        folder / f"geometry_sketch_{frame}.npy", stamp, _bar, f"{label} {frame}",
                                        spectral)
        measured[frame].update(stamp=stamp, spectral_norm_from=source)
        if frame == "rotated":
            measured[frame].update(rotation=geometry.rotation, rotation_seed=geometry.rotation_seed)
        write_json(folder / PARTIAL, {"frames": measured})
    timings = {f"{frame}_s": measured[frame]["time_s"] for frame in measuring}
    timings["total_s"] = time.perf_counter() - start
    hvps = sum(measured[frame]["hvps"] for frame in measuring)  # kept frames' too: all the work behind the file
    result.write({"device": str(trained.device), "dim": objective.dim, "n_tokens": objective.n_tokens,
                  "texts": trained.texts.counts(), "measurement_indices": opened.measurement.indices,
                  "frames": measured, "hvp_total": hvps, "timings": timings})
    remove(folder / PARTIAL)
    line = ", ".join(f"{frame}: ‖H‖₁,₁/d {measured[frame]['l11']['median']['per_coordinate']:.3g}, "
                     f"‖H‖₂ {measured[frame]['spectral']['value']:.3g}, ratio {measured[frame]['ratio']['median']:.3g}"
                     for frame in measuring)
    print(f"{label}: {line}; {hvps} HVPs, {timings['total_s']:.1f} s")
