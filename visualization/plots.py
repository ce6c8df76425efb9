"""Figures of training runs and their measurements: data in, matplotlib Figure out (nothing is written or shown
here). Loss surfaces and interpolation lines are drawn by visualization.surface_plots.

Figures are built without pyplot, so they hold no global state, need no backend (savefig renders
with Agg) and display as they are in a notebook.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from sharpness.density import SpectralDensity
from visualization.style import (MANY_RUNS, color_map, colors, key_handles, legend_outside,
                                 mean_band, plain_number, PlainFormatter, round_colorbar, scale_axis)


def learning_curves_figure(curves: dict[str, list[dict]], title: str, groups: dict[str, str] | None = None) -> Figure:
    """Training (solid) and validation (dashed) loss per epoch. Up to style.MANY_RUNS runs: one colour per run, one
    line per seed, the runs' legend outside the axes; beyond, one colour per group of runs (`groups[run]`, e.g. a
    search's method; one group without it): each run thin and the mean ± standard error over the group's runs (each
    run's mean over seeds), the groups in the legend.

    `curves[run]` is a list of metrics.json dicts (one per seed); epoch 0 is the validation loss
    before training."""
    fig = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = fig.subplots()
    kinds = {"train": "-", "validation": "--"}

    def lines(metrics: dict) -> dict:
        epochs = np.arange(1, len(metrics["train_loss"]) + 1)
        return {"train": (epochs, metrics["train_loss"]),
                "validation": (np.concatenate([[0], epochs]), [metrics["init_val_loss"], *metrics["val_loss"]])}

    values = [v for by_seed in curves.values() for m in by_seed for _, y in lines(m).values() for v in y]
    if len(curves) <= MANY_RUNS:
        run_colors = color_map(curves)
        for run, by_seed in curves.items():
            for metrics in by_seed:
                for kind, (x, y) in lines(metrics).items():
                    ax.plot(x, y, kinds[kind], color=run_colors[run], marker="o" if len(x) == 1 else None)  # as is
        handles, labels = key_handles(run_colors, kinds)
    else:
        by_group: dict[str, list[str]] = {}
        for run in curves:
            by_group.setdefault((groups or {}).get(run, "all runs"), []).append(run)
        group_colors = color_map(by_group)
        for group, runs in by_group.items():
            for kind, style in kinds.items():
                per_run = [np.nanmean([lines(m)[kind][1] for m in _same_length(curves[run], kind, lines)], axis=0)
                           for run in runs]
                x = np.arange(max(len(y) for y in per_run)) + (0 if kind == "validation" else 1)
                for y in per_run:
                    ax.plot(x[:len(y)], y, style, color=group_colors[group], linewidth=0.5, alpha=0.25)
                mean_band(ax, x, per_run, group_colors[group], None, style)
        handles, labels = key_handles({f"{group} ({len(runs)} runs)": group_colors[group]
                                       for group, runs in by_group.items()}, kinds)
        handles.append(Line2D([], [], linestyle="none"))
        labels.append("thick: mean ± s.e.; thin: each run")
    scale_axis(ax, "y", values)
    ax.set_xlim(right=max(ax.get_xlim()[1], 1))  # runs measured as is (train.epochs: 0) have epoch 0 only
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (per target token)")
    ax.set_title(title, fontsize=10)
    legend_outside(ax, handles, labels)
    return fig


def _same_length(by_seed: list[dict], kind: str, lines) -> list[dict]:
    """The seeds of a run that ran as long as its longest (a pruned or stopped seed would cut the mean short)."""
    longest = max(len(lines(m)[kind][1]) for m in by_seed)
    return [m for m in by_seed if len(lines(m)[kind][1]) == longest]


ROTATION_STYLES = {"none": "-", "global": "--", "per-layer": ":"}


def step_losses_figure(runs: dict[str, dict], title: str) -> Figure:
    """Training loss against optimizer step: one colour per group (a run and its rotated twins), solid for the
    loss's own coordinates, dashed (global) or dotted (per-layer) for a rotated loss. A run whose curve equals
    another's (SGD on a rotated loss follows the same path) is said to in the legend, and the one under it is drawn
    wide so both show.

    `runs[name]` = {"losses": [step_loss of each seed], "group": ..., "rotation": ...}. Each curve is the
    mean over seeds of the per-step batch losses, smoothed by a running mean over a 50th of the steps."""
    fig = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = fig.subplots()
    group_colors = color_map(run["group"] for run in runs.values())
    rotation_styles = {rotation: ROTATION_STYLES.get(rotation, "-.") for rotation in
                       dict.fromkeys(run["rotation"] for run in runs.values())}
    window, curves = 1, {}
    for name, run in runs.items():
        steps = min(len(losses) for losses in run["losses"])
        mean = np.mean([losses[:steps] for losses in run["losses"]], axis=0)
        window = max(1, steps // 50)
        curves[name] = np.convolve(mean, np.ones(window) / window, mode="valid")
    twins = {name: other for name in curves for other in curves if other != name and list(curves).index(other) <
             list(curves).index(name) and curves[other].shape == curves[name].shape
             and np.allclose(curves[other], curves[name], rtol=1e-6, atol=0.0)}
    for name, curve in curves.items():
        run = runs[name]
        under = name in twins.values()
        ax.plot(np.arange(window, window + len(curve)), curve, rotation_styles[run["rotation"]],
                color=group_colors[run["group"]], linewidth=3.5 if under else 1.5, alpha=0.45 if under else 1.0)
    handles, labels = key_handles(group_colors, rotation_styles, style_title="rotation: ")
    for name, other in twins.items():
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(f"{name} = {other} (identical curves)")
    scale_axis(ax, "y", np.concatenate(list(curves.values())))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"training loss (running mean over {window} steps)" if window > 1 else "training loss")
    ax.set_title(title, fontsize=10)
    legend_outside(ax, handles, labels)
    return fig


def geometry_norms_figure(runs: dict[str, dict[str, dict]], title: str, geometry: dict | None = None) -> Figure:
    """Bars per run of ‖H‖₁,₁/d, ‖H‖₂ and the ratio ‖H‖₁,₁/(d‖H‖₂), in the original and the rotated frame, on
    linear axes from 0 (a log axis would stretch the frames' difference); each seed's value as a dot with the
    interval of its ‖H‖₁,₁ over the Cauchy sketches (the ratio's from it); a line at ratio 1.

    `runs[name][frame]` = {"l11": ..., "spectral": ..., "ratio": ...} (means over seeds; None where not
    measured); `geometry[name][seed]` = geometry.json, for the seeds' values and intervals."""
    panels = (("l11", "‖H‖₁,₁ / d"), ("spectral", "‖H‖₂"), ("ratio", "‖H‖₁,₁ / (d·‖H‖₂)"))
    frames = (("original", "original", "tab:blue"), ("rotated", "rotated (RᵀHR)", "tab:orange"))
    fig = Figure(figsize=(4.0 * len(panels) + 1.8, 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels))
    positions = np.arange(len(runs))
    for ax, (key, label) in zip(axes, panels):
        for offset, (frame, frame_label, color) in zip((-0.2, 0.2), frames):
            values = [np.nan if (runs[run].get(frame) or {}).get(key) is None else runs[run][frame][key] for run in runs]
            ax.bar(positions + offset, values, width=0.4, color=color, alpha=0.6, label=f"{frame_label}: mean")
            for position, run in zip(positions, runs):
                for seed_value, interval in _geometry_seeds((geometry or {}).get(run, {}), frame, key):
                    error = None if interval is None else [[seed_value - interval[0]], [interval[1] - seed_value]]
                    ax.errorbar(position + offset, seed_value, yerr=error, fmt="o", color="0.15", markersize=3,
                                capsize=3, linewidth=1)
        if key == "ratio":
            ax.axhline(1.0, color="0.3", linestyle="--", linewidth=1, label="ratio 1")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(PlainFormatter())
        ax.set_xticks(positions, labels=list(runs), rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("run")
        ax.set_ylabel(label)
    handles, labels = axes[-1].get_legend_handles_labels()
    handles.append(Line2D([], [], marker="o", color="0.15", markersize=3, linestyle="-", linewidth=1))
    labels.append("each seed, 95% interval of ‖H‖₁,₁ (where k ≥ 10)")
    legend_outside(axes[-1], handles, labels)
    fig.suptitle(title, fontsize=10)
    return fig


def _geometry_seeds(by_seed: dict, frame: str, key: str) -> list[tuple[float, list | None]]:
    """(value, interval or None) of each seed's geometry.json for one frame and norm."""
    points = []
    for data in by_seed.values():
        measured = data["frames"].get(frame)
        if not measured:
            continue
        l11, spectral = measured["l11"]["median"], measured["spectral"]["value"]
        scale = {"l11": 1.0 / data["dim"], "spectral": None, "ratio": 1.0 / (data["dim"] * spectral)}[key]
        value = {"l11": l11["per_coordinate"], "spectral": spectral, "ratio": measured["ratio"]["median"]}[key]
        interval = None if scale is None or l11["ci"] is None else [bound * scale for bound in l11["ci"]]
        points.append((value, interval))
    return points


def tracked_sharpness_figure(runs: dict[str, dict], title: str) -> Figure:
    """One column per run: λ_max of the Hessian along training (and, for the Adam family, of the preconditioned
    Hessian P^-1/2 H P^-1/2) with the stability thresholds 2/η and (2 + 2β₁)/((1 − β₁)η) as dashed lines of the
    same colour (Cohen et al. 2021; 2022); below it, on the same steps, the training loss of every step.

    `runs[name]` = {"tracks": [track.json points of each seed], "losses": [step_loss of each seed], "line": the
    legend of λ_max's threshold}: one line per seed (the first seed opaque)."""
    metrics = (("lambda_max", "threshold", "λ_max(H)", "tab:blue"),
               ("preconditioned_lambda_max", "preconditioned_threshold", "λ_max(P⁻¹ᐟ²HP⁻¹ᐟ²)", "tab:red"))
    fig = Figure(figsize=(4.6 * len(runs), 6.2), layout="constrained")
    axes = np.asarray(fig.subplots(2, len(runs), sharex="col", squeeze=False, height_ratios=(2, 1)))
    for column, (name, run) in enumerate(runs.items()):
        top, bottom = axes[0, column], axes[1, column]
        for seed_index, (points, losses) in enumerate(zip(run["tracks"], run["losses"])):
            alpha = 1.0 if seed_index == 0 else 0.35
            for key, threshold, label, color in metrics:
                measured = [(p["step"], p[key], p.get(threshold)) for p in points if p.get(key) is not None]
                if not measured:
                    continue
                steps, values, limits = zip(*measured)
                top.plot(steps, values, ".-", color=color, alpha=alpha, markersize=3,
                         label=label if seed_index == 0 else None)
                if limits[0] is not None:
                    top.plot(steps, limits, "--", color=color, alpha=alpha, linewidth=1,
                             label=(run.get("line", "2/η") if key == "lambda_max" else "(2+2β₁)/((1−β₁)η)")
                             if seed_index == 0 else None)
            bottom.plot(np.arange(1, len(losses) + 1), losses, color="0.3", alpha=alpha, linewidth=0.8)
        scale_axis(top, "y", [y for line in top.get_lines() for y in line.get_ydata()])
        scale_axis(bottom, "y", [y for line in bottom.get_lines() for y in line.get_ydata()])
        top.set_title(name, fontsize=10)
        top.legend(fontsize=7)
        bottom.set_xlabel("optimizer step")
        top.set_ylabel("sharpness (measurement set)")
        bottom.set_ylabel("training loss (batch)")
    fig.suptitle(title, fontsize=10)
    return fig


def spectral_density_figure(runs: dict[str, dict], title: str) -> Figure:
    """One panel per run: the Hessian's spectral density (SLQ) on a log scale, one line per seed, smoothed with
    σ = the median gap between its distinct Ritz nodes (a density: with the stored σ, 1/500 of the span, a few
    dozen nodes draw a comb), the nodes as ticks at the bottom; the legend states σ and the fraction of the
    mass below −τ (τ the stored σ, what density.json reports), and −τ is marked. `runs[name]` = {seed: density.json}.
    Values below 10⁻⁶ of the peak are not drawn (the Gaussians' tails, not the spectrum)."""
    fig = Figure(figsize=(4.6 * len(runs), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(runs), squeeze=False)[0])
    for ax, (name, by_seed) in zip(axes, runs.items()):
        for color, (seed, data) in zip(colors(len(by_seed)), by_seed.items()):
            spectrum = SpectralDensity.from_dict(data)
            nodes = np.unique(np.round(np.concatenate(spectrum.nodes), 12))
            sigma = float(np.median(np.diff(nodes))) if nodes.size > 1 else spectrum.sigma()
            grid, _ = spectrum.default_grid(sigma=sigma)
            density = spectrum.smoothed(grid, sigma)
            ax.plot(grid, np.where(density >= density.max() * 1e-6, density, np.nan), color=color,
                    label=f"seed {seed}: σ = {sigma:.2g}; {data['mass_below_minus_tau']:.1%} of the mass < −τ "
                          f"(τ = {data['tau']:.2g})")
            ax.plot(nodes, np.zeros_like(nodes), "|", color=color, markersize=8, transform=ax.get_xaxis_transform())
            ax.axvline(-data["tau"], color=color, linewidth=0.6, linestyle="--")
        ax.axvline(0.0, color="0.6", linewidth=0.8, linestyle=":")
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue (ticks: Ritz nodes)")
        ax.set_ylabel("density (SLQ, Gaussian-smoothed)")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def pruning_figure(runs: dict[str, dict[int, dict]], title: str) -> Figure:
    """Per LoRA run (one panel): validation perplexity against the fraction of adapter weights zeroed, by
    magnitude (solid) and at random (dashed: mean ± standard error over the random masks and seeds), the
    rewound-and-retrained tickets (stars), and λ_max of the magnitude-pruned adapter (right axis, open triangles)."""
    fig = Figure(figsize=(6.0 * min(len(runs), 2), 5.2 * math.ceil(len(runs) / 2)), layout="constrained")
    axes = fig.subplots(math.ceil(len(runs) / 2), min(len(runs), 2), squeeze=False).ravel()
    for ax, (run, by_seed) in zip(axes, runs.items()):
        right = None
        for color, (seed, data) in zip(colors(len(by_seed)), sorted(by_seed.items())):
            fractions = [m["pruned_fraction"] for m in data["magnitude"]]
            ax.plot(fractions, [m["val_perplexity"] for m in data["magnitude"]], "o-", color=color,
                    label=f"magnitude, seed {seed}")
            random = [[s["val_perplexity"] for s in r["seeds"]] for r in data["random"]]
            if random and random[0]:
                mean = np.array([np.mean(v) for v in random])
                stderr = np.array([np.std(v, ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0 for v in random])
                at = [r["seeds"][0]["pruned_fraction"] for r in data["random"]]
                ax.plot(at, mean, "s--", color=color, alpha=0.8, label=f"random ({len(random[0])} masks), seed {seed}")
                ax.fill_between(at, mean - stderr, mean + stderr, color=color, alpha=0.2)
            if data.get("rewind"):
                ax.plot([r["pruned_fraction"] for r in data["rewind"]], [r["val_perplexity"] for r in data["rewind"]],
                        "*", markersize=12, color=color, label=f"rewound and retrained, seed {seed}")
            if data.get("lambda_max"):  # on a right axis, drawn over the perplexities: open markers, no line
                right = right or ax.twinx()
                right.plot([p["pruned_fraction"] for p in data["lambda_max"]], [p["lambda_max"] for p in data["lambda_max"]],
                           "^", color="0.2", markerfacecolor="none", markersize=9, markeredgewidth=1.5)
        handles, labels = ax.get_legend_handles_labels()
        if right is not None:
            right.set_ylabel("λ_max of the magnitude-pruned adapter")
            scale_axis(right, "y", [y for line in right.get_lines() for y in line.get_ydata()])
            handles.append(Line2D([], [], marker="^", color="0.2", markerfacecolor="none", linestyle="none"))
            labels.append("λ_max of the magnitude-pruned adapter (right axis)")
        scale_axis(ax, "y", [y for line in ax.get_lines() for y in line.get_ydata()])
        ax.set_xlabel("fraction of LoRA weights set to zero")
        ax.set_ylabel("validation perplexity")
        ax.set_title(run, fontsize=10)
        ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def budget_curves_figure(runs: dict[str, list[dict]], title: str, configs: dict | None = None) -> Figure:
    """Validation perplexity against what training had spent when it was measured: FLOPs (left) and seconds
    (right); one line per run and seed (the metrics.json of each), and the runs' train.budget as a vertical line
    (`configs[run]` = the run's settings, experiment.json's)."""
    fig = Figure(figsize=(11.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    run_colors = color_map(runs)
    for run, seeds in runs.items():
        for i, metrics in enumerate(seeds):
            for ax, key in zip(axes, ("at_flops", "at_seconds")):
                ax.plot(metrics[key], metrics["val_perplexity"], "o-", color=run_colors[run], markersize=3,
                        label=run if i == 0 else None)
    perplexities = [v for seeds in runs.values() for m in seeds for v in m["val_perplexity"]]
    for ax, key, what in zip(axes, ("flops", "seconds"), ("training FLOPs (analytic)", "training seconds")):
        limits = sorted({(cfg.get("train", {}).get("budget") or {}).get(key) or 0.0 for cfg in (configs or {}).values()})
        for limit in [v for v in limits if v > 0]:
            ax.axvline(limit, color="0.3", linestyle="--", linewidth=1, label=f"budget: {plain_number(limit)}")
        ax.set_xlabel(what)
        ax.set_ylabel("validation perplexity")
        scale_axis(ax, "y", perplexities)
        ax.xaxis.set_major_formatter(PlainFormatter())
    legend_outside(axes[1], *axes[0].get_legend_handles_labels())
    fig.suptitle(title)
    return fig


def correlation_figure(correlation: dict, title: str) -> Figure:
    """One panel per measure (correlation.json): the measure against the generalization gap over the runs,
    coloured by the setting correlate.color_by (one colour per value, or a colour scale for many numbers),
    with Kendall's τ and its bootstrap interval in the panel's title. A measure found for fewer than half the
    runs the others have is marked (grey panel, "n = 3 of 16"): its τ is not comparable with theirs."""
    measures, points = list(correlation["measures"]), correlation["points"]
    color_by = correlation["settings"]["color_by"]
    values = [p["axes"].get(color_by) for p in points]
    distinct = sorted(set(values), key=str)
    numeric = len(distinct) > 8 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct)
    most = max((correlation["measures"][name]["vs_gap"]["n"] for name in measures), default=0)
    columns = min(len(measures), 3)
    fig = Figure(figsize=(4.2 * columns + 1.6, 3.6 * math.ceil(len(measures) / columns)), layout="constrained")
    axes = fig.subplots(math.ceil(len(measures) / columns), columns, squeeze=False).ravel()
    palette = color_map(distinct)
    for ax, name in zip(axes, measures):
        kept = [(p["measures"][name], p["gap"], v) for p, v in zip(points, values)
                if p["measures"][name] is not None and p["gap"] is not None]
        x, y, c = zip(*kept) if kept else ((), (), ())
        if numeric:
            scatter = ax.scatter(x, y, c=c, cmap="viridis", s=18)
            round_colorbar(fig.colorbar(scatter, ax=ax), color_by)
        else:
            for value in distinct:
                chosen = [(a, b) for a, b, v in kept if v == value]
                if chosen:
                    ax.scatter(*zip(*chosen), color=palette[value], s=18, label=f"{color_by} = {value}")
        stats = correlation["measures"][name]["vs_gap"]
        low, high = stats["kendall_interval"]
        few = stats["n"] < most / 2
        ax.set_title(f"{name}\nτ = {float(stats['kendall_tau']):.2f} [{float(low):.2f}, {float(high):.2f}], "
                     f"n = {stats['n']}" + (f" of {most}: too few to compare" if few else ""), fontsize=9,
                     color="tab:red" if few else "black")
        if few:
            ax.set_facecolor("0.92")
        scale_axis(ax, "x", x, ticks=4)
        scale_axis(ax, "y", y, ticks=5)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel("generalization gap", fontsize=8)
    if not numeric and color_by:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    for ax in axes[len(measures):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def search_convergence_figure(curves: dict[str, list[list]], seconds: dict[str, list[float]], title: str,
                              objective: str) -> Figure:
    """Left: the best value found so far against the number of trials, per search method (mean ± standard
    error over its studies, one per search seed). Right: the seconds each method's trials trained, per study
    (dots), their mean (bar) ± standard error."""
    fig = Figure(figsize=(11.5, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    method_colors = color_map([*curves, *seconds])
    for method, studies in curves.items():
        trials = np.arange(1, max(len(c) for c in studies) + 1)
        mean_band(left, trials, [[np.nan if v is None else v for v in c] for c in studies], method_colors[method],
                  f"{method} ({len(studies)} studies)")
    values = [v for studies in curves.values() for c in studies for v in c if v is not None]
    scale_axis(left, "y", values)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("trials")
    name = objective.removeprefix("best_").replace("_", " ")
    left.set_ylabel(f"best {name} so far (mean ± s.e.)")
    methods = list(seconds)
    for i, method in enumerate(methods):
        spent = np.asarray(seconds[method], dtype=float)
        error = spent.std(ddof=1) / math.sqrt(spent.size) if spent.size > 1 else 0.0
        right.bar(i, spent.mean(), yerr=error, capsize=4, color=method_colors[method], alpha=0.35)
        right.scatter([i] * spent.size, spent, color=method_colors[method], s=14, zorder=3)
    right.set_xticks(range(len(methods)), methods)
    right.set_xlabel("search method")
    right.set_ylabel("seconds of training per study")
    right.yaxis.set_major_formatter(PlainFormatter())
    legend_outside(right, *left.get_legend_handles_labels())
    fig.suptitle(title)
    return fig
