"""Figures of loss surfaces and of the loss along a line between two models: data in, matplotlib Figure out
(nothing is written or shown here).

Figures are built without pyplot, so they hold no global state, need no backend (savefig renders
with Agg) and display as they are in a notebook. A 2D surface may hold points where the loss diverged
(NaN or inf): they are left out of the colours and marked grey with ×, and the legend counts them.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

TRAIN_COLOR, VAL_COLOR = "tab:blue", "tab:orange"
DIVERGED_COLOR = "0.35"


def draw_interpolation(ax, alphas, curve: dict, endpoints: tuple[str, str], title: str) -> None:
    """Training (solid) and validation (dashed) loss along the line; endpoints, chord and barrier marked."""
    alphas = np.asarray(alphas, dtype=float)
    ends = np.isin(alphas, [0.0, 1.0])
    for key, color, style, label in (("train_loss", TRAIN_COLOR, "-", "train"),
                                     ("val_loss", VAL_COLOR, "--", "validation")):
        losses = np.asarray(curve[key], dtype=float)
        ax.plot(alphas, losses, style, color=color, label=label)
        ax.plot(alphas[ends], losses[ends], "o", color=color)
    for alpha in (0.0, 1.0):
        ax.axvline(alpha, color="0.6", linewidth=0.8, linestyle=":")
    names = ax.secondary_xaxis("top")
    names.set_xticks([0.0, 1.0], labels=list(endpoints), fontsize=8)
    train = np.asarray(curve["train_loss"], dtype=float)
    ax.plot(alphas[ends], train[ends], ":", color="0.3", linewidth=1)
    # Read back from JSON, a diverged barrier is the string "nan" or "inf": float() takes both.
    at, height = float(curve["barrier_alpha"]), float(curve["barrier"])
    val_at, val_height = float(curve["val_barrier_alpha"]), float(curve["val_barrier"])
    text = f"barrier: train {height:.3f} at α = {at:.2f}, val {val_height:.3f} at α = {val_at:.2f}"
    top = train[alphas == at][0] if at in alphas else np.nan
    if np.isfinite(height) and np.isfinite(top):
        ax.plot([at, at], [top - height, top], color="tab:red", linewidth=2, label=text)
    else:
        ax.plot([], [], color="tab:red", linewidth=2, label=text + " (diverged)")
    ax.set_xlabel(f"α   (θ = (1−α)·{endpoints[0]} + α·{endpoints[1]})")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)


def interpolation_figure(alphas, curves: list[dict], endpoints: list[tuple[str, str]], titles: list[str]) -> Figure:
    """One panel per line (e.g. one per pair of runs and seed)."""
    columns = min(len(curves), 3)
    rows = math.ceil(len(curves) / columns)
    fig = Figure(figsize=(5.5 * columns, 4.2 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, curve, ends, title in zip(axes, curves, endpoints, titles):
        draw_interpolation(ax, alphas, curve, ends, title)
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    return fig


def surface_contour_figure(alphas, betas, loss, title: str, label: str = "training loss", levels: int = 30,
                           path=None, explained=None) -> Figure:
    """Filled contours with contour lines and a colour bar; the star is the model itself (0, 0). `path`: the
    training path projected on the plane (T × 2, from the start, a circle, to the star), drawn over it;
    `explained`: the variance of the path each PCA axis explains."""
    fig = Figure(figsize=(6.2, 5.2), layout="constrained")
    ax = fig.subplots()
    filled = _draw_surface(ax, alphas, betas, loss, levels, title)
    if path is not None:
        path = np.asarray(path, dtype=float)
        ax.plot(path[:, 0], path[:, 1], ".-", color="tab:red", markersize=3, linewidth=1, label="training path")
        ax.plot(path[0, 0], path[0, 1], "o", color="tab:red", markerfacecolor="white", label="start")
        ax.legend(loc="upper right", fontsize=8)
    if explained is not None:
        ax.set_xlabel(f"PC 1 ({explained[0]:.1%} of the path's variance)")
        ax.set_ylabel(f"PC 2 ({explained[1]:.1%})")
        ax.set_aspect("auto")  # the two axes may span very different distances
    fig.colorbar(filled, ax=ax, label=label)
    return fig


def surface_3d_figure(alphas, betas, loss, title: str, label: str = "training loss") -> Figure:
    a, b = np.meshgrid(alphas, betas, indexing="ij")
    loss = np.asarray(loss, dtype=float)
    finite = np.isfinite(loss)
    fig = Figure(figsize=(6.5, 5.2), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    surface = ax.plot_surface(a, b, np.where(finite, loss, np.nan), cmap="viridis", linewidth=0, antialiased=True)
    fig.colorbar(surface, ax=ax, shrink=0.6, pad=0.08)
    if not finite.all():  # drawn on the top of the finite surface, where they cannot be hidden
        top = np.full(int((~finite).sum()), loss[finite].max() if finite.any() else 0.0)
        ax.scatter(a[~finite], b[~finite], top, marker="x", color=DIVERGED_COLOR, label=_diverged_label(finite))
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("α (direction 1)")
    ax.set_ylabel("β (direction 2)")
    ax.set_zlabel(label)
    ax.set_title(title, fontsize=10)
    return fig


def surfaces_figure(panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], label: str = "training loss",
                    levels: int = 30) -> Figure:
    """2D surfaces side by side on one colour scale; `panels` holds (title, alphas, betas, loss)."""
    finite = np.concatenate([np.asarray(loss, dtype=float).ravel() for *_, loss in panels])
    finite = finite[np.isfinite(finite)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    if high <= low:  # one finite value (or all equal): contour levels must increase
        low, high = low - 0.5, high + 0.5
    boundaries = np.linspace(low, high, levels + 1)
    fig = Figure(figsize=(4.6 * len(panels) + 1.2, 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, alphas, betas, loss) in zip(axes, panels):
        filled = _draw_surface(ax, alphas, betas, loss, boundaries, title)
    fig.colorbar(filled, ax=list(axes), label=label)
    return fig


def _draw_surface(ax, alphas, betas, loss, levels, title: str):
    """Contours of the finite losses, diverged points grey and hatched with ×, the model as a star."""
    a, b = np.meshgrid(alphas, betas, indexing="ij")
    loss = np.asarray(loss, dtype=float)
    finite = np.isfinite(loss)
    values = np.ma.masked_invalid(loss)
    filled = ax.contourf(a, b, values, levels=levels, cmap="viridis")
    ax.contour(a, b, values, levels=filled.levels, colors="k", linewidths=0.4, alpha=0.6)
    if not finite.all():  # the contours leave holes around them: the grey hatched background shows there
        ax.patch.set_facecolor("0.85")
        ax.patch.set_hatch("//")
        ax.patch.set_edgecolor("0.6")
        ax.plot(a[~finite], b[~finite], "x", color=DIVERGED_COLOR, clip_on=False, label=_diverged_label(finite))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    ax.plot(0, 0, "*", color="tab:red", markersize=12, markeredgecolor="white")
    ax.set_xlabel("α (direction 1)")
    ax.set_ylabel("β (direction 2)")
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    return filled


def _diverged_label(finite: np.ndarray) -> str:
    return f"{int((~finite).sum())} of {finite.size} diverged (loss NaN or inf)"
