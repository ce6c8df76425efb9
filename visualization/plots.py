"""Figures of loss landscapes: data in, matplotlib Figure out (nothing is written or shown here).

Figures are built without pyplot, so they hold no global state, need no backend (savefig renders
with Agg) and display as they are in a notebook.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

TRAIN_COLOR, VAL_COLOR = "tab:blue", "tab:orange"


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
    at = curve["barrier_alpha"]
    top = train[alphas == at][0]
    ax.plot([at, at], [top - curve["barrier"], top], color="tab:red", linewidth=2,
            label=f"barrier: train {curve['barrier']:.3f} at α = {at:.2f}, "
                  f"val {curve['val_barrier']:.3f} at α = {curve['val_barrier_alpha']:.2f}")
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


def surface_contour_figure(alphas, betas, loss, title: str, label: str = "training loss", levels: int = 30) -> Figure:
    """Filled contours with contour lines and a colour bar; the star is the model itself (0, 0)."""
    a, b = np.meshgrid(alphas, betas, indexing="ij")
    values = np.ma.masked_invalid(loss)
    fig = Figure(figsize=(6.2, 5.2), layout="constrained")
    ax = fig.subplots()
    filled = ax.contourf(a, b, values, levels=levels, cmap="viridis")
    ax.contour(a, b, values, levels=filled.levels, colors="k", linewidths=0.4, alpha=0.6)
    fig.colorbar(filled, ax=ax, label=label)
    ax.plot(0, 0, "*", color="tab:red", markersize=12, markeredgecolor="white")
    ax.set_xlabel("α (direction 1)")
    ax.set_ylabel("β (direction 2)")
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    return fig


def surface_3d_figure(alphas, betas, loss, title: str, label: str = "training loss") -> Figure:
    a, b = np.meshgrid(alphas, betas, indexing="ij")
    fig = Figure(figsize=(6.5, 5.2), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    surface = ax.plot_surface(a, b, np.asarray(loss, dtype=float), cmap="viridis", linewidth=0, antialiased=True)
    fig.colorbar(surface, ax=ax, shrink=0.6, pad=0.08)
    ax.set_xlabel("α (direction 1)")
    ax.set_ylabel("β (direction 2)")
    ax.set_zlabel(label)
    ax.set_title(title, fontsize=10)
    return fig
