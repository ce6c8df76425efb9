"""Figures of loss surfaces and of the loss along a line between two models: data in, matplotlib Figure out
(nothing is written or shown here).

Figures are built without pyplot, so they hold no global state, need no backend (savefig renders
with Agg) and display as they are in a notebook. A 2D surface may hold points where the loss diverged
(NaN or inf): they are left out of the colours, marked grey with × and counted (in a 2D panel's title, a 3D
figure's legend).

A surface on the PCA plane of its run's training path has axes PC1 and PC2, labelled with the share of the
path's variance each explains, and the path drawn on it. Its two axes may span very different distances, so a
panel keeps the true proportions of its grid up to MAX_STRETCH:1 and is stretched beyond (the ticks tell).
Surfaces in different weight spaces (a LoRA adapter's factors, the full model) are not comparable point for
point: each space gets its own colour scale, and the colour bar says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from visualization.style import TRAIN_COLOR, VALIDATION_COLOR, PlainFormatter, round_colorbar, scale_axis

DIVERGED_COLOR = "0.35"
PATH_COLOR = "tab:red"
MAX_STRETCH = 2.0  # a panel's width : height follows its grid's up to this ratio either way
COLUMNS = 4  # panels per row in a figure of many surfaces
MAX_PANELS = 12  # beyond, a figure shows a selection of this many panels and says which: its height stays bounded
LEVELS = 24  # about this many contour levels, at round values


@dataclass(frozen=True)
class Surface:
    """One 2D loss surface and what its figure says about it: `path` (T × 2, from the start to the final weights)
    and `explained` (the path's variance share of each axis) for a PCA plane; `space` the weight space it lies in,
    in words (weight_space_name; "" where not known): surfaces of different spaces get different colour scales."""
    title: str
    alphas: np.ndarray
    betas: np.ndarray
    loss: np.ndarray
    path: np.ndarray | None = None
    explained: np.ndarray | None = None
    space: str = ""


def draw_interpolation(ax, alphas, curve: dict, endpoints: tuple[str, str], title: str) -> None:
    """Training (solid) and validation (dashed) loss along the line; endpoints and chord marked, the barrier's
    height drawn where there is one and its values (train and validation) in the legend's title."""
    alphas = np.asarray(alphas, dtype=float)
    ends = np.isin(alphas, [0.0, 1.0])
    for key, color, style, label in (("train_loss", TRAIN_COLOR, "-", "train"),
                                     ("val_loss", VALIDATION_COLOR, "--", "validation")):
        losses = np.asarray(curve[key], dtype=float)
        ax.plot(alphas, losses, style, color=color, label=label)
        ax.plot(alphas[ends], losses[ends], "o", color=color)
    for alpha in (0.0, 1.0):
        ax.axvline(alpha, color="0.6", linewidth=0.8, linestyle=":")
    names = ax.secondary_xaxis("top")
    names.set_xticks([0.0, 1.0], labels=list(endpoints), fontsize=8)
    train = np.asarray(curve["train_loss"], dtype=float)
    ax.plot(alphas[ends], train[ends], ":", color="0.3", linewidth=1, label="chord (train)")
    # Read back from JSON, a diverged barrier is the string "nan" or "inf": float() takes both.
    at, height = float(curve["barrier_alpha"]), float(curve["barrier"])
    val_at, val_height = float(curve["val_barrier_alpha"]), float(curve["val_barrier"])
    top = train[alphas == at][0] if at in alphas else np.nan
    if np.isfinite(height) and np.isfinite(top) and height > 0:  # a line of zero height has no legend swatch to show
        ax.plot([at, at], [top - height, top], color="tab:red", linewidth=2, label="barrier (train)")
    ax.set_xlabel(f"α   (θ = (1−α)·{endpoints[0]} + α·{endpoints[1]})")
    ax.set_ylabel("loss")
    scale_axis(ax, "y", np.concatenate([train, np.asarray(curve["val_loss"], dtype=float)]))
    ax.set_title(title, fontsize=10)
    # Under the panel: inside, the legend and its barrier title would hide part of the lines.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, fontsize=8, title_fontsize=8, frameon=False,
              title=f"barrier: {_barrier_text('train', height, at)}; {_barrier_text('validation', val_height, val_at)}")


def _barrier_text(loss: str, height: float, at: float) -> str:
    if not np.isfinite(height):
        return f"{loss} diverged"
    return f"{loss} {height:.3g} at α = {at:.2f}" if height > 0 else f"{loss} none (under the chord)"


def interpolation_figure(alphas, curves: list[dict], endpoints: list[tuple[str, str]], titles: list[str]) -> Figure:
    """One panel per line (e.g. one per pair of runs and seed); of more than MAX_PANELS lines, those of the
    MAX_PANELS highest training barriers (diverged first), in their order, and a title that says so."""
    total = len(curves)
    if total > MAX_PANELS:
        height = [float(curve["barrier"]) for curve in curves]  # "nan" or "inf" where it diverged (from JSON)
        ranked = sorted(range(total), key=lambda i: -height[i] if math.isfinite(height[i]) else -math.inf)
        kept = sorted(ranked[:MAX_PANELS])
        curves, endpoints, titles = ([items[i] for i in kept] for items in (curves, endpoints, titles))
    columns = min(len(curves), 3)
    rows = math.ceil(len(curves) / columns)
    fig = Figure(figsize=(5.5 * columns, 5.0 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, curve, ends, title in zip(axes, curves, endpoints, titles):
        draw_interpolation(ax, alphas, curve, ends, title)
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    if total > MAX_PANELS:
        fig.suptitle(f"The {MAX_PANELS} of {total} lines with the highest training barrier (diverged first); every "
                     "line's barrier is in the report's table", fontsize=10)
    return fig


def surface_contour_figure(surface: Surface, label: str = "training loss") -> Figure:
    """Filled contours with contour lines and a colour bar; the star is the model itself (0, 0), and on a PCA plane
    the training path runs from the circle to it."""
    fig = Figure(figsize=(6.4, 1.8 + 4.2 * _box_aspect(surface)), layout="constrained")
    ax = fig.subplots()
    filled = _draw_surface(ax, surface, _levels([surface.loss]))
    round_colorbar(fig.colorbar(filled, ax=ax), _space_label(label, surface.space))
    _key(fig, [surface])
    return fig


def surface_3d_figure(surface: Surface, label: str = "training loss") -> Figure:
    """The surface in 3D, coloured on the same range as its z axis (the finite losses)."""
    a, b = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
    loss = np.asarray(surface.loss, dtype=float)
    finite = np.isfinite(loss)
    low, high = _finite_range([loss])
    fig = Figure(figsize=(6.5, 5.2), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    drawn = ax.plot_surface(a, b, np.where(finite, loss, np.nan), cmap="viridis", vmin=low, vmax=high, linewidth=0,
                            antialiased=True)
    ax.set(xlim=(a.min(), a.max()), ylim=(b.min(), b.max()), zlim=(low, high))  # no margins: round ticks at the ends
    round_colorbar(fig.colorbar(drawn, ax=ax, shrink=0.6, pad=0.08), _space_label(label, surface.space))
    if not finite.all():  # drawn on the top of the finite surface, where they cannot be hidden
        top = np.full(int((~finite).sum()), high)
        ax.scatter(a[~finite], b[~finite], top, marker="x", color=DIVERGED_COLOR, label=_diverged_label(finite))
        ax.legend(loc="upper right", fontsize=8)
    _label_plane(ax, surface)
    for axis in (ax.xaxis, ax.yaxis):  # the x axis's last tick label and the y axis's first meet at a corner
        axis.set_major_locator(MaxNLocator(nbins=4, prune="both"))
    # Room for the labels beside their tick labels (matplotlib's 3D defaults put β on its first tick label), and a
    # smaller box so that they stay on the canvas: constrained layout does not place a 3D panel's labels.
    ax.xaxis.labelpad, ax.yaxis.labelpad, ax.zaxis.labelpad = 10, 10, 14
    ax.set_box_aspect(None, zoom=0.85)
    ax.zaxis.set_major_locator(MaxNLocator(nbins=6))  # as the colour bar's (style.round_colorbar): the same ticks
    ax.zaxis.set_major_formatter(PlainFormatter())
    ax.set_zlabel(label)
    ax.set_title(surface.title, fontsize=10)
    return fig


def surfaces_figure(surfaces: list[Surface], label: str = "training loss") -> Figure:
    """The surfaces side by side, COLUMNS to a row, on one colour scale per weight space (rows of one space
    together, its colour bar naming it): colours compare within a space only. Of more than MAX_PANELS surfaces,
    the first MAX_PANELS (taken from each space in turn), and a title that says so."""
    total = len(surfaces)
    surfaces = _first_of_each_space(surfaces, MAX_PANELS)
    spaces = list(dict.fromkeys(surface.space for surface in surfaces))
    groups = [[surface for surface in surfaces if surface.space == space] for space in spaces]
    columns = min(COLUMNS, max(len(group) for group in groups))
    # A row is as tall as its tallest panel (PCA panels are often wide and low), plus titles and labels.
    heights = [math.ceil(len(group) / columns) * (1.5 + 3.3 * max(_box_aspect(surface) for surface in group))
               for group in groups]
    fig = Figure(figsize=(4.3 * columns + 1.6, sum(heights) + 0.4), layout="constrained")
    parts = fig.subfigures(len(groups), 1, height_ratios=heights, squeeze=False)[:, 0]
    for part, group in zip(parts, groups):
        axes = part.subplots(math.ceil(len(group) / columns), columns, squeeze=False).ravel()
        levels = _levels([surface.loss for surface in group])
        for ax, surface in zip(axes, group):
            filled = _draw_surface(ax, surface, levels)
        for ax in axes[len(group):]:
            ax.set_visible(False)
        scale = "its own colour scale" if len(groups) > 1 else "one colour scale for all panels"
        if len(groups) > 1:
            part.suptitle(f"{group[0].space or 'weight space not recorded'} ({scale})", fontsize=10)
        colorbar = part.colorbar(filled, ax=list(axes[:len(group)]))
        round_colorbar(colorbar, f"{_space_label(label, group[0].space)}\n({scale})")
    _key(fig, surfaces)
    if total > len(surfaces):
        fig.suptitle(f"The first {len(surfaces)} of {total} surfaces (each run's own: "
                     "figures/surface_2d_<run>_seed-<s>.png)", fontsize=10)
    return fig


def _first_of_each_space(surfaces: list[Surface], count: int) -> list[Surface]:
    """At most `count` surfaces, in their order: the first of each weight space, then the second, and so on."""
    before: dict[str, int] = {}  # surfaces of each space so far
    turns = []
    for index, surface in enumerate(surfaces):
        turns.append((before.get(surface.space, 0), index))
        before[surface.space] = before.get(surface.space, 0) + 1
    return [surfaces[index] for index in sorted(index for _, index in sorted(turns)[:count])]


def _draw_surface(ax, surface: Surface, levels: np.ndarray):
    """Contours of the finite losses, diverged points grey and hatched with × (counted in the title), the model as
    a star, the training path on a PCA plane."""
    a, b = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
    loss = np.asarray(surface.loss, dtype=float)
    finite = np.isfinite(loss)
    values = np.ma.masked_invalid(loss)
    filled = ax.contourf(a, b, values, levels=levels, cmap="viridis")
    ax.contour(a, b, values, levels=filled.levels, colors="k", linewidths=0.4, alpha=0.6)
    title = surface.title
    if not finite.all():  # the contours leave holes around them: the grey hatched background shows there
        ax.patch.set_facecolor("0.85")
        ax.patch.set_hatch("//")
        ax.patch.set_edgecolor("0.6")
        ax.plot(a[~finite], b[~finite], "x", color=DIVERGED_COLOR, clip_on=False)
        title += f"\n{_diverged_label(finite)}"
    if surface.path is not None:
        path = np.asarray(surface.path, dtype=float)
        ax.plot(path[:, 0], path[:, 1], ".-", color=PATH_COLOR, markersize=3, linewidth=1)
        ax.plot(path[0, 0], path[0, 1], "o", color=PATH_COLOR, markerfacecolor="white")
    ax.plot(0, 0, "*", color=PATH_COLOR, markersize=12, markeredgecolor="white")
    _label_plane(ax, surface)
    ax.set_box_aspect(_box_aspect(surface))
    ax.set_title(title, fontsize=10)
    return filled


def _box_aspect(surface: Surface) -> float:
    """Height : width of a panel: its grid's, within MAX_STRETCH either way."""
    width, height = np.ptp(surface.alphas), np.ptp(surface.betas)
    return float(np.clip(height / width, 1 / MAX_STRETCH, MAX_STRETCH)) if width > 0 and height > 0 else 1.0


def _key(fig, surfaces: list[Surface]) -> None:
    """One legend under the figure for the markers of all its panels."""
    handles = [Line2D([], [], marker="*", linestyle="", color=PATH_COLOR, markersize=10, markeredgecolor="white",
                      label="the model (final weights)")]
    if any(surface.path is not None for surface in surfaces):
        handles += [Line2D([], [], marker=".", color=PATH_COLOR, markersize=3, linewidth=1,
                           label="training path (PCA plane)"),
                    Line2D([], [], marker="o", linestyle="", color=PATH_COLOR, markerfacecolor="white", label="start")]
    if any(not np.isfinite(np.asarray(surface.loss, dtype=float)).all() for surface in surfaces):
        handles.append(Line2D([], [], marker="x", linestyle="", color=DIVERGED_COLOR, label="loss diverged"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)


def weight_space_name(adapter: str, space: str) -> str:
    """What a run's landscape is taken over, in words: `adapter` its model.adapter.type, `space` its
    landscape.space (which only a LoRA run reads)."""
    return "full model" if adapter == "none" else f"LoRA {space}"


def _label_plane(ax, surface: Surface) -> None:
    """The plane's axes: PC1 and PC2 with the share of the path's variance each explains, else α and β; plain tick
    labels, at most 5, so that narrow panels' labels keep apart."""
    if surface.explained is None:
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
    else:
        ax.set_xlabel(f"PC1 ({surface.explained[0]:.1%} of variance)")
        ax.set_ylabel(f"PC2 ({surface.explained[1]:.1%} of variance)")
    scale_axis(ax, "x", surface.alphas, ticks=4)
    scale_axis(ax, "y", surface.betas, ticks=4)


def _finite_range(losses: list) -> tuple[float, float]:
    finite = np.concatenate([np.asarray(loss, dtype=float).ravel() for loss in losses])
    finite = finite[np.isfinite(finite)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high <= low:  # one finite value (or all equal): a colour range must have a width
        low, high = low - 0.5, high + 0.5
    return low, high


def _levels(losses: list) -> np.ndarray:
    """About LEVELS contour levels at round values, covering the finite losses of `losses`."""
    return MaxNLocator(nbins=LEVELS).tick_values(*_finite_range(losses))


def _space_label(label: str, space: str) -> str:
    return f"{label}, {space}" if space else label


def _diverged_label(finite: np.ndarray) -> str:
    return f"{int((~finite).sum())} of {finite.size} diverged (loss NaN or inf)"
