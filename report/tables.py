"""Every table of report.md and results.ipynb, in Markdown (the report's sections place them): every number is
formatted here, and every table is drawn by md_table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from report.experiment_results import ExperimentResults
from report.summary import GEOMETRY_FRAMES, mean_and_stderr, prune_runs
from visualization.surface_plots import weight_space_name

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


@dataclass(frozen=True)
class Wording:
    """How format_value words the seeds in a mean and what was left out of it: report.md's cells say n only where
    it tells something (terse), docs/results.md's sentences (report.verdicts) always say it."""
    seeds: str         # the count of seeds in the mean, {} for the count
    then: str          # between that count and what was left out
    non_finite: str    # what a NaN or infinite value is called
    terse: bool        # n only above one value or beside values left out, "missing" only beside other values,
                       # "< res." for a quantity whose every value is below resolution


REPORT = Wording("n={}", ", ", "diverged", terse=True)
RESULTS_PAGE = Wording("n = {}", "; ", "not finite", terse=False)


def format_value(stats: dict, digits: int = 4, wording: Wording = REPORT) -> str:
    """Mean ± stderr of a quantity over seeds: in report.md "3.21 ± 0.05 (n=3)", "3.2 (n=1, 1 diverged)", "3.2",
    "< res." (every value below the loss's resolution); on the results page "3.2 (n = 1; 1 not finite)"."""
    n, diverged, below, missing = (stats.get(key, 0) for key in ("n", "non_finite", "below_resolution", "missing"))
    if wording.terse and n == diverged == 0 and below:
        return "< res." + (f" ({wording.seeds.format(below)}{wording.then}{missing} missing)" if missing else "")
    text = format_number(stats.get("mean"), digits)
    if stats.get("stderr") is not None:
        text += f" ± {stats['stderr']:.2g}"
    said_missing = missing if n + diverged + below or not wording.terse else 0
    left_out = [f"{count} {label}" for count, label in ((diverged, wording.non_finite), (below, "below resolution"),
                                                        (said_missing, "missing")) if count]
    if left_out or n > 1 or not wording.terse:
        return f"{text} ({wording.seeds.format(n)}{wording.then if left_out else ''}{', '.join(left_out)})"
    return text


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the header, its rule, one line per row (each as many cells as the header)."""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def format_share(stats: dict) -> str:
    """Whether a yes/no quantity (its mean over seeds: the share of them that said yes) held: "yes", "no", or
    "2 of 3" seeds."""
    if not stats["n"]:
        return "–"
    yes = round(stats["mean"] * stats["n"])
    return "yes" if yes == stats["n"] else "no" if yes == 0 else f"{yes} of {stats['n']}"


YES_NO = ("lambda_max_converged", "lambda_min_converged")  # quantities that are true or false per seed


def quantities_table(summary: dict, columns: list[tuple[str, str]]) -> str:
    """One row per run, a column per (quantity, title): the quantity's mean ± standard error over seeds (a yes/no
    quantity: yes, no, or how many seeds said yes)."""
    def cell(quantities: dict, name: str) -> str:
        if name not in quantities:
            return "–"
        return format_share(quantities[name]) if name in YES_NO else format_value(quantities[name])

    return md_table(["run", *(title for _, title in columns)],
                    [[run, *(cell(data["quantities"], name) for name, _ in columns)]
                     for run, data in summary["runs"].items()])


def settings_table(by_run: dict[str, dict[int, dict]], columns: list[tuple[str, Callable[[dict], str]]]) -> str:
    """One row per run, each column `describe(file of one seed)`; where the seeds differ, each seed's value."""
    rows = []
    for run, by_seed in by_run.items():
        cells = []
        for _, describe in columns:
            values = {seed: describe(data) for seed, data in by_seed.items()}
            cells.append(next(iter(values.values())) if len(set(values.values())) == 1
                         else " / ".join(f"{value} (seed {seed})" for seed, value in values.items()))
        rows.append([run, *cells])
    return md_table(["run", *(title for title, _ in columns)], rows)


def runs_table(results: ExperimentResults) -> str:
    """How each run trains, and the seeds it has."""
    rows = []
    for run in results.runs:
        cfg = results.configs.get(run, {})
        train, data = cfg.get("train", {}), cfg.get("data", {})
        seeds = ", ".join(str(s) for s in results.seeds.get(run, [])) or "–"
        rows.append([run, str(train.get("optimizer")), format_number(train.get("lr")), str(train.get("batch_size")),
                     format_number(train.get("weight_decay")), str(train.get("rotation", "none")), str(data.get("order")),
                     str(train.get("epochs")), seeds])
    return md_table(["run", "optimizer", "lr", "batch size", "weight decay", "rotation", "order", "epochs", "seeds"],
                    rows)


# ----------------------------------------------------------------------------------------------
# Generalization, sharpness and the landscape.

def generalization_columns() -> list[tuple[str, str]]:
    return [("val_perplexity", "val perplexity"), ("test_perplexity", "test perplexity"), ("val_loss", "val loss"),
            ("test_loss", "test loss"), ("final_train_loss", "train loss (final weights)"),
            ("generalization_gap", "gap (test − train loss)")]


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
            ("trace", "trace of H"), ("trace_stderr", "trace's s.e. (Hutchinson)"), ("base_loss", "loss on the set")]


def sharpness_settings_table(results: ExperimentResults) -> str:
    """The settings each run's sharpness.json was measured with (runs may override them)."""
    measured = {run: {seed: {**data["settings"], "n_tokens": data["n_tokens"]} for seed, data in by_seed.items()}
                for run, by_seed in results.sharpness.items()}
    return settings_table(measured, [
        ("measurement set", lambda d: f"{d['batches']} × {d['batch_size']} texts, {d['n_tokens']} tokens"),
        ("eigenvalues", lambda d: f"{d['method']}, top {d['top_k']}, ≤ {d['max_iter']} HVPs, tol {d['tol']:g}"),
        ("ε", lambda d: ", ".join(f"{eps:g}" for eps in d["epsilons"])),
        ("worst case", lambda d: f"{d['ball']} ball, {d['worst_case_steps']} steps"),
        ("random directions", lambda d: str(d["random_directions"])),
        ("trace samples", lambda d: str(d["trace_samples"])),
    ])


def pairs_table(summary: dict) -> str:
    """The barrier of the training loss along the line between two runs, per seed."""
    return md_table(["runs", "seed", "barrier (train)", "at α"],
                    [[f"{pair['runs'][0]} → {pair['runs'][1]}", str(pair["seed"]), format_number(pair["barrier"]),
                      format_number(pair["barrier_alpha"], 2)] for pair in summary["pairs"]])


def _plane(d: dict) -> str:
    """A surface's two directions: random, normalised per layer or filter, or the PCA plane of the training path
    with the share of its variance each direction explains."""
    if str(d.get("directions", "random")) == "pca":
        shares = np.asarray(d["explained_variance"], dtype=float)
        return f"PCA of the training path (PC1 {shares[0]:.0%}, PC2 {shares[1]:.0%} of its variance)"
    return (f"random, {d['norm']}-normalised, landscape.seed {d['seed']}" + (", biasbn zeroed" if str(d["ignore"]) else ""))


def _grid(d: dict) -> str:
    """The grid's points and extent: [−r, r]² for a square one, else each axis's range."""
    alphas, betas = np.asarray(d["alphas"], dtype=float), np.asarray(d["betas"], dtype=float)
    extents = [tuple(format_number(end, 3).replace("-", "−") for end in (axis[0], axis[-1])) for axis in (alphas, betas)]
    if extents[0] == extents[1] and float(alphas[0]) == -float(alphas[-1]):
        extent = f"[{extents[0][0]}, {extents[0][1]}]²"
    else:
        extent = ", ".join(f"{axis} ∈ [{low}, {high}]" for axis, (low, high) in zip(("α", "β"), extents))
    return f"{len(alphas)} × {len(betas)} over {extent}"


def weight_space(results: ExperimentResults, run: str) -> str:
    """The weight space of a run's 2D surface, in words: a LoRA run's landscape.space (its adapter's A and B, or
    the merged weights), else the full model."""
    cfg = results.configs.get(run, {})
    return weight_space_name(cfg.get("model", {}).get("adapter", {}).get("type", "none"),
                             cfg.get("landscape", {}).get("space", "adapter"))


def landscape_settings_table(results: ExperimentResults) -> str:
    """The weight space, directions, grid and evaluation set each run's 2D surface was computed with (runs may
    override them)."""
    surfaces = {run: {seed: {**data, "weight space": weight_space(results, run)} for seed, data in by_seed.items()}
                for run, by_seed in results.surfaces.items()}
    return settings_table(surfaces, [
        ("weight space", lambda d: str(d["weight space"])),
        ("directions", _plane),
        ("grid", _grid),
        ("evaluation set", lambda d: f"{d['eval_batches']} × {d['eval_batch_size']} texts, {d['eval_tokens']} tokens "
                                     f"(eval_seed {d['eval_seed']})"),
        ("diverged points", lambda d: str(int((~np.isfinite(d["train_loss"])).sum()))),
    ])


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


WITH_INTERVALS = ("l11_per_coordinate", "l11_ratio", "frobenius")  # geometry quantities (of each frame) with intervals


def _geometry_interval(data: dict, frame: str, quantity: str) -> list[float] | None:
    """One seed's interval of a quantity of WITH_INTERVALS in its units: the (1,1) norm's over the Cauchy sketches
    per coordinate (÷ d) or as the ratio (÷ d‖H‖₂), ‖H‖_F's over Hutch++'s probes."""
    values = data["frames"].get(frame) or {}
    if quantity == "frobenius":
        return (values.get("frobenius") or {}).get("ci")
    ci = values.get("l11", {}).get("median", {}).get("ci")
    if not ci:
        return None
    scale = data["dim"] * (values["spectral"]["value"] if quantity == "l11_ratio" else 1)  # the frame's own ‖·‖₂
    return [bound / scale for bound in ci] if scale > 0 else None


def geometry_table(results: ExperimentResults, summary: dict) -> str:
    """geometry_columns' quantities (mean ± standard error over seeds), each interval next to its value: the seed's,
    or each seed's when there are several; a column's title says [CI] where it holds one."""
    def intervals(run: str, name: str) -> list[str]:
        frame, _, quantity = name.partition("_")
        if frame not in GEOMETRY_FRAMES or quantity not in WITH_INTERVALS:
            return []
        by_seed = {seed: _geometry_interval(data, frame, quantity)
                   for seed, data in sorted(results.geometry.get(run, {}).items())}
        return [("" if len(by_seed) == 1 else f"seed {seed} ") + f"[{format_number(ci[0], 3)}, {format_number(ci[1], 3)}]"
                for seed, ci in by_seed.items() if ci]

    columns = geometry_columns()
    shown = {run: {name: intervals(run, name) for name, _ in columns} for run in summary["runs"]}
    rows = [[run, *(" ".join([format_value(data["quantities"][name]) if name in data["quantities"] else "–",
                              *shown[run][name]]) for name, _ in columns)]
            for run, data in summary["runs"].items()]
    return md_table(["run", *(title + (" [CI]" if any(shown[run][name] for run in shown) else "")
                              for name, title in columns)], rows)


def geometry_detail_table(results: ExperimentResults) -> str:
    """One row per run, seed and frame: both (1,1) estimators with their intervals, ‖·‖∞, ‖·‖₂ and ‖·‖_F with its."""
    rows = []
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
                rows.append([run, str(seed), name, _interval(values["l11"]["median"]),
                             _interval(values["l11"]["half_iqr"]), format_number(values["linf"]["median"]), norm_2,
                             norm_f, str(data["dim"])])
    return md_table(["run", "seed", "frame", "‖·‖₁,₁ by median [CI]", "‖·‖₁,₁ by half-IQR [CI]", "‖·‖∞ (median)",
                     "‖·‖₂", "‖·‖_F [CI]", "d"], rows)


def geometry_settings_table(results: ExperimentResults) -> str:
    """The settings each run's geometry.json was measured with."""
    measured = {run: {seed: {**data["settings"]["geometry"], **data["settings"]["sharpness"], "n_tokens": data["n_tokens"]}
                      for seed, data in by_seed.items()}
                for run, by_seed in results.geometry.items()}
    return settings_table(measured, [
        ("measurement set", lambda d: f"{d['batches']} × {d['batch_size']} texts, {d['n_tokens']} tokens"),
        ("(1,1) sketches", lambda d: f"{d['cauchy_vectors']} Cauchy vectors, {d['bootstrap']} bootstrap resamples, "
                                     f"{d['confidence']:.0%} intervals"),
        ("‖·‖_F", lambda d: f"Hutch++, {d['frobenius_probes']} probes" if d["frobenius_probes"] else "off"),
        ("‖·‖₂", lambda d: f"Lanczos, ≤ {d['max_iter']} HVPs, tol {d['tol']:g}"),
        ("rotation R", lambda d: "none" if d["rotation"] == "none" else f"{d['rotation']}, seed {d['rotation_seed']}"),
    ])


# ----------------------------------------------------------------------------------------------
# Along training: the tracked sharpness (track.json) and the spectral density (density.json).

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


# ----------------------------------------------------------------------------------------------
# LoRA runs and budgets: what each run trains, the two weight spaces, pruning (prune.json).

def adapter_table(results: ExperimentResults, summary: dict) -> str:
    """What each run trains, and where a training budget (train.budget) stopped it."""
    rows = []
    for run in results.runs:
        cfg = results.configs[run]
        adapter, budget = cfg["model"].get("adapter", {"type": "none"}), cfg["train"].get("budget", {})
        kind = "full fine-tuning" if adapter["type"] == "none" else (
            f"LoRA r={adapter['r']}, α={adapter['alpha']:g}, on {', '.join(adapted(results, run))}")
        if cfg["model"].get("base_run"):
            kind += f", from run {cfg['model']['base_run']}'s weights"
        elif adapter["type"] == "none" and cfg["model"].get("init") == "scratch":
            kind = "full training from random weights"
        limit = ", ".join(f"{value:.3g} {key}" for key, value in budget.items() if value) or "–"
        stops = [results.metrics[run][seed].get("budget") for seed in results.seeds.get(run, [])]
        stopped = ", ".join(f"step {b['step']} of {b['of_steps']}" if b.get("stopped_by") else "not reached"
                            for b in stops if b) or "–"
        rows.append([run, kind, format_value(summary["runs"][run]["quantities"]["trainable_parameters"]), limit,
                     stopped])
    return md_table(["run", "adapter", "trainable parameters", "budget", "stopped at"], rows)


def adapted(results: ExperimentResults, run: str) -> list[str]:
    """The modules a LoRA run adapted, as its training recorded them (metrics.json: on an architecture other than
    GPT-2 the default targets are peft's for it), else as configured (results of older versions record none)."""
    recorded = {tuple(metrics["adapted_modules"]) for metrics in results.metrics.get(run, {}).values()
                if "adapted_modules" in metrics}
    if len(recorded) == 1:
        return list(recorded.pop())
    return results.configs[run]["model"]["adapter"]["target_modules"]


def budget_columns() -> list[tuple[str, str]]:
    """The best validation perplexity and what training had spent to reach it, beside all it spent."""
    return [("best_val_perplexity", "best val perplexity"), ("flops_to_best", "FLOPs to it"),
            ("seconds_to_best", "seconds to it"), ("train_flops", "FLOPs in all")]


def space_columns() -> list[tuple[str, str]]:
    """λ and trace in the adapter's space (what the optimizer moves) and in the merged full model's."""
    return [("sharpness_dimension", "d (adapter)"), ("lambda_max", "λ_max (adapter)"), ("trace", "trace (adapter)"),
            ("merged_dimension", "d (merged)"), ("merged_lambda_max", "λ_max (merged)"),
            ("merged_lambda_min", "λ_min (merged)"), ("merged_trace", "trace (merged)")]


def prune_table(results: ExperimentResults) -> str:
    """One row per run, seed and fraction: validation perplexity with the adapter pruned by magnitude, at random
    (mean ± standard error over the masks), rewound and retrained, and λ_max of the magnitude-pruned adapter."""
    rows = []
    for run, by_seed in prune_runs(results).items():
        for seed, data in by_seed.items():
            rewound = {r["fraction"]: r for r in data.get("rewind", [])}
            curvature = {p["fraction"]: p for p in data.get("lambda_max", [])}
            for magnitude, random in zip(data["magnitude"], data["random"]):
                fraction = magnitude["fraction"]
                stats = mean_and_stderr([s["val_perplexity"] for s in random["seeds"]])
                lambda_max = curvature.get(fraction)
                rows.append([run, str(seed), f"{magnitude['pruned_fraction']:.1%}",
                             format_number(magnitude["val_perplexity"]),
                             format_value(stats) if random["seeds"] else "–",
                             format_number(rewound[fraction]["val_perplexity"]) if fraction in rewound else "–",
                             "–" if lambda_max is None else format_number(lambda_max["lambda_max"])])
    return md_table(["run", "seed", "zeroed", "val ppl, magnitude", "val ppl, random", "val ppl, rewound + retrained",
                     "λ_max"], rows)


# ----------------------------------------------------------------------------------------------
# The searches and the correlation of the measures with generalization.

def search_table(search: dict) -> str:
    """Per study: sampler, seed, trials (complete / pruned / failed), the best value and its run, and the seconds
    its trials trained."""
    rows = []
    for name, study in search["studies"].items():
        counted = [t for t in study["trials"] if t["counted"]]
        states = [t["state"] for t in counted]
        best = study["best"] or {}
        seconds = sum(t["seconds"] or 0 for t in counted)
        rows.append([name, str(study["sampler"]), str(study["seed"]), str(len(counted)), str(states.count("complete")),
                     str(states.count("pruned")), str(states.count("fail")), format_number(best.get("value")),
                     best.get("run") or "–", f"{seconds:.1f}"])
    return md_table(["study", "sampler", "seed", "trials", "complete", "pruned", "failed", "best", "best run",
                     "trial seconds"], rows)


def correlation_table(correlation: dict) -> str:
    """One row per measure, strongest |τ| with the gap first: Kendall τ and Spearman ρ with the gap (95%
    bootstrap intervals), τ with the test loss, and the granulated Kendall coefficient Ψ where the runs form a grid."""
    def cell(stats: dict, key: str) -> str:
        value, (low, high) = stats[key], stats[key.replace("tau", "interval").replace("rho", "interval")]
        return f"{format_number(value, 3)} [{format_number(low, 2)}, {format_number(high, 2)}]"

    def strength(item) -> float:
        tau = float(item[1]["vs_gap"]["kendall_tau"])
        return -abs(tau) if math.isfinite(tau) else 0

    axes = next((list(data["granulated"]["per_axis"]) for data in correlation["measures"].values()
                 if data.get("granulated")), [])  # the hyper-parameter axes ψ is averaged over (not the seed)
    rows = []
    for name, data in sorted(correlation["measures"].items(), key=strength):
        granulated = data.get("granulated") or {}
        rows.append([name, str(data["vs_gap"]["n"]), cell(data["vs_gap"], "kendall_tau"),
                     cell(data["vs_gap"], "spearman_rho"), cell(data["vs_test_loss"], "kendall_tau"),
                     *(format_number(granulated["per_axis"][a]["psi"], 3) for a in axes),
                     *([format_number(granulated["overall"], 3)] if axes else [])])
    return md_table(["measure", "n", "τ with gap", "ρ with gap", "τ with test loss", *(f"ψ {a}" for a in axes),
                     *(["Ψ"] if axes else [])], rows)
