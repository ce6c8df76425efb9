"""Reading saved results back: what the report stage and results.ipynb both show.

Nothing here trains or measures; it reads the files the stages wrote under <output>/<experiment>/,
says which are missing, and aggregates numbers over seeds (mean and standard error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.io import read_json


@dataclass
class ExperimentResults:
    name: str
    folder: Path
    runs: list[str]                      # in config order
    seeds: dict[str, list[int]]          # run -> seeds with a finished training
    configs: dict[str, dict]
    metrics: dict[str, dict[int, dict]] = field(default_factory=dict)      # run -> seed -> metrics.json
    sharpness: dict[str, dict[int, dict]] = field(default_factory=dict)    # run -> seed -> sharpness.json
    surfaces: dict[str, dict[int, dict]] = field(default_factory=dict)     # run -> seed -> landscape_2d.npz
    init_to_final: dict[str, dict[int, dict]] = field(default_factory=dict)  # run -> seed -> interpolation.json
    interpolation: dict | None = None    # <experiment>/interpolation.json
    missing: list[str] = field(default_factory=list)

    def figure(self, name: str) -> Path | None:
        path = self.folder / "figures" / f"{name}.png"
        return path if path.is_file() else None


def find_experiments(output: str | Path) -> list[str]:
    """Names of the experiments under `output` (folders with an experiment.json), sorted."""
    output = Path(output)
    if not output.is_dir():
        return []
    return sorted(p.parent.name for p in output.glob("*/experiment.json"))


def _seed_dirs(run_folder: Path) -> dict[int, Path]:
    seeds = {}
    for folder in run_folder.glob("seed-*"):
        try:
            seeds[int(folder.name.split("-", 1)[1])] = folder
        except ValueError:
            continue
    return dict(sorted(seeds.items()))


def load_results(output: str | Path, experiment: str) -> ExperimentResults:
    folder = Path(output) / experiment
    manifest = read_json(folder / "experiment.json")
    results = ExperimentResults(name=experiment, folder=folder, runs=list(manifest["runs"]), seeds={},
                                configs=manifest["configs"])
    for run in results.runs:
        results.seeds[run] = []
        for seed, seed_dir in _seed_dirs(folder / run).items():
            label = f"{run}/seed-{seed}"
            if not (seed_dir / "metrics.json").is_file():
                results.missing.append(f"training of {label} (no metrics.json)")
                continue
            results.seeds[run].append(seed)
            results.metrics.setdefault(run, {})[seed] = read_json(seed_dir / "metrics.json")
            for attribute, name, what in (("sharpness", "sharpness.json", "sharpness"),
                                          ("init_to_final", "interpolation.json", "init-to-final interpolation")):
                if (seed_dir / name).is_file():
                    getattr(results, attribute).setdefault(run, {})[seed] = read_json(seed_dir / name)
                else:
                    results.missing.append(f"{what} of {label} (no {name})")
            surface = seed_dir / "landscape_2d.npz"
            if surface.is_file():
                with np.load(surface) as data:
                    results.surfaces.setdefault(run, {})[seed] = {k: data[k] for k in data.files}
            else:
                results.missing.append(f"2D surface of {label} (no landscape_2d.npz)")
        if not results.seeds[run]:
            results.missing.append(f"training of run {run} (no finished seed)")
    if (folder / "interpolation.json").is_file():
        results.interpolation = read_json(folder / "interpolation.json")
    elif len(results.runs) > 1:
        results.missing.append("interpolation between runs (no interpolation.json)")
    return results


# ----------------------------------------------------------------------------------------------
# Aggregation over seeds.

def mean_and_stderr(values: list[float]) -> dict:
    """Mean and standard error of the mean (sample std / sqrt(n)); stderr is None for one value."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return {"mean": None, "stderr": None, "n": 0}
    n = len(values)
    mean = sum(values) / n
    stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else None
    return {"mean": mean, "stderr": stderr, "n": n}


def _aggregate(per_seed: dict[int, float | None]) -> dict:
    return {"per_seed": {str(s): v for s, v in per_seed.items()}, **mean_and_stderr(list(per_seed.values()))}


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
        "val_loss": ("metrics", "val_loss", -1),
        "val_perplexity": ("metrics", "val_perplexity", -1),
        "test_loss": ("metrics", "test_loss"),
        "test_perplexity": ("metrics", "test_perplexity"),
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
    quantities.update({
        "init_to_final_barrier": ("init_to_final", "barrier"),
        "train_time_s": ("metrics", "train_time_s"),
        "tokens_per_s": ("metrics", "tokens_per_s"),
        "peak_memory_mb": ("metrics", "peak_memory_mb"),
        "sharpness_time_s": ("sharpness", "timings", "total_s"),
        "landscape_time_s": ("surfaces", "time_s"),
    })
    return quantities


def _value(results: ExperimentResults, run: str, seed: int, source: str, *path):
    data = getattr(results, source).get(run, {}).get(seed)
    if source == "metrics" and path and path[-1] == -1:
        series = _nested(data, *path[:-1])
        return series[-1] if series else None
    if source == "surfaces":
        value = None if data is None else data.get(path[0])
        return None if value is None else float(np.asarray(value))
    return _nested(data, *path)


def summarize(results: ExperimentResults) -> dict:
    """The numbers behind every table: per run, each quantity per seed with its mean and stderr."""
    quantities = run_quantities(results)
    runs = {}
    for run in results.runs:
        seeds = results.seeds.get(run, [])
        runs[run] = {"seeds": seeds, "quantities": {
            name: _aggregate({s: _value(results, run, s, *where) for s in seeds}) for name, where in quantities.items()}}
    pairs = []
    for pair in (results.interpolation or {}).get("pairs", []):
        pairs.append({"runs": pair["runs"], "seed": pair["seed"], "barrier": pair["barrier"],
                      "barrier_alpha": pair["barrier_alpha"]})
    return {"experiment": results.name, "runs": runs, "pairs": pairs, "missing": results.missing}


# ----------------------------------------------------------------------------------------------
# Tables (Markdown), shared by report.md and the notebook.

def format_value(stats: dict, digits: int = 4) -> str:
    if stats["mean"] is None:
        return "–"
    text = f"{stats['mean']:.{digits}g}"
    return text if stats["stderr"] is None else f"{text} ± {stats['stderr']:.2g}"


def markdown_table(summary: dict, columns: list[tuple[str, str]]) -> str:
    header = "| run | " + " | ".join(title for _, title in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for run, data in summary["runs"].items():
        cells = [format_value(data["quantities"][name]) if name in data["quantities"] else "–" for name, _ in columns]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def cost_columns() -> list[tuple[str, str]]:
    return [("train_time_s", "train s"), ("tokens_per_s", "tokens/s"), ("peak_memory_mb", "peak MB"),
            ("sharpness_time_s", "sharpness s"), ("landscape_time_s", "2D surface s")]
