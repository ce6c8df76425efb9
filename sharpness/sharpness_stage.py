"""The `sharpness` stage: for every trained run, build the measurement set once and measure on it.

Writes <run dir>/sharpness.json (with the indices of the measurement set's texts in the filtered training split:
the set itself is rebuilt from them and the run's tokenizer, never read from disk) and, with sharpness.density.probes > 0,
<run dir>/density.json (the SLQ spectral density: sharpness.density). A LoRA run (model.adapter) is
measured in its adapter's space (the weights the optimizer moves); with sharpness.merged also in the merged
full-weight space, into <run dir>/sharpness_merged.json. Each file records the settings and weights it was
measured with and is measured again when they change, each on its own.
"""

from __future__ import annotations

import time
from pathlib import Path

from data.measurement import FixedSet, same_texts
from optimization.curvature import MIN_STABLE_STEPS, hutchinson_trace, lanczos, power_iteration
from optimization.measured_run import Opened, Result, TrainedRun, measure_runs, measured_runs, sharpness_settings
from optimization.objective import Objective
from sharpness.density import lanczos_memory_bytes, reorthogonalizes, slq
from sharpness.sharpness import (curvatures, eps_sharpness, loss_resolution_pct, random_unit_directions,
                                 taylor_check, worst_case)
from config.schema import DensityConfig, Experiment, SharpnessConfig, section_settings
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


def sharpness_results(trained: TrainedRun) -> list[Result]:
    """sharpness.json; density.json with sharpness.density.probes > 0; for a LoRA run with sharpness.merged,
    sharpness_merged.json. Each is stamped on its own: sharpness.json (and the merged one) with the sharpness section
    but its parts with files of their own; density.json with the whole section but sharpness.merged (its probes
    measure the same operator: the measurement set, its HVP)."""
    run, cfg = trained.run, trained.run.sharpness
    if cfg.method == "lanczos" and cfg.max_iter <= MIN_STABLE_STEPS:
        print(f"{trained.label}: warning: with sharpness.max_iter {cfg.max_iter} Lanczos cannot flag an eigenvalue "
              f"converged (each must stay put for {MIN_STABLE_STEPS} steps); set at least {MIN_STABLE_STEPS + 1}")
    settings = sharpness_settings(run)
    results = [trained.result("sharpness.json", settings, "sharpness")]
    if cfg.density.probes:
        with_density = {**settings, "density": section_settings(run, "sharpness")["sharpness"]["density"]}
        results.append(trained.result("density.json", with_density, "spectral density"))
    if cfg.merged and run.model.adapter.type != "none":
        results.append(trained.result("sharpness_merged.json", settings, "sharpness of the merged model"))
    return results


def measure_run(trained: TrainedRun, todo: list[Result], first_set: list[FixedSet]) -> None:
    """Open the run on its measurement set and measure on it what `todo` names; `first_set`
    holds the experiment's first measurement set, which every run's should equal."""
    run, label, cfg = trained.run, trained.label, trained.run.sharpness
    opened = trained.open()
    if not first_set:
        first_set.append(opened.measurement)
    elif not same_texts(first_set[0], opened.measurement):
        print(f"{label}: warning: the measurement set differs from the experiment's first run "
              "(different data settings or tokenizer), so its numbers are not directly comparable")
    todo_by_name = {result.path.name: result for result in todo}
    space = "adapter" if run.model.adapter.type != "none" else "full"
    if "sharpness.json" in todo_by_name:
        write_sharpness(trained, todo_by_name["sharpness.json"], opened, space)
    if "density.json" in todo_by_name:
        density = measure_density(opened.objective, cfg.density, label)
        todo_by_name["density.json"].write({"device": str(trained.device), **density})
        print(f"{label}: spectral density from {density['matvecs']} HVPs in {density['seconds']:.1f} s "
              f"({'full' if density['reorthogonalized'] else 'no'} reorthogonalization, "
              f"{density['lanczos_memory_mb']:.0f} MiB of Lanczos vectors); trace {density['trace']:.4g}, "
              f"mass below −τ {density['mass_below_minus_tau']:.3f} (τ = σ = {density['tau']:.3g})")
    if "sharpness_merged.json" in todo_by_name:
        del opened  # one model at a time
        merged = trained.open("merged")
        write_sharpness(trained, todo_by_name["sharpness_merged.json"], merged, "merged")


def write_sharpness(trained: TrainedRun, result: Result, opened: Opened, space: str) -> None:
    cfg, label, objective = trained.run.sharpness, trained.label, opened.objective
    measured = measure_sharpness(objective, cfg, f"{label} ({space})" if space != "full" else label)
    result.write({"space": space, "dimension": objective.dim, "texts": trained.texts.counts(),
                  "measurement_indices": opened.measurement.indices, "device": str(trained.device), **measured})
    status = {True: "converged", False: "NOT converged", None: "none from power iteration"}
    lambda_min = "" if measured["lambda_min"] is None else f"{measured['lambda_min']:.4g} "
    top = measured["eps_sharpness"][f"{cfg.epsilons[0]:g}"]["eigvec"]
    print(f"{label}{'' if space == 'full' else f' ({space} space)'}: lambda_max {measured['lambda_max']:.4g} "
          f"({status[measured['lambda_max_converged']]}), lambda_min {lambda_min}"
          f"({status[measured['lambda_min_converged']]}), {measured['hvp_count']} HVPs, "
          f"eps-sharpness@{cfg.epsilons[0]:g} {'below resolution' if top is None else f'{top:.4g}%'}, "
          f"{measured['timings']['total_s']:.1f} s")


def sharpness_stage(experiment: Experiment, output: Path, force: bool) -> None:
    first_set: list[FixedSet] = []
    measure_runs(measured_runs(experiment, output), force, sharpness_results,
                 lambda trained, todo: measure_run(trained, todo, first_set))
