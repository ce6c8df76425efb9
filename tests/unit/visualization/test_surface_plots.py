"""Figures of loss surfaces and interpolation lines: what each says (axes, colour scales, path, diverged points,
barriers), and that a reviewer's figure check passes them."""

from __future__ import annotations

import numpy as np
import pytest

from visualization.figure_check import figure_problems
from visualization.surface_plots import (Surface, interpolation_figure, surface_3d_figure, surface_contour_figure,
                                         surfaces_figure, weight_space_name)

AXIS = np.linspace(-1, 1, 3)
BOWL = np.add.outer(AXIS**2, AXIS**2) + 1.0  # 1 at the centre, 3 in the corners


def pca_surface(title: str = "pca", space: str = "full model") -> Surface:
    """A PCA plane three times wider than high (±18 × ±6), with a path from (15, 2) to the origin."""
    alphas, betas = np.linspace(-18, 18, 5), np.linspace(-6, 6, 5)
    loss = np.add.outer(alphas**2 / 100, betas**2 / 10) + 2.0
    path = np.array([[15.0, 2.0], [8.0, 3.0], [2.0, 1.0], [0.0, 0.0]])
    return Surface(title, alphas, betas, loss, path=path, explained=np.array([0.929, 0.048]), space=space)


def colour_bars(figure) -> list:
    return [ax._colorbar for ax in figure.axes if getattr(ax, "_colorbar", None) is not None]


def test_surface_figures_leave_out_and_count_diverged_points():
    loss = BOWL.copy()
    loss[0, 0], loss[2, 1] = np.nan, np.inf
    counted = "2 of 9 diverged (loss NaN or inf)"
    contour = surface_contour_figure(Surface("one run", AXIS, AXIS, loss))
    assert contour.axes[0].get_title() == f"one run\n{counted}"
    legend = surface_3d_figure(Surface("one run", AXIS, AXIS, loss)).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [counted]
    finite = 2 * np.where(np.isfinite(loss), loss, 2.0)
    both = surfaces_figure([Surface("diverged", AXIS, AXIS, loss), Surface("finite", AXIS, AXIS, finite)])
    titles = [ax.get_title() for ax in both.axes if ax.get_title()]
    assert titles == [f"diverged\n{counted}", "finite"]  # only the panel that has them
    (bar,) = colour_bars(both)
    assert bar.ax.get_ylim() == pytest.approx((1.0, 6.0))  # the finite values set the shared scale
    assert "loss diverged" in [t.get_text() for t in both.legends[0].get_texts()]


def test_pca_axes_carry_the_variance_share_and_the_path_is_drawn():
    surface = pca_surface()
    for figure in (surface_contour_figure(surface), surfaces_figure([surface])):
        ax = figure.axes[0]
        assert ax.get_xlabel() == "PC1 (92.9% of variance)" and ax.get_ylabel() == "PC2 (4.8% of variance)"
        drawn = [line.get_xydata() for line in ax.get_lines()]
        assert any(xy.shape == surface.path.shape and np.allclose(xy, surface.path) for xy in drawn)
        assert {"training path (PCA plane)", "start"} <= {t.get_text() for t in figure.legends[0].get_texts()}
    ax3d = surface_3d_figure(surface).axes[0]
    assert (ax3d.get_xlabel(), ax3d.get_ylabel()) == ("PC1 (92.9% of variance)", "PC2 (4.8% of variance)")
    random = surfaces_figure([Surface("random", AXIS, AXIS, BOWL)]).axes[0]
    assert (random.get_xlabel(), random.get_ylabel()) == ("α (direction 1)", "β (direction 2)")


def test_a_wide_pca_plane_is_not_squashed_into_a_strip():
    """±18 × ±6 drawn at equal aspect is a 3:1 strip: the panel keeps its proportions only up to 2:1."""
    wide = surfaces_figure([pca_surface()]).axes[0]
    assert wide.get_box_aspect() == pytest.approx(0.5)
    square = surfaces_figure([Surface("random", AXIS, AXIS, BOWL)]).axes[0]
    assert square.get_box_aspect() == pytest.approx(1.0)
    near = Surface("near", np.linspace(-3, 3, 3), np.linspace(-2, 2, 3), BOWL)
    assert surfaces_figure([near]).axes[0].get_box_aspect() == pytest.approx(2 / 3)  # true proportions


def test_adapter_and_full_model_surfaces_get_their_own_colour_scales_and_say_so():
    full = Surface("full", AXIS, AXIS, BOWL + 2.0, space=weight_space_name("none", "adapter"))
    lora = Surface("lora", AXIS, AXIS, BOWL, space=weight_space_name("lora", "adapter"))
    figure = surfaces_figure([full, lora, Surface("full 2", AXIS, AXIS, BOWL + 3.0, space=full.space)])
    bars = colour_bars(figure)
    labels = [bar.ax.get_ylabel() for bar in bars]
    assert labels == ["training loss, full model\n(its own colour scale)",
                      "training loss, LoRA adapter\n(its own colour scale)"]
    assert [bar.ax.get_ylim() for bar in bars] == [pytest.approx((3.0, 6.0)), pytest.approx((1.0, 3.0))]
    one = surfaces_figure([full, Surface("full 2", AXIS, AXIS, BOWL, space=full.space)])
    assert [bar.ax.get_ylabel() for bar in colour_bars(one)] == [
        "training loss, full model\n(one colour scale for all panels)"]


def test_colour_bar_ticks_are_round_and_a_3d_colour_bar_spans_its_z_axis():
    loss = BOWL * 1.163 + 2.711  # 3.874 to 6.2: linspace levels gave ticks 3.874, 4.172, ...
    for figure in (surface_contour_figure(Surface("t", AXIS, AXIS, loss)),
                   surfaces_figure([Surface("t", AXIS, AXIS, loss)])):
        (bar,) = colour_bars(figure)
        figure.canvas.draw()
        ticks = [t for t in bar.ax.get_yticks() if bar.ax.get_ylim()[0] <= t <= bar.ax.get_ylim()[1]]
        assert len(ticks) >= 3 and all(abs(t * 10 - round(t * 10)) < 1e-9 for t in ticks), ticks
    steps = surface_contour_figure(Surface("t", AXIS, AXIS, BOWL * 0.08 + 4.08))  # 4.08 to 4.24, ticks 0.02 apart
    (bar,) = colour_bars(steps)
    steps.canvas.draw()
    labels = [label.get_text() for label in bar.ax.get_yticklabels() if label.get_text()]
    assert labels and all(len(text.split(".")[1]) == 2 for text in labels), labels  # 4.20, not 4.2 beside 4.14
    figure = surface_3d_figure(Surface("t", AXIS, AXIS, loss))
    (bar,) = colour_bars(figure)
    assert figure.axes[0].get_zlim() == pytest.approx((loss.min(), loss.max()))
    assert bar.ax.get_ylim() == pytest.approx((loss.min(), loss.max()))


def curve(train, val, barrier=0.0, at=0.0) -> dict:
    return {"train_loss": train, "val_loss": val, "barrier": barrier, "barrier_alpha": at,
            "val_barrier": 0.0, "val_barrier_alpha": 0.0}


def test_the_barrier_has_a_legend_line_only_where_one_is_drawn():
    alphas = [0.0, 0.5, 1.0]
    flat = interpolation_figure(alphas, [curve([2.0, 1.5, 1.0], [2.1, 1.6, 1.1])], [("a", "b")], ["flat"])
    legend = flat.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["train", "validation", "chord (train)"]
    assert "train none (under the chord)" in legend.get_title().get_text()
    hill = interpolation_figure(alphas, [curve([1.0, 3.0, 1.0], [1.0, 2.9, 1.0], barrier=2.0, at=0.5)],
                                [("a", "b")], ["hill"])
    legend = hill.axes[0].get_legend()
    assert "barrier (train)" in [t.get_text() for t in legend.get_texts()]
    assert "train 2 at α = 0.50" in legend.get_title().get_text()
    red = [line for line in hill.axes[0].get_lines() if line.get_label() == "barrier (train)"]
    assert np.allclose(red[0].get_xydata(), [[0.5, 1.0], [0.5, 3.0]])


def test_many_surfaces_of_two_spaces_pass_the_figure_check():
    spaces = ["full model", "LoRA adapter"]
    panels = [pca_surface(f"run {k}, seed 42", spaces[k % 2]) for k in range(7)]
    panels.append(Surface("random", np.linspace(-0.75, 0.75, 7), np.linspace(-0.75, 0.75, 7), np.ones((7, 7))))
    for figure in (surfaces_figure(panels), surface_contour_figure(panels[0]), surface_3d_figure(panels[0]),
                   surface_3d_figure(panels[-1])):
        assert figure_problems(figure) == []


def test_of_many_surfaces_or_lines_a_bounded_selection_is_drawn_and_named():
    """At 100 runs the figures are as tall as at 12: the first surfaces (of each weight space in turn), the lines of
    the highest barriers (diverged first), and a title saying which; at 1 run, one panel as before."""
    spaces = ["full model", "LoRA adapter"]
    panels = [Surface(f"run-{k:03d}, seed 42", AXIS, AXIS, BOWL + k / 100, space=spaces[k < 3]) for k in range(100)]
    figure = surfaces_figure(panels)
    drawn = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert drawn == [f"run-{k:03d}, seed 42" for k in range(3)] + [f"run-{k:03d}, seed 42" for k in range(3, 12)]
    assert figure.get_suptitle().startswith("The first 12 of 100 surfaces")
    assert tuple(figure.get_size_inches()) == tuple(surfaces_figure(panels[:12]).get_size_inches())
    assert figure_problems(figure) == []
    assert surfaces_figure(panels[:1]).get_suptitle() == ""

    barriers = [0.01 * k for k in range(100)]
    barriers[5] = "nan"  # diverged: read back from JSON as a string
    curves = [curve([1.0, 1.0 + float(b) if b != "nan" else np.nan, 1.0], [1.0, 1.0, 1.0], barrier=b, at=0.5)
              for b in barriers]
    lines = interpolation_figure([0.0, 0.5, 1.0], curves, [(f"a{k}", f"b{k}") for k in range(100)],
                                 [f"line {k}" for k in range(100)])
    assert [ax.get_title() for ax in lines.axes if ax.get_title()] == ["line 5"] + [f"line {k}" for k in range(89, 100)]
    assert lines.get_suptitle().startswith("The 12 of 100 lines with the highest training barrier")
    assert figure_problems(lines) == []


def test_the_legend_of_a_line_hides_none_of_it():
    """Inside the panel (loc="best"), the legend with its barrier title covered the top of the validation line."""
    hill = interpolation_figure([0.0, 0.5, 1.0], [curve([1.0, 2.9, 1.0], [1.0, 3.3, 1.0], barrier=1.9, at=0.5)],
                                [("a", "b")], ["hill"])
    assert figure_problems(hill) == []


def test_a_3d_surface_keeps_its_axis_labels_off_the_tick_labels_and_on_the_canvas():
    for half_width in (0.1, 0.5, 18.0, 1000.0):
        axis = np.linspace(-half_width, half_width, 5)
        surface = Surface("large, seed 42", axis, axis, np.add.outer(axis ** 2, axis ** 2) / 3 + 5)
        assert figure_problems(surface_3d_figure(surface)) == [], half_width
