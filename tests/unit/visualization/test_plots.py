"""The run figures of visualization.plots: readable at 1 to 100 runs (visualization.figure_check finds nothing)
and showing what their data says (identical curves named, intervals as error bars, a measure with few runs marked)."""

from __future__ import annotations

import numpy as np
import pytest

from visualization.figure_check import figure_problems
from visualization.plots import (budget_curves_figure, correlation_figure, geometry_norms_figure, learning_curves_figure,
                                 search_convergence_figure, step_losses_figure)


def metrics(rng, epochs: int = 4) -> dict:
    losses = 4.0 - np.cumsum(rng.uniform(0.1, 0.5, size=epochs))
    return {"train_loss": list(losses), "val_loss": list(losses + 0.2), "init_val_loss": 4.2}


@pytest.mark.parametrize("runs", [1, 3, 10, 54, 100])
def test_learning_curves_pass_the_check_at_any_number_of_runs(runs):
    rng = np.random.default_rng(runs)
    fig = learning_curves_figure({f"trial-{i:03d}": [metrics(rng), metrics(rng)] for i in range(runs)}, "search")
    assert figure_problems(fig) == []
    entries = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    if runs > 10:  # no run by name: each run thin, the mean ± s.e. over them
        assert entries == [f"all runs ({runs} runs)", "train", "validation", "thick: mean ± s.e.; thin: each run"]
    else:
        assert entries[:runs] == [f"trial-{i:03d}" for i in range(runs)] and entries[runs:] == ["train", "validation"]


def test_learning_curves_of_many_runs_are_grouped():
    rng = np.random.default_rng(0)
    curves = {f"trial-{i:03d}": [metrics(rng)] for i in range(54)}
    groups = {run: ["tpe", "random", "grid"][i % 3] for i, run in enumerate(curves)}
    fig = learning_curves_figure(curves, "exp7-search: learning curves", groups)
    assert figure_problems(fig) == []
    entries = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert entries == [f"{m} (18 runs)" for m in ("tpe", "random", "grid")] + [
        "train", "validation", "thick: mean ± s.e.; thin: each run"]


def test_step_losses_name_identical_rotated_twins():
    rng = np.random.default_rng(0)
    sgd = list(5.0 - np.cumsum(rng.uniform(0, 0.1, 100)))
    runs = {"sgd": {"losses": [sgd], "group": "sgd", "rotation": "none"},
            "sgd-rotated": {"losses": [list(sgd)], "group": "sgd", "rotation": "global"},
            "adam": {"losses": [list(np.array(sgd) - 0.5)], "group": "adam", "rotation": "none"}}
    fig = step_losses_figure(runs, "exp4")
    assert figure_problems(fig) == []
    entries = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert entries == ["sgd", "adam", "rotation: none", "rotation: global", "sgd-rotated = sgd (identical curves)"]


def geometry_json(l11: float, spectral: float, dim: int, ci) -> dict:
    frame = {"l11": {"median": {"per_coordinate": l11 / dim, "ci": ci}}, "spectral": {"value": spectral},
             "ratio": {"median": l11 / (dim * spectral)}}
    return {"dim": dim, "frames": {"original": frame, "rotated": frame}}


def test_geometry_norms_are_on_linear_axes_from_zero_with_the_seeds_intervals_and_a_line_at_one():
    means = {"adam": {frame: {"l11": 2.0, "spectral": 4.0, "ratio": 0.5} for frame in ("original", "rotated")}}
    geometry = {"adam": {0: geometry_json(200.0, 4.0, 100, [150.0, 300.0])}}
    fig = geometry_norms_figure(means, "exp4", geometry)
    assert figure_problems(fig) == []
    l11, spectral, ratio = fig.axes[:3]
    assert all(ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0 for ax in (l11, spectral, ratio))
    bars = [c for c in l11.collections if len(c.get_segments())]  # the error bars' vertical segments
    assert np.allclose(bars[0].get_segments()[0][:, 1], [1.5, 3.0])  # the interval of ‖H‖₁,₁ over d
    ratio_bars = [c for c in ratio.collections if len(c.get_segments())]
    assert np.allclose(ratio_bars[0].get_segments()[0][:, 1], [150 / 400, 300 / 400])
    assert any(np.allclose(line.get_ydata(), 1.0) for line in ratio.get_lines())


def test_correlation_marks_a_measure_with_few_runs_and_prints_plain_ticks():
    rng = np.random.default_rng(0)
    near = -2.50000500007500010000125e-05
    points = [{"axes": {"optimizer": ["adamw", "sgd"][i % 2]}, "gap": float(rng.uniform(0, 0.1)),
               "measures": {"lambda_max": float(rng.uniform(1, 30)), "eps": near + i * 1e-18,
                            "random": float(rng.uniform(1e-4, 2e-4)) if i < 3 else None}} for i in range(16)]
    stats = {name: {"vs_gap": {"kendall_tau": 0.1, "kendall_interval": [-0.2, 0.4], "n": n}}
             for name, n in (("lambda_max", 16), ("eps", 16), ("random", 3))}
    correlation = {"measures": stats, "points": points, "settings": {"color_by": "optimizer"}}
    fig = correlation_figure(correlation, "exp8")
    assert figure_problems(fig) == []
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[2].endswith("n = 3 of 16: too few to compare") and "of 16" not in titles[0]


def test_search_convergence_names_the_objective_once_and_passes_the_check():
    curves = {"tpe": [[3.0, 2.5, None, 2.0], [3.2, 2.4, 2.4, 2.1]], "random": [[3.1, 3.0, 2.8, 2.8], [3.3, 2.9]]}
    fig = search_convergence_figure(curves, {"tpe": [10.0, 12.0], "random": [9.0, 11.0]}, "exp7", "best_val_loss")
    assert figure_problems(fig) == []
    assert fig.axes[0].get_ylabel() == "best val loss so far (mean ± s.e.)"


def test_budget_curves_draw_the_budget():
    runs = {name: [{"at_flops": [1e8, 5e8, 1e9], "at_seconds": [1.0, 2.0, 3.0], "val_perplexity": [90.0, 60.0, p]}]
            for name, p in (("full", 40.0), ("lora-r8", 55.0))}
    configs = {name: {"train": {"budget": {"flops": 1e9, "seconds": 0.0}}} for name in runs}
    fig = budget_curves_figure(runs, "exp6", configs)
    assert figure_problems(fig) == []
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["full", "lora-r8", "budget: 1e9"]
    assert len(fig.axes[0].get_yticks()) >= 4
