"""The numbers behind every table and figure: each reported quantity of each (run, seed), aggregated over seeds
(mean, standard error, and how many values went in and which were left out), the curves the figures draw, and
the points the correlate stage correlates. Nothing here reads files: report.reader does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from optimization.evaluation import perplexity
from report.experiment_results import ExperimentResults
from utils.io import fingerprint


# ----------------------------------------------------------------------------------------------
# Aggregation over seeds. A value may be not finite (NaN or inf: it diverged), below the loss's
# resolution, or missing (None: not measured); none goes into the mean, and each is counted so that
# no table hides it.

GEOMETRY_FRAMES = ("original", "rotated")  # geometry.json: the loss's own coordinates, and after a rotation R
BELOW_RESOLUTION = "below resolution"  # a measured difference too small for the loss to resolve (per_seed)


def mean_and_stderr(values: list[float | str | None]) -> dict:
    """Mean and standard error of the mean (sample std / sqrt(n)) of the finite values, n of them
    (stderr is None for fewer than two), and how many values were not finite, below the loss's
    resolution (BELOW_RESOLUTION) or missing (None)."""
    below = sum(1 for v in values if v == BELOW_RESOLUTION)
    measured = [float(v) for v in values if v is not None and v != BELOW_RESOLUTION]
    finite = [v for v in measured if math.isfinite(v)]
    n = len(finite)
    mean = sum(finite) / n if n else None
    stderr = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1) / n) if n > 1 else None
    return {"mean": mean, "stderr": stderr, "n": n, "non_finite": len(measured) - n, "below_resolution": below,
            "missing": len(values) - len(measured) - below}


def _aggregate(per_seed: dict[int, float | None]) -> dict:
    return {"per_seed": {str(s): v for s, v in per_seed.items()},
            **mean_and_stderr(list(per_seed.values()))}


def _eps_keys(results: ExperimentResults) -> list[str]:
    keys = []
    for by_seed in results.sharpness.values():
        for data in by_seed.values():
            keys += [k for k in data.get("eps_sharpness", {}) if k not in keys]
    return sorted(keys, key=float)


def _nested(data: dict | None, *path):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


# The quantities every run has, {name: (source, *path)} with source an ExperimentResults field: the losses and
# sharpness first, then (after those of the measurements a run has: run_quantities) the barrier and what training spent.
FIRST_QUANTITIES = {
    "train_loss": ("metrics", "train_loss", -1),
    "val_loss": ("metrics", "val_loss", -1),
    "val_perplexity": ("metrics", "val_perplexity", -1),
    "test_loss": ("metrics", "test_loss"),
    "test_perplexity": ("metrics", "test_perplexity"),
    "final_train_loss": ("metrics", "final_train_loss"),
    "generalization_gap": ("metrics", "generalization_gap"),
    "weight_norm": ("metrics", "weight_norm"),
    "distance_from_init": ("metrics", "distance_from_init"),
    "lambda_max": ("sharpness", "lambda_max"),
    "lambda_max_converged": ("sharpness", "lambda_max_converged"),  # the mean over seeds: the share converged
    "lambda_max_residual": ("sharpness", "lambda_max_residual"),
    "lambda_min": ("sharpness", "lambda_min"),
    "lambda_min_converged": ("sharpness", "lambda_min_converged"),
    "lambda_min_residual": ("sharpness", "lambda_min_residual"),
    "trace": ("sharpness", "trace", "mean"),
    "trace_stderr": ("sharpness", "trace", "stderr"),  # each seed's Hutchinson standard error
    "base_loss": ("sharpness", "base_loss"),
}
LAST_QUANTITIES = {
    "init_to_final_barrier": ("init_to_final", "barrier"),
    "train_time_s": ("metrics", "train_time_s"),
    "wall_time_s": ("metrics", "wall_time_s"),
    "optimizer_steps": ("metrics", "optimizer_steps"),
    "train_flops": ("metrics", "train_flops"),
    "mfu": ("metrics", "mfu"),
    "trainable_parameters": ("metrics", "trainable_parameters"),
    "n_parameters": ("metrics", "n_parameters"),
    "best_val_perplexity": ("metrics", "best", "val_perplexity"),
    "seconds_to_best": ("metrics", "best", "at_seconds"),
    "flops_to_best": ("metrics", "best", "at_flops"),
    "tokens_per_s": ("metrics", "tokens_per_s"),
    "peak_memory_mb": ("metrics", "peak_memory_mb"),
    "prune_time_s": ("prune", "seconds"),
    "sharpness_time_s": ("sharpness", "timings", "total_s"),
    "geometry_time_s": ("geometry", "timings", "total_s"),
    "landscape_time_s": ("surfaces", "time_s"),
}


def run_quantities(results: ExperimentResults) -> dict[str, dict[str, tuple]]:
    """Every reported quantity as a path into one of a run's files: {name: (source, *path)}."""
    quantities = dict(FIRST_QUANTITIES)
    for eps in _eps_keys(results):
        quantities[f"eps_sharpness_eigvec@{eps}"] = ("sharpness", "eps_sharpness", eps, "eigvec")
        quantities[f"eps_sharpness_random_max@{eps}"] = ("sharpness", "eps_sharpness", eps, "random_max")
        for key in ("eigvec_symmetric_pct", "eigvec_symmetric_predicted_pct", "random_symmetric_mean_pct",
                    "random_symmetric_mean_predicted_pct", "random_symmetric_max_pct", "random_symmetric_max_predicted_pct"):
            quantities[f"eps_sharpness_{key.removesuffix('_pct')}@{eps}"] = ("sharpness", "eps_sharpness", eps, key)
        quantities[f"worst_case@{eps}"] = ("sharpness", "worst_case", eps, "value_pct")
        quantities[f"taylor_abs_diff@{eps}"] = ("sharpness", "taylor_check", eps, "abs_diff_pct")
    if results.geometry or "geometry" in results.stages:
        for frame in GEOMETRY_FRAMES:
            where = ("geometry", "frames", frame)
            quantities.update({
                f"{frame}_l11_per_coordinate": (*where, "l11", "median", "per_coordinate"),
                f"{frame}_l11_half_iqr_per_coordinate": (*where, "l11", "half_iqr", "per_coordinate"),
                f"{frame}_linf": (*where, "linf", "median"),
                f"{frame}_spectral_norm": (*where, "spectral", "value"),
                f"{frame}_frobenius": (*where, "frobenius", "value"),
                f"{frame}_l11_ratio": (*where, "ratio", "median"),
            })
    if results.track:
        quantities.update({
            "track_lambda_max": ("track", "last", "lambda_max"),
            "track_edge_ratio": ("track", "last", "lambda_max", "threshold"),
            "track_preconditioned_lambda_max": ("track", "last", "preconditioned_lambda_max"),
            "track_preconditioned_edge_ratio": ("track", "last", "preconditioned_lambda_max", "preconditioned_threshold"),
            "track_hvps": ("track", "hvps"),
            "track_time_s": ("track", "seconds"),
        })
    if results.density:
        quantities.update({"density_mass_below_minus_tau": ("density", "mass_below_minus_tau"),
                           "density_trace": ("density", "trace"),
                           "density_hvps": ("density", "matvecs"), "density_time_s": ("density", "seconds")})
    if results.sharpness_merged:
        quantities.update({"merged_lambda_max": ("sharpness_merged", "lambda_max"),
                           "merged_lambda_min": ("sharpness_merged", "lambda_min"),
                           "merged_trace": ("sharpness_merged", "trace", "mean")})
    if results.sharpness_merged or results.prune:
        quantities.update({"sharpness_dimension": ("sharpness", "dimension"),
                           "merged_dimension": ("sharpness_merged", "dimension")})
    quantities.update(LAST_QUANTITIES)
    return quantities


def _value(results: ExperimentResults, run: str, seed: int, source: str, *path):
    data = getattr(results, source).get(run, {}).get(seed)
    if source == "metrics" and path and path[-1] == -1:
        series = _nested(data, *path[:-1])
        if not series and data and data.get("epochs") == 0 and path[0] in ("val_loss", "val_perplexity"):
            loss = data["init_val_loss"]  # a run measured as is: its one validation is of the initial weights
            return loss if path[0] == "val_loss" else perplexity(loss)
        return series[-1] if series else None
    if source == "metrics" and path[0] == "best":  # at the validation with the lowest perplexity
        return (best_validation(data) or {}).get(path[1])
    if source == "surfaces":
        value = None if data is None else data.get(path[0])
        return None if value is None else float(np.asarray(value))
    if source == "track" and path[0] == "last":  # the last point; with a threshold, the value's ratio to it
        last = (data or {}).get("points", [{}])[-1]
        value = last.get(path[1])
        if value is None or len(path) < 3:
            return value
        limit = last.get(path[2])
        return None if not limit else value / limit
    value = _nested(data, *path)
    if value is None and path[-1] in (_nested(data, *path[:-1], "below_resolution") or ()):
        return BELOW_RESOLUTION  # measured, and too small for the loss to tell from 0: not missing
    return value


def best_validation(metrics: dict | None) -> dict | None:
    """The validation (of an epoch, or where train.budget stopped) with the lowest perplexity: its perplexity
    and what training had spent by then (at_step, at_seconds, at_flops; runs trained before they were
    recorded have none)."""
    if not metrics or not metrics.get("val_perplexity") or not metrics.get("at_seconds"):
        return None
    best = min(range(len(metrics["val_perplexity"])), key=lambda i: float(metrics["val_perplexity"][i]))
    return {"val_perplexity": metrics["val_perplexity"][best],
            **{key: metrics[key][best] for key in ("at_step", "at_seconds", "at_flops")}}


def summarize(results: ExperimentResults) -> dict:
    """The numbers behind every table: per run, each quantity per listed seed (None where the seed has
    no current training or measurement) with its mean, stderr and counts."""
    quantities = run_quantities(results)
    runs = {}
    for run in results.runs:
        runs[run] = {"seeds": results.seeds.get(run, []), "quantities": {
            name: _aggregate({s: _value(results, run, s, *where) for s in results.listed_seeds})
            for name, where in quantities.items()}}
    pairs = []
    for pair in (results.interpolation or {}).get("pairs", []):
        pairs.append({"runs": pair["runs"], "seed": pair["seed"], "barrier": pair["barrier"],
                      "barrier_alpha": pair["barrier_alpha"]})
    return {"experiment": results.name, "runs": runs, "pairs": pairs, "missing": results.missing,
            "ignored": results.ignored}


# ----------------------------------------------------------------------------------------------
# Curves and per-seed files, in the runs' order, for the figures of visualization.plots.

def _unrotated(config: dict) -> dict:
    """What a run and its rotated twin share: its config without its name, seed and rotation."""
    train = {key: value for key, value in config["train"].items() if key not in ("rotation", "rotation_seed")}
    return {**{key: value for key, value in config.items() if key not in ("name", "seed")}, "train": train}


def step_loss_curves(results: ExperimentResults) -> dict[str, dict]:
    """{run: {"losses": per-seed step_loss, "group", "rotation"}} for visualization.plots.step_losses_figure; a run's
    group is the first run whose config differs from its own only in the rotation (itself where none does), so a run
    and its rotated twin share a colour even where two runs share an optimizer (e.g. at two widths)."""
    curves = {}
    for run in results.runs:
        losses = [results.metrics[run][seed].get("step_loss") for seed in results.seeds.get(run, [])]
        losses = [series for series in losses if series]
        if losses:
            group = next(other for other in results.runs
                         if _unrotated(results.configs[other]) == _unrotated(results.configs[run]))
            rotation = results.configs[run]["train"].get("rotation", "none")
            curves[run] = {"losses": losses, "group": group, "rotation": rotation}
    return curves


def geometry_norms(summary: dict) -> dict[str, dict[str, dict]]:
    """{run: {frame: {"l11", "spectral", "ratio"}}}: means over seeds, for visualization.plots.geometry_norms_figure."""
    norms = {}
    for run, data in summary["runs"].items():
        quantities = data["quantities"]
        if quantities.get("original_l11_per_coordinate", {}).get("n"):
            norms[run] = {frame: {key: quantities[f"{frame}_{name}"]["mean"] for key, name in
                                  (("l11", "l11_per_coordinate"), ("spectral", "spectral_norm"), ("ratio", "l11_ratio"))}
                          for frame in GEOMETRY_FRAMES}
    return norms


def track_curves(results: ExperimentResults) -> dict[str, dict]:
    """{run: {"tracks": per-seed track points, "losses": per-seed step_loss}} for plots.tracked_sharpness_figure."""
    def line(train: dict) -> str:
        momentum = train.get("momentum", 0.0)
        return f"(2+2·{momentum:g})/η" if momentum else "2/η"

    return {run: {"tracks": [by_seed[seed]["points"] for seed in sorted(by_seed)],
                  "losses": [results.metrics[run][seed].get("step_loss") or [] for seed in sorted(by_seed)],
                  "line": line(results.configs[run]["train"])}
            for run, by_seed in results.track.items()}


def density_runs(results: ExperimentResults) -> dict[str, dict[int, dict]]:
    """{run: {seed: density.json}} in the runs' order, for plots.spectral_density_figure."""
    return {run: dict(sorted(results.density[run].items())) for run in results.runs if run in results.density}


def pca_surfaces(results: ExperimentResults) -> dict[str, Path]:
    """{figure stem: PNG} of the 2D surfaces drawn on the PCA plane of their run's training path."""
    return {f"surface_2d_{run}_seed-{seed}": results.figures[f"surface_2d_{run}_seed-{seed}"]
            for run, by_seed in results.surfaces.items() for seed, data in sorted(by_seed.items())
            if "path_coordinates" in data and f"surface_2d_{run}_seed-{seed}" in results.figures}


def prune_runs(results: ExperimentResults) -> dict[str, dict[int, dict]]:
    """{run: {seed: prune.json}} in the runs' order, for plots.pruning_figure."""
    return {run: dict(sorted(results.prune[run].items())) for run in results.runs if run in results.prune}


def budget_curves(results: ExperimentResults) -> dict[str, list[dict]]:
    """{run: [metrics.json of each seed]} of the runs that recorded what they had spent at each validation."""
    curves = {run: [results.metrics[run][seed] for seed in results.seeds.get(run, [])
                    if results.metrics[run][seed].get("at_flops") and None not in results.metrics[run][seed]["at_flops"]]
              for run in results.runs}
    return {run: seeds for run, seeds in curves.items() if seeds}


def search_curves(search: dict) -> dict[str, list[list[float | None]]]:
    """{sampler: [best value so far after each counted trial, one list per study]}: the convergence of each
    search method over its studies (search seeds); a trial with no value (pruned, failed) keeps the best."""
    curves: dict[str, list] = {}
    for study in search["studies"].values():
        best, curve = None, []
        pick = max if study["direction"] == "maximize" else min
        for trial in study["trials"]:
            if not trial["counted"]:
                continue
            if trial["state"] == "complete" and trial["value"] is not None:
                best = trial["value"] if best is None else pick(best, trial["value"])
            curve.append(best)
        curves.setdefault(study["sampler"], []).append(curve)
    return curves


def search_seconds(search: dict) -> dict[str, list[float]]:
    """{sampler: [seconds its counted trials trained, one per study]}."""
    seconds: dict[str, list] = {}
    for study in search["studies"].values():
        seconds.setdefault(study["sampler"], []).append(sum(t["seconds"] or 0 for t in study["trials"] if t["counted"]))
    return seconds


# ----------------------------------------------------------------------------------------------
# Flatness vs generalization over the runs: the correlate stage's input.

CORRELATION_FILE = "correlation.json"
# The measures correlated with the generalization gap, where the runs have them (name in run_quantities).
CORRELATED = ("lambda_max", "trace", "eps_sharpness_eigvec", "eps_sharpness_random_max", "worst_case",
              "original_l11_per_coordinate", "original_spectral_norm", "final_train_loss", "weight_norm",
              "distance_from_init")


def _flat_config(config: dict, prefix: str = "") -> dict:
    """A run's resolved config as {dotted key: hashable value} (free-form mappings as sorted JSON)."""
    flat = {}
    for key, value in config.items():
        dotted = prefix + key
        if dotted in ("name", "seed"):
            continue
        if isinstance(value, dict) and dotted not in ("model.config", "search.space"):
            flat.update(_flat_config(value, f"{dotted}."))
        elif isinstance(value, (dict, list)):
            flat[dotted] = json.dumps(value, sort_keys=True)
        else:
            flat[dotted] = value
    return flat


def correlation_points(results: ExperimentResults) -> dict:
    """Every trained (run, seed) as a point: its settings that vary between points (the axes, plus `seed`
    when several), its generalization gap (test − final train loss) and test loss, and each measure; and the
    listed (run, seed) pairs left out, with why."""
    quantities = run_quantities(results)
    names = [name for name in quantities if name.split("@")[0] in CORRELATED]
    points = []
    for run in results.runs:
        flat = _flat_config(results.configs[run])
        for seed in results.seeds.get(run, []):
            def number(name):
                value = _value(results, run, seed, *quantities[name])
                return None if value is None or value == BELOW_RESOLUTION else float(value)
            points.append({"run": run, "seed": seed, "settings": {**flat, "seed": seed},
                           "gap": number("generalization_gap"), "test_loss": number("test_loss"),
                           "measures": {name: number(name) for name in names}})
    keys = list(dict.fromkeys(key for p in points for key in p["settings"]))  # runs of older versions lack some
    axes = [key for key in keys if len({p["settings"].get(key) for p in points}) > 1]
    for point in points:
        point["axes"] = {key: point["settings"].get(key) for key in axes}
        del point["settings"]
    return {"axes": axes, "points": points, "left_out": results.left_out,
            "measures": [name for name in names if sum(p["measures"][name] is not None for p in points) >= 3]}


def points_fingerprint(points: dict) -> str:
    """What correlation.json was computed from, to tell when it is stale."""
    return fingerprint(points)


