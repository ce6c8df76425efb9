"""The figures' shared style: tick labels as a reader writes them, log axes only over more than a decade."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from visualization.style import plain_number, scale_axis


@pytest.mark.parametrize("value, step, text", [
    (0.0, None, "0"), (10000.0, None, "10000"), (0.0016, None, "0.0016"), (5.123, None, "5.12"), (-0.04, None, "−0.04"),
    (1e-4, None, "1e−4"), (2.5e6, None, "2.5e6"), (48.55, 0.05, "48.55"), (48.6, 0.05, "48.60"), (3.0, 0.5, "3.0"),
    (1.2e-4, 2e-5, "1.2e−4"),
    (4.75, 0.25, "4.75"), (5.0, 0.25, "5.00"), (40.0, 20.0, "40")])  # 0.25 apart: 4.8 and 5.2 would misread 4.75
def test_plain_numbers(value, step, text):
    assert plain_number(value, step) == text


@pytest.mark.parametrize("values, scale", [([1.0, 9.0], "linear"), ([1.0, 11.0], "log"), ([-1.0, 100.0], "linear")])
def test_log_only_beyond_a_decade(values, scale):
    ax = Figure().subplots()
    scale_axis(ax, "y", values)
    assert ax.get_yscale() == scale


def test_values_equal_up_to_rounding_get_one_tick():
    ax = Figure().subplots()
    ax.plot([0, 1], [-2.50000500007500010000125e-05, -2.50000500007500010000125e-05 + 1e-18])
    scale_axis(ax, "y", ax.get_lines()[0].get_ydata())
    assert [label.get_text() for label in ax.yaxis.get_majorticklabels()] == ["all ≈ −2.5e−5"]
