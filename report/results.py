"""Reading saved results back: what the report stage and results.ipynb both show.

Nothing here trains or measures. It reads the files the stages wrote under <output>/<experiment>/ for
exactly the (run, seed) pairs that experiment.json lists, each only while its folder holds the
training of that run's config in the manifest (same training fingerprint), and only results and
figures computed from those checkpoints. It says what is missing and which folders on disk it
ignores, aggregates numbers over seeds (mean, standard error, and how many values went in and which
were left out) and formats them, in one place, for report.md and the notebook.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from config.loading import run_config_from_dict
from utils.errors import CorruptFileError
from utils.io import fingerprint, load_npz, read_json
from visualization.figure_index import drawn_from
from models.runs import MANIFEST, trained_with, training_fingerprint


# The stages of an experiment whose experiment.json has an empty `stages` (written before the pipeline recorded its
# default stages there): run.py's defaults then.
UNRECORDED_STAGES = ("train", "sharpness", "landscape", "report")


@dataclass
class ExperimentResults:
    name: str
    folder: Path
    runs: list[str]                      # in config order
    seeds: dict[str, list[int]]          # run -> seeds whose folder holds the training of the manifest's config
    configs: dict[str, dict]
    listed_seeds: list[int] = field(default_factory=list)  # the manifest's seeds: a run's values over them
    trained_with: dict[str, dict[int, str]] = field(default_factory=dict)  # run -> seed -> layout.trained_with
    metrics: dict[str, dict[int, dict]] = field(default_factory=dict)      # run -> seed -> metrics.json
    sharpness: dict[str, dict[int, dict]] = field(default_factory=dict)    # run -> seed -> sharpness.json
    sharpness_merged: dict[str, dict[int, dict]] = field(default_factory=dict)  # LoRA runs: sharpness_merged.json
    prune: dict[str, dict[int, dict]] = field(default_factory=dict)        # LoRA runs: prune.json
    geometry: dict[str, dict[int, dict]] = field(default_factory=dict)     # run -> seed -> geometry.json
    density: dict[str, dict[int, dict]] = field(default_factory=dict)      # run -> seed -> density.json
    track: dict[str, dict[int, dict]] = field(default_factory=dict)        # run -> seed -> track.json
    stages: list[str] = field(default_factory=lambda: list(UNRECORDED_STAGES))  # the experiment's: only their files are missing
    surfaces: dict[str, dict[int, dict]] = field(default_factory=dict)     # run -> seed -> landscape_2d.npz (finished)
    init_to_final: dict[str, dict[int, dict]] = field(default_factory=dict)  # run -> seed -> interpolation.json
    interpolation: dict | None = None    # <experiment>/interpolation.json: alphas and the pairs of current checkpoints
    incomparable: list[str] = field(default_factory=list)  # "a → b, seed s": pairs whose runs see other texts
    search: dict | None = None           # <experiment>/search.json: the searches' studies and trials
    correlation: dict | None = None      # <experiment>/correlation.json, while computed from the current results
    figures: dict[str, Path] = field(default_factory=dict)  # stem -> PNG drawn from the current data
    missing: list[str] = field(default_factory=list)
    redo: list[str] = field(default_factory=list)           # the stages that make what is missing
    left_out: list[dict] = field(default_factory=list)      # {"run", "seed", "why"}: listed, but not trained as listed
    ignored: list[str] = field(default_factory=list)        # what is on disk but not used, and why
    corrupt: list[tuple[CorruptFileError, str]] = field(default_factory=list)  # damaged files, the stage to redo

    def lack(self, what: str, stage: str) -> None:
        """A result that is missing or not current, which running `stage` makes."""
        self.missing.append(what)
        if stage not in self.redo:
            self.redo.append(stage)

    def absent(self, stage: str, what: str) -> None:
        """A result that was never made: missing if the experiment runs `stage`, else not expected."""
        if stage in self.stages:
            self.lack(what, stage)

    def read(self, path: Path, stage: str, reader=read_json):
        """`reader(path)`, or None for a corrupt file, which is recorded with the stage that writes it."""
        try:
            return reader(path)
        except CorruptFileError as err:
            self.corrupt.append((err, stage))
            self.lack(f"{path.relative_to(self.folder)} is corrupt (run the {stage} stage again)", stage)
            return None


def redo_stages(stages: list[str], experiment_stages: list[str]) -> str:
    """--stages for a command that makes what `stages` make and leaves every result current: a retraining replaces
    the run's later results (so all of the experiment's stages run), and the correlation and the report read every
    result. Each stage redoes only what is missing or not current."""
    needed = {*stages, "report"} | (set(experiment_stages) if "train" in stages else set()) | \
        ({"correlate"} & set(experiment_stages))
    return ",".join(dict.fromkeys(s for s in [*experiment_stages, *stages, "report"] if s in needed))


def find_experiments(output: str | Path) -> list[str]:
    """Names of the experiments under `output` (folders with an experiment.json), sorted."""
    output = Path(output)
    if not output.is_dir():
        return []
    return sorted(p.parent.name for p in output.glob(f"*/{MANIFEST}"))


# ----------------------------------------------------------------------------------------------
# Loading: the manifest's (run, seed) pairs, their files, and whatever else lies in the folder.

def load_results(output: str | Path, experiment: str) -> ExperimentResults:
    """Everything the report shows. A corrupt experiment.json raises CorruptFileError; any other corrupt
    file is listed in `missing` and `corrupt` (the report stage stops on it, the notebook shows it)."""
    folder = Path(output) / experiment
    try:
        manifest = read_json(folder / MANIFEST)
    except CorruptFileError as err:
        raise err.needing("run the train stage again (--stages train): it writes the file anew") from None
    results = ExperimentResults(name=experiment, folder=folder, runs=list(manifest["runs"]), seeds={},
                                configs=manifest["configs"], listed_seeds=list(manifest["seeds"]),
                                stages=manifest.get("stages") or list(UNRECORDED_STAGES))
    expected = {run: {seed: training_fingerprint(replace(run_config_from_dict(results.configs[run]), seed=seed))
                      for seed in manifest["seeds"]} for run in results.runs}
    results.ignored += _unlisted_folders(folder, expected)
    sources = {}  # figure stem -> the current file it should be drawn from
    for run in results.runs:
        results.seeds[run] = []
        for seed, fingerprint in expected[run].items():
            seed_dir, label = folder / run / f"seed-{seed}", f"{run}/seed-{seed}"
            absent = [name for name in ("metrics.json", "checkpoint.pt") if not (seed_dir / name).is_file()]
            if absent:
                results.left_out.append({"run": run, "seed": seed, "why": f"not trained (no {' or '.join(absent)})"})
                results.lack(f"training of {label} (no {' or '.join(absent)}; run the train stage)", "train")
                continue
            metrics = results.read(seed_dir / "metrics.json", "train")
            if metrics is None:
                results.left_out.append({"run": run, "seed": seed, "why": "its metrics.json is corrupt"})
                continue
            if metrics.get("fingerprint") != fingerprint:
                results.left_out.append({"run": run, "seed": seed, "why": "trained with other settings than "
                                                                          "experiment.json lists"})
                results.ignored.append(f"{label} (trained with other settings than experiment.json lists)")
                results.lack(f"training of {label} with the settings of experiment.json (run the train stage)", "train")
                continue
            if not (seed_dir / "init.pt").is_file():  # its results stand, but no later stage can load the run
                results.lack(f"init.pt of {label}, the weights before training that later stages load (run the "
                             "train stage)", "train")
            results.seeds[run].append(seed)
            results.trained_with.setdefault(run, {})[seed] = trained_with(seed_dir)
            results.metrics.setdefault(run, {})[seed] = metrics
            sources.update(_load_run_files(results, run, seed, seed_dir))
        if not results.seeds[run]:
            results.lack(f"training of run {run} (no finished seed; run the train stage)", "train")
    sources.update(_load_pairs(results))
    search = folder / "search.json"
    results.search = results.read(search, "search") if search.is_file() else None
    sources.update(_load_correlation(results))
    for stem, source in sources.items():
        if drawn_from(folder / "figures", stem, source):
            results.figures[stem] = folder / "figures" / f"{stem}.png"
        else:
            results.lack(f"figure {stem} (not drawn from the current {source.name}; run the landscape stage)",
                         "landscape")
    return results


def _unlisted_folders(folder: Path, expected: dict[str, dict[int, str]]) -> list[str]:
    """Run and seed folders that the manifest does not list (other runs, other seeds)."""
    unlisted = []
    for run_folder in sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("seed-*"))):
        if run_folder.name not in expected:
            unlisted.append(f"{run_folder.name}/ (run not in experiment.json)")
            continue
        listed = {f"seed-{seed}" for seed in expected[run_folder.name]}
        unlisted += [f"{run_folder.name}/{p.name} (seed not in experiment.json)"
                     for p in sorted(run_folder.glob("seed-*")) if p.name not in listed]
    return unlisted


def _load_run_files(results: ExperimentResults, run: str, seed: int, seed_dir: Path) -> dict[str, Path]:
    """Read one trained (run, seed)'s measurements; return the figures they should be drawn in."""
    label, name, fingerprint = f"{run}/seed-{seed}", f"{run}_seed-{seed}", results.trained_with[run][seed]
    config = results.configs[run]
    sources = {}
    measured = [("sharpness", "sharpness", results.sharpness), ("geometry", "geometry", results.geometry)]
    if config["sharpness"].get("density", {}).get("probes"):
        measured.append(("sharpness", "density", results.density))
    if config["model"].get("adapter", {}).get("type", "none") != "none":
        measured.append(("prune", "prune", results.prune))
        if config["sharpness"].get("merged"):
            measured.append(("sharpness", "sharpness_merged", results.sharpness_merged))
    for stage, what, store in measured:
        path = seed_dir / f"{what}.json"
        data = results.read(path, stage) if path.is_file() else None
        if data is None:
            results.absent(stage, f"{what} of {label} (no {path.name})")
        elif data.get("checkpoint") != fingerprint:
            results.lack(f"{what} of {label} (measured on other weights; run the {stage} stage)", stage)
        else:
            store.setdefault(run, {})[seed] = data
    if config["train"].get("track", {}).get("every"):
        path = seed_dir / "track.json"
        data = results.read(path, "train") if path.is_file() else None
        if data is None or data.get("fingerprint") != results.metrics[run][seed]["fingerprint"]:
            results.lack(f"sharpness along training of {label} (no current track.json; run the train stage)", "train")
        else:
            results.track.setdefault(run, {})[seed] = data

    line = seed_dir / "interpolation.json"
    data = results.read(line, "landscape") if line.is_file() else None
    if data is None:
        results.absent("landscape", f"init-to-final interpolation of {label} (no interpolation.json)")
    elif data.get("checkpoint") != fingerprint:
        results.lack(f"init-to-final interpolation of {label} (computed from other weights; run the landscape "
                     "stage)", "landscape")
    else:
        results.init_to_final.setdefault(run, {})[seed] = data
        sources[f"init_to_final_{name}"] = line

    surface = seed_dir / "landscape_2d.npz"
    if not surface.is_file():
        results.absent("landscape", f"2D surface of {label} (no landscape_2d.npz)")
        return sources
    data = results.read(surface, "landscape", load_npz)
    if data is None:
        return sources
    if "done" not in data or str(data.get("checkpoint")) != fingerprint:
        results.lack(f"2D surface of {label} (computed from other weights or by an older version; run the "
                     "landscape stage)", "landscape")
    elif not data["done"].all():
        results.lack(f"2D surface of {label} (unfinished: {int(data['done'].sum())} of {data['done'].size} "
                     "points; run the landscape stage)", "landscape")
    else:
        results.surfaces.setdefault(run, {})[seed] = data
        sources.update({f"surface_2d_{name}": surface, f"surface_3d_{name}": surface})
    return sources


def _load_pairs(results: ExperimentResults) -> dict[str, Path]:
    """Keep the interpolations between runs whose two checkpoints are the current ones; name the others
    and the pairs of trained runs that have none. Return the figure drawn from the file if all of it is current."""
    path = results.folder / "interpolation.json"
    data = (results.read(path, "landscape") if path.is_file() else None) or {"pairs": []}
    current = []
    for pair in data["pairs"]:
        (a, b), seed = pair["runs"], pair["seed"]
        if [results.trained_with.get(run, {}).get(seed) for run in (a, b)] == pair.get("checkpoints"):
            current.append(pair)
        else:
            results.lack(f"interpolation {a} → {b}, seed {seed} (computed from other weights than the current "
                         "checkpoints)", "landscape")
    found = {(tuple(pair["runs"]), pair["seed"]) for pair in data["pairs"] + data.get("incomparable", [])}
    results.incomparable = [f"{pair['runs'][0]} → {pair['runs'][1]}, seed {pair['seed']}"
                            for pair in data.get("incomparable", [])]
    for seed in results.listed_seeds:
        trained = [run for run in results.runs if seed in results.seeds[run]]
        for i, a in enumerate(trained):
            for b in trained[i + 1:]:
                if ((a, b), seed) not in found:
                    results.absent("landscape", f"interpolation {a} → {b}, seed {seed} (not computed; "
                                                "run the landscape stage)")
    if current:
        results.interpolation = {"alphas": data["alphas"], "pairs": current}
    return {"interpolation": path} if current and len(current) == len(data["pairs"]) else {}


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


def run_quantities(results: ExperimentResults) -> dict[str, dict[str, tuple]]:
    """Every reported quantity as a path into one of a run's files: {name: (source, *path)}."""
    quantities = {
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
        "base_loss": ("sharpness", "base_loss"),
    }
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
    quantities.update({
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
    })
    return quantities


def _value(results: ExperimentResults, run: str, seed: int, source: str, *path):
    data = getattr(results, source).get(run, {}).get(seed)
    if source == "metrics" and path and path[-1] == -1:
        series = _nested(data, *path[:-1])
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
# Tables (Markdown), shared by report.md and the notebook: every number is formatted here.

NOTATION = ("Numbers are the mean ± standard error over seeds; (n=…) counts the seeds in the mean, shown "
            "whenever it is not a single value with nothing left out. Values left out of a mean are named: "
            "“diverged” counts NaN or infinite values, “below resolution” differences of losses too small "
            "for the loss's numerical resolution to tell from 0 (sharpness.json's loss_resolution_pct), "
            "“missing” values that were not measured; < res. marks a quantity whose every value is below "
            "resolution, – one with no value at all.")


def format_number(value: float | str | None, digits: int = 4) -> str:
    """One number: – when not measured, nan/inf/-inf when not finite."""
    if value is None:
        return "–"
    value = float(value)
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)


def format_value(stats: dict, digits: int = 4) -> str:
    """Mean ± stderr of a quantity over seeds, e.g. "3.21 ± 0.05 (n=3)", "3.2 (n=1, 1 diverged)", "3.2",
    "< res." (every value below the loss's resolution)."""
    n, diverged, below, missing = stats["n"], stats["non_finite"], stats["below_resolution"], stats["missing"]
    if n == diverged == 0 and below:
        return "< res." + (f" (n={below}, {missing} missing)" if missing else "")
    text = format_number(stats["mean"], digits)
    if stats["stderr"] is not None:
        text += f" ± {stats['stderr']:.2g}"
    notes = ([f"{diverged} diverged"] if diverged else []) + ([f"{below} below resolution"] if below else []) + \
        ([f"{missing} missing"] if missing and n + diverged + below else [])
    if n > 1 or notes:
        notes.insert(0, f"n={n}")
    return f"{text} ({', '.join(notes)})" if notes else text


def markdown_table(summary: dict, columns: list[tuple[str, str]]) -> str:
    header = "| run | " + " | ".join(title for _, title in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for run, data in summary["runs"].items():
        cells = [format_value(data["quantities"][name]) if name in data["quantities"] else "–" for name, _ in columns]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pairs_table(summary: dict) -> str:
    lines = ["| runs | seed | barrier (train) | at α |", "|---|---|---|---|"]
    for pair in summary["pairs"]:
        lines.append(f"| {pair['runs'][0]} → {pair['runs'][1]} | {pair['seed']} | {format_number(pair['barrier'])} | "
                     f"{format_number(pair['barrier_alpha'], 2)} |")
    return "\n".join(lines)


def _settings_table(by_run: dict[str, dict[int, dict]], columns: list[tuple[str, Callable[[dict], str]]]) -> str:
    """One row per run, each column `describe(file of one seed)`; where the seeds differ, each seed's value."""
    lines = ["| run | " + " | ".join(title for title, _ in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for run, by_seed in by_run.items():
        cells = []
        for _, describe in columns:
            values = {seed: describe(data) for seed, data in by_seed.items()}
            cells.append(next(iter(values.values())) if len(set(values.values())) == 1
                         else " / ".join(f"{value} (seed {seed})" for seed, value in values.items()))
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sharpness_settings_table(results: ExperimentResults) -> str:
    """The settings each run's sharpness.json was measured with (runs may override them)."""
    measured = {run: {seed: {**data["settings"], "n_tokens": data["n_tokens"]} for seed, data in by_seed.items()}
                for run, by_seed in results.sharpness.items()}
    return _settings_table(measured, [
        ("measurement set", lambda d: f"{d['batches']} × {d['batch_size']} texts, {d['n_tokens']} tokens"),
        ("eigenvalues", lambda d: f"{d['method']}, top {d['top_k']}, ≤ {d['max_iter']} HVPs, tol {d['tol']:g}"),
        ("ε", lambda d: ", ".join(f"{eps:g}" for eps in d["epsilons"])),
        ("worst case", lambda d: f"{d['ball']} ball, {d['worst_case_steps']} steps"),
        ("random directions", lambda d: str(d["random_directions"])),
        ("trace samples", lambda d: str(d["trace_samples"])),
    ])


def landscape_settings_table(results: ExperimentResults) -> str:
    """The settings each run's 2D surface was computed with (runs may override them)."""
    return _settings_table(results.surfaces, [
        ("directions", lambda d: f"{d['norm']}-normalised, landscape.seed {d['seed']}" + (", biasbn zeroed" if str(d["ignore"]) else "")),
        ("grid", lambda d: f"{len(d['alphas'])} × {len(d['betas'])} over [−{float(d['range']):g}, {float(d['range']):g}]²"),
        ("evaluation set", lambda d: f"{d['eval_batches']} × {d['eval_batch_size']} texts, {d['eval_tokens']} tokens "
                                     f"(eval_seed {d['eval_seed']})"),
        ("diverged points", lambda d: str(int((~np.isfinite(d["train_loss"])).sum()))),
    ])


def generalization_columns() -> list[tuple[str, str]]:
    return [("val_perplexity", "val perplexity"), ("test_perplexity", "test perplexity"), ("val_loss", "val loss"),
            ("test_loss", "test loss")]


def epsilons(summary: dict) -> list[str]:
    names = next(iter(summary["runs"].values()), {"quantities": {}})["quantities"]
    return sorted({n.split("@")[1] for n in names if "@" in n}, key=float)


def eps_columns(eps: str) -> list[tuple[str, str]]:
    """The study's Table I at one ε (values in %, the Taylor difference in percentage points), then the
    symmetric differences, which measure curvature, each followed by its prediction ½ε²dᵀHd."""
    return [(f"eps_sharpness_eigvec@{eps}", "ε-sharpness, eigenvector %"), (f"taylor_abs_diff@{eps}", "Taylor check Δ pp"),
            (f"worst_case@{eps}", "worst case %"), (f"eps_sharpness_random_max@{eps}", "random directions, max %"),
            (f"eps_sharpness_eigvec_symmetric@{eps}", "symmetric, eigenvector %"),
            (f"eps_sharpness_eigvec_symmetric_predicted@{eps}", "½ε²vᵀHv %"),
            (f"eps_sharpness_random_symmetric_mean@{eps}", "symmetric, random mean %"),
            (f"eps_sharpness_random_symmetric_mean_predicted@{eps}", "½ε²dᵀHd mean %"),
            (f"eps_sharpness_random_symmetric_max@{eps}", "symmetric, random max %"),
            (f"eps_sharpness_random_symmetric_max_predicted@{eps}", "½ε²dᵀHd at max %")]


def curvature_columns() -> list[tuple[str, str]]:
    """λ_max and λ_min with their Ritz residuals and the share of seeds whose estimate converged."""
    return [("lambda_max", "λ_max"), ("lambda_max_residual", "λ_max residual"), ("lambda_max_converged", "λ_max converged"),
            ("lambda_min", "λ_min"), ("lambda_min_residual", "λ_min residual"), ("lambda_min_converged", "λ_min converged"),
            ("trace", "trace of H"), ("base_loss", "loss on the set")]


def cost_columns(summary: dict) -> list[tuple[str, str]]:
    """What each run cost: its parameters, steps and FLOPs, the seconds of every stage, utilisation and memory."""
    columns = [("trainable_parameters", "trainable params"), ("n_parameters", "all params"),
               ("optimizer_steps", "steps"), ("train_flops", "train FLOPs"), ("train_time_s", "train s"),
               ("wall_time_s", "train stage wall s"), ("tokens_per_s", "tokens/s"), ("mfu", "MFU"),
               ("peak_memory_mb", "peak MB"), ("sharpness_time_s", "sharpness s"), ("landscape_time_s", "2D surface s")]
    if has_geometry(summary):
        columns.insert(10, ("geometry_time_s", "geometry s"))
    for name, title in (("track_time_s", "tracking s"), ("density_time_s", "density s"), ("prune_time_s", "pruning s")):
        if any(data["quantities"].get(name, {}).get("n") for data in summary["runs"].values()):
            columns.append((name, title))
    return columns


# ----------------------------------------------------------------------------------------------
# ℓ∞ geometry (geometry.json): the Hessian's (1,1)-norm against d·‖H‖₂, in the loss's own coordinates
# and after a random rotation R (Xie, Mohamadi & Li, ICLR 2025).

def has_geometry(summary: dict) -> bool:
    return any("original_l11_per_coordinate" in data["quantities"] for data in summary["runs"].values())


def geometry_columns() -> list[tuple[str, str]]:
    """The final losses next to the (1,1)-norm per coordinate, the spectral norm and the paper's ratio, in both frames."""
    return [("train_loss", "final train loss"), ("val_loss", "final val loss"),
            ("original_l11_per_coordinate", "‖H‖₁,₁/d"), ("rotated_l11_per_coordinate", "‖RᵀHR‖₁,₁/d"),
            ("original_spectral_norm", "‖H‖₂"), ("rotated_spectral_norm", "‖RᵀHR‖₂"),
            ("original_l11_ratio", "‖H‖₁,₁/(d‖H‖₂)"), ("rotated_l11_ratio", "‖RᵀHR‖₁,₁/(d‖H‖₂)"),
            ("original_frobenius", "‖H‖_F"), ("rotated_frobenius", "‖RᵀHR‖_F")]


def _interval(estimate: dict) -> str:
    """'total [low, high]' of one estimate with an interval ("ci"), or the total alone."""
    ci = estimate.get("ci")
    text = format_number(estimate["total"])
    return f"{text} [{format_number(ci[0])}, {format_number(ci[1])}]" if ci else text


def geometry_detail_table(results: ExperimentResults) -> str:
    """One row per run, seed and frame: both (1,1) estimators with their intervals, ‖·‖∞, ‖·‖₂ and ‖·‖_F with its."""
    lines = ["| run | seed | frame | ‖·‖₁,₁ by median [CI] | ‖·‖₁,₁ by half-IQR [CI] | ‖·‖∞ (median) | ‖·‖₂ | ‖·‖_F [CI] | d |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run, by_seed in results.geometry.items():
        for seed, data in sorted(by_seed.items()):
            for frame in GEOMETRY_FRAMES:
                values = data["frames"].get(frame)
                if values is None:
                    continue
                name = frame if frame == "original" else f"{frame} ({values['rotation']}, seed {values['rotation_seed']})"
                spectral = values["spectral"]
                norm_2 = format_number(spectral["value"]) + ("" if spectral["converged"] else " (not converged)")
                frobenius = values["frobenius"]
                norm_f = "–" if frobenius is None else _interval({"total": frobenius["value"], "ci": frobenius.get("ci")})
                lines.append(f"| {run} | {seed} | {name} | {_interval(values['l11']['median'])} | "
                             f"{_interval(values['l11']['half_iqr'])} | {format_number(values['linf']['median'])} | "
                             f"{norm_2} | {norm_f} | {data['dim']} |")
    return "\n".join(lines)


def geometry_section_applies(results: ExperimentResults) -> bool:
    """Whether the experiment asks for, or has, ℓ∞-geometry results or rotated training."""
    return bool(results.geometry) or "geometry" in results.stages or any(
        cfg.get("train", {}).get("rotation", "none") != "none" for cfg in results.configs.values())


def step_loss_curves(results: ExperimentResults) -> dict[str, dict]:
    """{run: {"losses": per-seed step_loss, "optimizer", "rotation"}} for visualization.plots.step_losses_figure."""
    curves = {}
    for run in results.runs:
        losses = [results.metrics[run][seed].get("step_loss") for seed in results.seeds.get(run, [])]
        losses = [series for series in losses if series]
        if losses:
            train = results.configs[run]["train"]
            curves[run] = {"losses": losses, "optimizer": train["optimizer"], "rotation": train.get("rotation", "none")}
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


def geometry_settings_table(results: ExperimentResults) -> str:
    """The settings each run's geometry.json was measured with."""
    measured = {run: {seed: {**data["settings"]["geometry"], **data["settings"]["sharpness"], "n_tokens": data["n_tokens"]}
                      for seed, data in by_seed.items()}
                for run, by_seed in results.geometry.items()}
    return _settings_table(measured, [
        ("measurement set", lambda d: f"{d['batches']} × {d['batch_size']} texts, {d['n_tokens']} tokens"),
        ("(1,1) sketches", lambda d: f"{d['cauchy_vectors']} Cauchy vectors, {d['bootstrap']} bootstrap resamples, "
                                     f"{d['confidence']:.0%} intervals"),
        ("‖·‖_F", lambda d: f"Hutch++, {d['frobenius_probes']} probes" if d["frobenius_probes"] else "off"),
        ("‖·‖₂", lambda d: f"Lanczos, ≤ {d['max_iter']} HVPs, tol {d['tol']:g}"),
        ("rotation R", lambda d: "none" if d["rotation"] == "none" else f"{d['rotation']}, seed {d['rotation_seed']}"),
    ])


# ----------------------------------------------------------------------------------------------
# Along training: the tracked sharpness (track.json), the spectral density (density.json) and the surfaces
# drawn on the PCA plane of the training path.

def dynamics_section_applies(results: ExperimentResults) -> bool:
    return bool(results.track or results.density or pca_surfaces(results))


def track_columns() -> list[tuple[str, str]]:
    """The last tracked point of each run: λ_max and its ratio to 2/η, the preconditioned λ and its ratio to
    Adam's threshold, and what tracking cost."""
    return [("track_lambda_max", "λ_max (last point)"), ("track_edge_ratio", "÷ (2+2β)/η"),
            ("track_preconditioned_lambda_max", "λ_max(P⁻¹ᐟ²HP⁻¹ᐟ²) (last)"),
            ("track_preconditioned_edge_ratio", "÷ (2+2β₁)/((1−β₁)η)"),
            ("track_hvps", "HVPs"), ("track_time_s", "seconds")]


def density_columns() -> list[tuple[str, str]]:
    return [("density_mass_below_minus_tau", "mass below −τ (τ = σ)"), ("density_trace", "tr(H) (SLQ)"), ("lambda_max", "λ_max"),
            ("density_hvps", "HVPs"), ("density_time_s", "seconds")]


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


# ----------------------------------------------------------------------------------------------
# LoRA runs and cost: pruning (prune.json), the two weight spaces, perplexity against what training spent.

def prune_runs(results: ExperimentResults) -> dict[str, dict[int, dict]]:
    """{run: {seed: prune.json}} in the runs' order, for plots.pruning_figure."""
    return {run: dict(sorted(results.prune[run].items())) for run in results.runs if run in results.prune}


def prune_table(results: ExperimentResults) -> str:
    """One row per run, seed and fraction: validation perplexity with the adapter pruned by magnitude, at random
    (mean ± standard error over the masks), rewound and retrained, and λ_max of the magnitude-pruned adapter."""
    lines = ["| run | seed | zeroed | val ppl, magnitude | val ppl, random | val ppl, rewound + retrained | λ_max |",
             "|---|---|---|---|---|---|---|"]
    for run, by_seed in prune_runs(results).items():
        for seed, data in by_seed.items():
            rewound = {r["fraction"]: r for r in data.get("rewind", [])}
            curvature = {p["fraction"]: p for p in data.get("lambda_max", [])}
            for magnitude, random in zip(data["magnitude"], data["random"]):
                fraction = magnitude["fraction"]
                stats = mean_and_stderr([s["val_perplexity"] for s in random["seeds"]])
                lambda_max = curvature.get(fraction)
                lines.append(
                    f"| {run} | {seed} | {magnitude['pruned_fraction']:.1%} | {format_number(magnitude['val_perplexity'])} | "
                    f"{format_value(stats) if random['seeds'] else '–'} | "
                    f"{format_number(rewound[fraction]['val_perplexity']) if fraction in rewound else '–'} | "
                    f"{'–' if lambda_max is None else format_number(lambda_max['lambda_max'])} |")
    return "\n".join(lines)


def space_columns() -> list[tuple[str, str]]:
    """λ and trace in the adapter's space (what the optimizer moves) and in the merged full model's."""
    return [("sharpness_dimension", "d (adapter)"), ("lambda_max", "λ_max (adapter)"), ("trace", "trace (adapter)"),
            ("merged_dimension", "d (merged)"), ("merged_lambda_max", "λ_max (merged)"),
            ("merged_lambda_min", "λ_min (merged)"), ("merged_trace", "trace (merged)")]


def budget_curves(results: ExperimentResults) -> dict[str, list[dict]]:
    """{run: [metrics.json of each seed]} of the runs that recorded what they had spent at each validation."""
    curves = {run: [results.metrics[run][seed] for seed in results.seeds.get(run, [])
                    if results.metrics[run][seed].get("at_flops") and None not in results.metrics[run][seed]["at_flops"]]
              for run in results.runs}
    return {run: seeds for run, seeds in curves.items() if seeds}


# ----------------------------------------------------------------------------------------------
# Flatness vs generalization over the runs (the correlate stage's input), and the searches.

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


def _load_correlation(results: ExperimentResults) -> dict[str, Path]:
    """correlation.json while it was computed from the current results (the report draws its figure)."""
    path = results.folder / CORRELATION_FILE
    data = results.read(path, "correlate") if path.is_file() else None
    if data is None:
        results.absent("correlate", f"the correlation of the measures with generalization (no {CORRELATION_FILE})")
        return {}
    if data.get("inputs") != points_fingerprint(correlation_points(results)):
        results.lack(f"{CORRELATION_FILE} (computed from other results than the current ones; run the correlate "
                     "stage)", "correlate")
        return {}
    results.correlation = data
    return {}


def correlation_table(correlation: dict) -> str:
    """One row per measure, strongest |τ| with the gap first: Kendall τ and Spearman ρ with the gap (95%
    bootstrap intervals), τ with the test loss, and the granulated Kendall coefficient Ψ where the runs form a grid."""
    def cell(stats: dict, key: str) -> str:
        value, (low, high) = stats[key], stats[key.replace("tau", "interval").replace("rho", "interval")]
        return f"{format_number(value, 3)} [{format_number(low, 2)}, {format_number(high, 2)}]"

    axes = next((list(data["granulated"]["per_axis"]) for data in correlation["measures"].values()
                 if data.get("granulated")), [])  # the hyper-parameter axes ψ is averaged over (not the seed)
    header = "| measure | n | τ with gap | ρ with gap | τ with test loss |" + "".join(f" ψ {a} |" for a in axes) + \
        (" Ψ |" if axes else "")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    rows = sorted(correlation["measures"].items(), key=lambda item: -abs(float(item[1]["vs_gap"]["kendall_tau"])
                                                                       if math.isfinite(float(item[1]["vs_gap"]["kendall_tau"])) else 0))
    for name, data in rows:
        granulated = data.get("granulated") or {}
        lines.append(f"| {name} | {data['vs_gap']['n']} | {cell(data['vs_gap'], 'kendall_tau')} | "
                     f"{cell(data['vs_gap'], 'spearman_rho')} | {cell(data['vs_test_loss'], 'kendall_tau')} |"
                     + "".join(f" {format_number(granulated['per_axis'][a]['psi'], 3)} |" for a in axes)
                     + (f" {format_number(granulated['overall'], 3)} |" if axes else ""))
    return "\n".join(lines)


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


def search_table(search: dict) -> str:
    """Per study: sampler, seed, trials (complete / pruned / failed), the best value and its run, and the seconds
    its trials trained."""
    lines = ["| study | sampler | seed | trials | complete | pruned | failed | best | best run | trial seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, study in search["studies"].items():
        counted = [t for t in study["trials"] if t["counted"]]
        states = [t["state"] for t in counted]
        best = study["best"] or {}
        seconds = sum(t["seconds"] or 0 for t in counted)
        lines.append(f"| {name} | {study['sampler']} | {study['seed']} | {len(counted)} | {states.count('complete')} | "
                     f"{states.count('pruned')} | {states.count('fail')} | {format_number(best.get('value'))} | "
                     f"{best.get('run') or '–'} | {seconds:.1f} |")
    return "\n".join(lines)
