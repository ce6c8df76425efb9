"""The figures' shared style, for 1 to 100+ runs: a colour per value of the varied factor and a line style per value
of the other, legends outside the axes listing groups (not runs), beyond MANY_RUNS a mean ± standard error band per
group, linear axes unless the values span more than a decade, plain tick labels, round colour-bar ticks."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, Formatter, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

MANY_RUNS = 10  # beyond this many lines, each run's own legend entry and colour cannot be told apart
LINE_STYLES = ("-", "--", ":", "-.")
TRAIN_COLOR, VALIDATION_COLOR = "tab:blue", "tab:orange"  # where a figure shows both losses of one run


def colors(n: int) -> list:
    """n colours that can be told apart: tab10, then tab20, then a sequential map."""
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def color_map(keys) -> dict:
    """{key: colour} in the order the keys first appear."""
    keys = list(dict.fromkeys(keys))
    return dict(zip(keys, colors(len(keys))))


def style_map(keys) -> dict:
    keys = list(dict.fromkeys(keys))
    return {key: LINE_STYLES[i % len(LINE_STYLES)] for i, key in enumerate(keys)}


def legend_outside(ax, handles=None, labels=None, title: str | None = None) -> None:
    """The legend right of the axes (constrained layout makes room for it), so it hides no data."""
    kwargs = {} if handles is None else {"handles": handles, "labels": labels}
    ax.legend(**kwargs, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, title=title,
              title_fontsize=8, borderaxespad=0.0)


def key_handles(colors_by: dict, styles_by: dict, color_title: str = "", style_title: str = "") -> tuple[list, list]:
    """Legend entries for a grouped legend: one per colour (solid) and one per line style (grey)."""
    handles, labels = [], []
    for key, color in colors_by.items():
        handles.append(Line2D([], [], color=color, linestyle="-"))
        labels.append(f"{color_title}{key}")
    for key, style in styles_by.items():
        handles.append(Line2D([], [], color="0.3", linestyle=style))
        labels.append(f"{style_title}{key}")
    return handles, labels


def mean_band(ax, x, series: list, color, label: str | None, linestyle: str = "-") -> None:
    """The mean of `series` (lists of values at x, shorter ones padded) ± its standard error, as a line and band."""
    length = len(x)
    grid = np.array([list(s[:length]) + [np.nan] * (length - len(s)) for s in series], dtype=float)
    counts = np.sum(np.isfinite(grid), axis=0)
    mean = np.array([np.nanmean(col) if n else np.nan for col, n in zip(grid.T, counts)])
    stderr = np.array([np.nanstd(col, ddof=1) / math.sqrt(n) if n > 1 else 0.0 for col, n in zip(grid.T, counts)])
    ax.plot(x, mean, linestyle, color=color, label=label)
    ax.fill_between(x, mean - stderr, mean + stderr, color=color, alpha=0.25, linewidth=0)


def plain_number(value: float, step: float | None = None) -> str:
    """A tick label as a reader writes it: no offset, 10^k only below 0.001 or from 100000 on, and as many digits
    as tell ticks `step` apart (3 significant digits without a step)."""
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    place = None if not step else _last_place(step)  # the decimal place the ticks differ in
    if -3 <= exponent <= 4:
        text = (f"{value:.{max(0, -place)}f}" if place is not None
                else np.format_float_positional(value, precision=3, fractional=False, trim="-"))
    else:
        digits = 1 if place is None else max(0, exponent - place)
        text = f"{value / 10 ** exponent:.{digits}f}".rstrip("0").rstrip(".") + f"e{exponent}"
    return text.replace("-", "−")


def _last_place(step: float) -> int:
    """The decimal place of a tick step's last digit: 20 -> 1, 0.5 -> -1, 0.25 -> -2 (ticks 4.75, 5, 5.25)."""
    place = math.floor(math.log10(step) + 1e-9)
    while abs(step / 10.0 ** place - round(step / 10.0 ** place)) > 1e-6:
        place -= 1
    return place


class PlainFormatter(Formatter):
    """plain_number for every tick, with the digits the axis's tick spacing needs."""

    def __call__(self, value, pos=None) -> str:
        gaps = np.diff(np.sort(np.asarray(self.locs, dtype=float)))
        gaps = gaps[gaps > 0]
        even = self.axis.get_scale() in ("linear", "function")  # function: a contour plot's colour bar (its levels)
        return plain_number(value, float(gaps.min()) if gaps.size and even else None)


def scale_axis(ax, axis: str, values, ticks: int = 6) -> None:
    """Log only where the positive values span more than a decade; plain tick labels either way, at most about
    `ticks` of them (fewer for a narrow panel); values equal up to rounding get one tick, "all ≈ v"."""
    values = np.asarray([v for v in np.ravel(np.asarray(values, dtype=float)) if np.isfinite(v)])
    target = ax.xaxis if axis == "x" else ax.yaxis
    if values.size and np.ptp(values) <= 1e-6 * np.abs(values).max():  # one value up to rounding: one tick
        target.set_major_locator(FixedLocator([float(values.mean())]))
        target.set_major_formatter(FuncFormatter(lambda value, _: "all ≈ " + plain_number(value)))
        return
    if values.size and values.min() > 0 and values.max() > 10 * values.min():
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        decades = math.log10(values.max() / values.min())
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 2 else (1.0,)))
        target.set_minor_formatter(NullFormatter())
    else:
        target.set_major_locator(MaxNLocator(nbins=ticks))
    target.set_major_formatter(PlainFormatter())


def round_colorbar(colorbar, label: str) -> None:
    """A colour bar with a label and round tick values."""
    colorbar.set_label(label)
    colorbar.locator = MaxNLocator(nbins=6)
    colorbar.formatter = PlainFormatter()
    colorbar.update_ticks()
