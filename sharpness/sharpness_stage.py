"""The `sharpness` stage: for every trained run, build the measurement set once and measure on it.

Writes <run dir>/measurement.pt (the batches exactly as fed to the model, and the indices of their
texts in the filtered training split), <run dir>/sharpness.json and, with sharpness.density.probes > 0,
<run dir>/density.json (the SLQ spectral density: sharpness.density). A LoRA run (model.adapter) is
measured in its adapter's space (the weights the optimizer moves); with sharpness.merged also in the merged
full-weight space, into <run dir>/sharpness_merged.json. Each file records the settings and weights it was
measured with and is measured again when they change, each on its own.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from data.corpus import load_texts
from data.measurement import FixedSet, measurement_set, same_texts
from models.checkpoint import load_trained
from optimization.curvature import MIN_STABLE_STEPS, hutchinson_trace, lanczos, power_iteration
from optimization.objective import Objective
from sharpness.density import lanczos_memory_bytes, reorthogonalizes, slq
from sharpness.sharpness import (curvatures, eps_sharpness, loss_resolution_pct, random_unit_directions,
                                 taylor_check, worst_case)
from config.schema import DensityConfig, Experiment, SharpnessConfig, measurement_set_settings
from utils.device import resolve_device
from utils.io import fingerprint, read_own_output, save_torch, write_json
from models.runs import run_label, trained_runs, trained_with
from utils.progress import progress


def measure_sharpness(objective: Objective, cfg: SharpnessConfig, label: str = "") -> dict:
    """Every sharpness quantity of the model behind `objective`, as written to sharpness.json."""
    timings = {}
    start = time.perf_counter()
    base_loss, gradient = objective.loss_and_grad()
    timings["gradient_s"] = time.perf_counter() - start

    start = time.perf_counter()
    solver = lanczos if cfg.method == "lanczos" else power_iteration
    # the recurrence's residuals fall below what a float32 HVP can show: each estimate's is measured (‖Hx − θx‖)
    extra = {"k": cfg.top_k, "true_residuals": True} if cfg.method == "lanczos" else {}
    with progress(total=cfg.max_iter, desc=f"{label} {cfg.method}") as bar:
        eigen = solver(objective.hvp, objective.dim, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed,
                       device=objective.device, dtype=objective.base.dtype, progress=bar, **extra)
    timings["eigen_s"] = time.perf_counter() - start

    start = time.perf_counter()
    curvature = curvatures(objective, [eigen.eigenvector])[0]  # vᵀHv, exact for the Taylor check
    randoms = random_unit_directions(objective.base, cfg.random_directions, cfg.seed + 1)
    random_curvatures = curvatures(objective, randoms)  # dᵀHd: the symmetric differences' predictions
    sharp, taylor = {}, {}
    for eps in progress(cfg.epsilons, desc=f"{label} eps-sharpness"):
        key = f"{eps:g}"
        sharp[key] = eps_sharpness(objective, base_loss, eps, eigen.eigenvector, curvature, randoms, random_curvatures)
        direction = sharp[key]["eigvec_sign"] * eigen.eigenvector
        taylor[key] = taylor_check(base_loss, gradient, direction, curvature, eps, sharp[key]["eigvec"])
    timings["eps_sharpness_s"] = time.perf_counter() - start

    start = time.perf_counter()
    worst = {}
    if cfg.worst_case_steps:
        with progress(total=cfg.worst_case_steps * len(cfg.epsilons), desc=f"{label} worst-case") as bar:
            for eps in cfg.epsilons:
                key = f"{eps:g}"
                start_direction = sharp[key]["eigvec_sign"] * eigen.eigenvector
                worst[key] = worst_case(objective, base_loss, start_direction, eps, cfg.worst_case_steps, cfg.ball, bar)
    timings["worst_case_s"] = time.perf_counter() - start

    start = time.perf_counter()
    trace = None
    if cfg.trace_samples:
        with progress(total=cfg.trace_samples, desc=f"{label} trace") as bar:
            trace = hutchinson_trace(objective, cfg.trace_samples, cfg.seed + 2, bar)
    timings["trace_s"] = time.perf_counter() - start
    timings["total_s"] = sum(timings.values())

    return {
        "lambda_max": eigen.lambda_max,
        "lambda_max_converged": eigen.top[0].converged,
        "lambda_max_residual": eigen.top[0].residual,
        "lambda_min": eigen.lambda_min,
        "lambda_min_converged": None if eigen.bottom is None else eigen.bottom.converged,
        "lambda_min_residual": None if eigen.bottom is None else eigen.bottom.residual,
        "eigenvalues": eigen.eigenvalues,
        "eigenvalue_residuals": [e.residual for e in eigen.top],
        "eigenvalues_converged": [e.converged for e in eigen.top],
        "converged": eigen.converged,
        "method": cfg.method,
        "hvp_count": eigen.matvecs,
        "hvp_total": objective.hvp_count,
        "eigen_history": eigen.history,
        "eigvec_curvature": curvature,
        "base_loss": base_loss,
        "grad_norm": float(gradient.norm()),
        "n_tokens": objective.n_tokens,
        "loss_resolution_pct": loss_resolution_pct(objective.base.dtype),
        "eps_sharpness": sharp,
        "taylor_check": taylor,
        "worst_case": worst,
        "trace": trace,
        "timings": timings,
    }


def measure_density(objective: Objective, cfg: DensityConfig, label: str = "") -> dict:
    """The SLQ spectral density of the objective's Hessian, as written to density.json: the Ritz nodes and
    weights of every probe, the moments and mass below −τ, and a smoothed density on a grid (for plots; the
    nodes and weights redraw it at any smoothing)."""
    dtype = objective.base.dtype
    reorthogonalize = reorthogonalizes(cfg.reorthogonalize, objective.dim, cfg.steps, cfg.memory_mb, dtype)
    start = time.perf_counter()
    with progress(total=cfg.probes * cfg.steps, desc=f"{label} density") as bar:
        density = slq(objective.hvp, objective.dim, probes=cfg.probes, steps=cfg.steps, seed=cfg.seed,
                      reorthogonalize=reorthogonalize, device=objective.device, dtype=dtype, progress=bar)
    grid, sigma = density.default_grid()
    return {**density.to_dict(), "reorthogonalized": reorthogonalize,
            "lanczos_memory_mb": lanczos_memory_bytes(objective.dim, cfg.steps, reorthogonalize, dtype) / 2**20,
            "seconds": time.perf_counter() - start, "sigma": sigma, "grid": grid.tolist(),
            "density": density.smoothed(grid, sigma).tolist()}


def _current(path: Path, stamp: str, checkpoint: str, force: bool, label: str) -> bool:
    """Whether `path` holds a result measured with these settings (stamp) on these weights."""
    done = None if force else read_own_output(path, label=label)
    # A file of an older version records no checkpoint (and fewer quantities): measured again.
    return done is not None and (done.get("fingerprint"), done.get("checkpoint")) == (stamp, checkpoint)


def sharpness_stage(experiment: Experiment, output: Path, force: bool) -> None:
    first_set: FixedSet | None = None
    for run, folder in trained_runs(experiment, output):
        label = run_label(experiment, run)
        if run.sharpness.method == "lanczos" and run.sharpness.max_iter <= MIN_STABLE_STEPS:
            print(f"{label}: warning: with sharpness.max_iter {run.sharpness.max_iter} Lanczos cannot flag an "
                  f"eigenvalue converged (each must stay put for {MIN_STABLE_STEPS} steps); set at least "
                  f"{MIN_STABLE_STEPS + 1}")
        checkpoint = trained_with(folder)
        cfg = run.sharpness
        settings = asdict(cfg)
        density_settings = settings.pop("density")  # density.json has its own stamp
        settings.pop("merged")  # so has sharpness_merged.json
        stamp = fingerprint({"sharpness": settings, "checkpoint": checkpoint})
        merged_stamp = fingerprint({"sharpness": settings, "space": "merged", "checkpoint": checkpoint})
        result_path, density_path = folder / "sharpness.json", folder / "density.json"
        merged_path = folder / "sharpness_merged.json"
        # "reports" names what density.json holds, so one written before the mass below −τ is measured again
        density_stamp = fingerprint({"density": density_settings, "measurement": measurement_set_settings(run), "checkpoint": checkpoint,
                                     "reports": "mass_below_minus_tau"})
        sharpness_todo = not _current(result_path, stamp, checkpoint, force, label)
        density_todo = cfg.density.probes > 0 and not _current(density_path, density_stamp, checkpoint, force, label)
        merged_asked = cfg.merged and run.model.adapter.type != "none"
        merged_todo = merged_asked and not _current(merged_path, merged_stamp, checkpoint, force, label)
        if not sharpness_todo:
            print(f"{label}: sharpness already measured with these settings; skipping (--force redoes it)")
        if merged_asked and not merged_todo:
            print(f"{label}: sharpness of the merged model already measured with these settings; skipping")
        if cfg.density.probes and not density_todo:
            print(f"{label}: spectral density already measured with these settings; skipping (--force redoes it)")
        if not (sharpness_todo or density_todo or merged_todo):
            continue

        device = resolve_device(run.device)
        trained = load_trained(folder / "checkpoint.pt", device)
        texts = load_texts(run.data)
        measurement = measurement_set(texts.train, cfg, trained.tokenizer, run.data.max_length)
        if first_set is None:
            first_set = measurement
        elif not same_texts(first_set, measurement):
            print(f"{label}: warning: the measurement set differs from the experiment's first run "
                  "(different data settings or tokenizer), so its numbers are not directly comparable")
        save_torch(folder / "measurement.pt", {**measurement.to_dict(), "seed": cfg.seed})

        objective = Objective(trained.model, measurement.batches, hvp_mode=cfg.hvp)
        space = "adapter" if run.model.adapter.type != "none" else "full"

        def measure_into(path: Path, stamp: str, space: str) -> None:
            result = measure_sharpness(objective, cfg, f"{label} ({space})" if space != "full" else label)
            write_json(path, {"run": run.name, "seed": run.seed, "fingerprint": stamp, "checkpoint": checkpoint,
                              "settings": settings, "space": space, "dimension": objective.dim, "texts": texts.counts(),
                              "device": str(device), **result})
            status = {True: "converged", False: "NOT converged", None: "none from power iteration"}
            lambda_min = "" if result["lambda_min"] is None else f"{result['lambda_min']:.4g} "
            top = result["eps_sharpness"][f"{cfg.epsilons[0]:g}"]["eigvec"]
            print(f"{label}{'' if space == 'full' else f' ({space} space)'}: lambda_max {result['lambda_max']:.4g} "
                  f"({status[result['lambda_max_converged']]}), lambda_min {lambda_min}"
                  f"({status[result['lambda_min_converged']]}), {result['hvp_count']} HVPs, "
                  f"eps-sharpness@{cfg.epsilons[0]:g} {'below resolution' if top is None else f'{top:.4g}%'}, "
                  f"{result['timings']['total_s']:.1f} s")

        if sharpness_todo:
            measure_into(result_path, stamp, space)
        if density_todo:
            density = measure_density(objective, cfg.density, label)
            write_json(density_path, {"run": run.name, "seed": run.seed, "fingerprint": density_stamp,
                                      "checkpoint": checkpoint, "settings": density_settings, "device": str(device),
                                      **density})
            print(f"{label}: spectral density from {density['matvecs']} HVPs in {density['seconds']:.1f} s "
                  f"({'full' if density['reorthogonalized'] else 'no'} reorthogonalization, "
                  f"{density['lanczos_memory_mb']:.0f} MiB of Lanczos vectors); trace {density['trace']:.4g}, "
                  f"mass below −τ {density['mass_below_minus_tau']:.3f} (τ = σ = {density['tau']:.3g})")
        if merged_todo:
            del objective, trained
            trained = load_trained(folder / "checkpoint.pt", device, "merged")
            objective = Objective(trained.model, measurement.batches, hvp_mode=cfg.hvp)
            measure_into(merged_path, merged_stamp, "merged")
        del objective, trained
        if device.type == "cuda":
            torch.cuda.empty_cache()
