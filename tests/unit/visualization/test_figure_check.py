"""The figure checker: it names each problem on hand-made bad figures (and on today's exp7 learning curves and exp8
correlation panels, rebuilt here as they were drawn) and passes good ones."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from visualization.figure_check import figure_problems


def labelled_plot(layout: str | None = "constrained", **kwargs) -> tuple[Figure, object]:
    fig = Figure(figsize=(5, 3.5), layout=layout, **kwargs)
    ax = fig.subplots()
    ax.plot([0, 1, 2], [3.0, 1.0, 2.0], label="run")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    return fig, ax


def test_a_labelled_plot_with_a_legend_and_a_colour_bar_passes():
    fig, ax = labelled_plot()
    ax.legend()
    image = ax.imshow([[1.0, 2.0], [3.0, 4.0]], extent=(0, 2, 1, 3))
    fig.colorbar(image, ax=ax, label="loss")
    assert figure_problems(fig) == []


def test_overlapping_tick_labels_are_named():
    fig, ax = labelled_plot()
    ax.set_xticks(range(8), labels=[f"a long run name {i}" for i in range(8)])
    problems = figure_problems(fig)
    assert any("x tick labels 'a long run name" in p and "overlap" in p for p in problems), problems


def test_a_legend_outside_the_canvas_is_named():
    fig, ax = labelled_plot(layout=None)
    ax.legend(loc="upper left", bbox_to_anchor=(1.3, 1.0))
    assert any("legend reaches outside the canvas" in p for p in figure_problems(fig))


def test_text_outside_the_canvas_is_named():
    fig, ax = labelled_plot()
    fig.text(0.9, 0.5, "a note that runs off the right edge")
    ax.text(2.5, 2.0, "clipped", clip_on=False)
    ax.set_xlim(0, 2)
    problems = figure_problems(fig)
    assert any("'a note that runs off the right edge' reaches outside" in p for p in problems), problems


def test_an_unlabelled_axis_and_colour_bar_are_named_unless_a_shared_axis_is_labelled():
    fig = Figure(figsize=(6, 5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax in (top, bottom):
        ax.plot([0, 1], [1, 2])
    bottom.set_xlabel("step")  # labels the column: top's x axis is shared
    bottom.set_ylabel("loss")
    fig.colorbar(top.imshow([[1.0, 2.0]]), ax=top)
    problems = figure_problems(fig)
    assert "a panel: the y axis has no label" in problems
    assert "a panel: the colour bar has no label" in problems
    assert not any("x axis" in p for p in problems), problems


def test_constrained_layout_giving_up_is_named():
    fig = Figure(figsize=(1.5, 1.5), layout="constrained")
    for ax in fig.subplots(4, 4).ravel():
        ax.set_xlabel("a long label for a small panel")
        ax.set_ylabel("another long label")
    assert any("constrained_layout not applied" in p for p in figure_problems(fig))


def todays_learning_curves(runs: int) -> Figure:
    """learning_curves_figure as exp7-search drew it before issue 23: every run's train and validation line in
    one legend inside the axes."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for run in range(runs):
        losses = 4.0 - np.cumsum(rng.uniform(0.1, 0.5, size=4))
        ax.plot(range(1, 5), losses, "-", label=f"trial-{run:03d} train")
        ax.plot(range(5), [4.0, *(losses + 0.2)], "--", label=f"trial-{run:03d} validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (per target token)")
    ax.legend(fontsize=8)
    return fig


def test_it_fails_on_todays_exp7_learning_curves():
    problems = figure_problems(todays_learning_curves(54))
    assert any("a legend of 108 entries" in p for p in problems), problems
    assert any("legend reaches outside the canvas" in p for p in problems), problems


def todays_correlation_panels() -> Figure:
    """correlation_figure as exp8 drew it before issue 23: three panels, one measure with near-equal values
    whose tick labels are printed in full."""
    fig = Figure(figsize=(12.6, 3.6), layout="constrained")
    for ax, name in zip(fig.subplots(1, 3), ("lambda_max", "trace", "eps_sharpness_0.001")):
        ax.scatter([1, 2, 3], [0.1, 0.3, 0.2])
        ax.set_xlabel(name)
        ax.set_ylabel("generalization gap")
        ax.set_title(f"{name}\nτ = 0.20 [−0.40, 0.70], n = 16", fontsize=9)
    ax.set_xticks([1, 2, 3], labels=["−0.0000250000500007500010000125", "−0.0000250000500007500010000100",
                                     "−0.0000250000500007500010000075"])
    fig.suptitle("exp8-flatness-small: measures against the generalization gap")
    return fig


def test_it_fails_on_todays_exp8_correlation_panel():
    problems = figure_problems(todays_correlation_panels())
    assert any("x tick labels '−0.0000250000500007500010000125'" in p and "overlap" in p for p in problems), problems


def test_rotated_tick_labels_overlap_only_where_their_letters_do():
    fig, ax = labelled_plot()
    ax.set_xticks([0, 1, 2], labels=["adam", "adam-rotated", "sgd"], rotation=30, ha="right")
    assert figure_problems(fig) == []
    ax.set_xticks(np.linspace(0, 2, 12), labels=[f"a long name {i}" for i in range(12)], rotation=10, ha="right")
    assert any("overlap" in p for p in figure_problems(fig))


def surface_3d(x_ticks: int) -> Figure:
    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    a, b = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    ax.plot_surface(a, b, a ** 2 + b ** 2)
    ax.set_xticks(np.linspace(-1, 1, x_ticks), labels=[f"{v:.5f}" for v in np.linspace(-1, 1, x_ticks)])
    ax.set_yticks([-1, 0, 1])
    ax.set(xlabel="α", ylabel="β", zlabel="loss")
    return fig


def test_overlapping_tick_labels_of_a_3d_axis_are_named():
    problems = figure_problems(surface_3d(9))
    assert any("x tick labels '-1.00000' and '-0.75000' overlap" in p for p in problems), problems
    assert figure_problems(surface_3d(3)) == []


def test_tick_labels_of_two_3d_axes_meeting_at_a_corner_are_named():
    fig = surface_3d(3)
    ax = fig.axes[0]
    ax.set_yticks([-1, 0, 1], labels=["a long label −1", "0", "1"])
    ax.view_init(elev=30, azim=-45)  # the x axis's last tick label and the y axis's first meet
    problems = figure_problems(fig)
    assert any("x tick label '1.00000' and y tick label 'a long label −1' overlap" in p for p in problems), problems


def many_points(legend_loc: str | None) -> Figure:
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.set(xlabel="epoch", ylabel="loss", ylim=(0.0, 3.0))
    x = np.linspace(0, 2, 200)
    for offset in range(6):
        ax.plot(x, 2.0 + 0.1 * offset + 0.0 * x, label=f"run {offset}")
    ax.scatter(x[::10], np.full(20, 2.2), label="points")
    if legend_loc == "outside":
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    elif legend_loc:
        ax.legend(loc=legend_loc)
    return fig


def test_a_legend_over_the_data_is_named_and_one_beside_it_passes():
    problems = figure_problems(many_points("center"))
    assert any("a legend covers" in p and "of a plotted line's or scatter's points" in p for p in problems), problems
    assert figure_problems(many_points("outside")) == []
    assert figure_problems(many_points("lower left")) == []  # below the lines: it hides none of them


def todays_surface_3d() -> Figure:
    """surface_3d_figure as it drew a layer-normalised surface before: matplotlib's 3D label padding puts β's label
    on its first tick label."""
    fig = Figure(figsize=(6.5, 5.2), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    a = np.linspace(-0.5, 0.5, 5)
    drawn = ax.plot_surface(*np.meshgrid(a, a, indexing="ij"), np.add.outer(a ** 2, a ** 2) / 3 + 5)
    fig.colorbar(drawn, ax=ax, shrink=0.6, pad=0.08, label="training loss")
    ax.set_xticks([-0.25, 0.0, 0.25], labels=["−0.25", "0", "0.25"])
    ax.set_yticks([-0.25, 0.0, 0.25], labels=["−0.25", "0", "0.25"])
    ax.set(xlabel="α (direction 1)", ylabel="β (direction 2)", zlabel="training loss", title="large, seed 42")
    return fig


def test_an_axis_label_over_a_tick_label_of_a_3d_panel_is_named():
    problems = figure_problems(todays_surface_3d())
    assert any("y tick label '−0.25' and y axis label 'β (direction 2)' overlap" in p for p in problems), problems
