"""What a reviewer would reject in a matplotlib Figure, found by drawing it: tick labels that overlap, text or a
legend outside the canvas (cut off in the saved file), an axis or colour bar without a label, a legend too long to
read, and constrained layout giving up ("constrained_layout not applied"). The tests run it on every figure the
small experiments draw."""

from __future__ import annotations

import itertools
import math
import warnings

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_LEGEND_ENTRIES = 12  # beyond this a legend is a list to search, not a key: group the runs instead
TOLERANCE = 1.0  # pixels: rounding of text extents


def figure_problems(figure: Figure) -> list[str]:
    """Each problem of `figure` in one sentence; [] for a figure a reviewer would accept."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
    renderer = canvas.get_renderer()
    problems = [f"matplotlib warned: {w.message}" for w in caught if "constrained_layout not applied" in str(w.message)]
    for ax in figure.axes:
        if ax.get_visible() and ax.axison:
            problems += _axes_problems(ax, renderer, figure.bbox)
    for legend in figure.legends:
        problems += _legend_problems(legend, "figure", renderer, figure.bbox)
    problems += [f"text {t.get_text()!r} reaches outside the canvas" for t in figure.texts
                 if _drawn(t) and _outside(t.get_window_extent(renderer), figure.bbox)]
    return problems


def _axes_problems(ax, renderer, canvas) -> list[str]:
    name = _axes_name(ax)
    problems = []
    colorbar = getattr(ax, "_colorbar", None)
    axes = [colorbar.long_axis] if colorbar is not None else [ax.xaxis, ax.yaxis, *([ax.zaxis] if ax.name == "3d" else [])]
    for axis in axes:
        labels = [label for tick in axis._update_ticks()  # the ticks drawn (within the view), major and minor
                  for label in (tick.label1, tick.label2) if _drawn(label)]
        letter = axis.axis_name
        if labels and not _labelled(ax, axis):
            problems.append(f"{name}: the {'colour bar' if colorbar is not None else letter + ' axis'} has no label")
        boxes = [(label.get_text(), label.get_window_extent(renderer)) for label in labels]
        for a, b in itertools.combinations(labels, 2):
            if _labels_overlap(a, b, renderer):
                problems.append(f"{name}: {letter} tick labels {a.get_text()!r} and {b.get_text()!r} overlap")
                break
        problems += [f"{name}: {letter} tick label {text!r} reaches outside the canvas"
                     for text, box in boxes if _outside(box, canvas)]
    texts = [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
    problems += [f"{name}: text {t.get_text()!r} reaches outside the canvas" for t in texts
                 if _drawn(t) and _outside(t.get_window_extent(renderer), canvas)]
    if ax.get_legend() is not None:
        problems += _legend_problems(ax.get_legend(), name, renderer, canvas)
    return problems


def _legend_problems(legend, name: str, renderer, canvas) -> list[str]:
    problems = []
    entries = len(legend.get_texts())
    if entries > MAX_LEGEND_ENTRIES:
        problems.append(f"{name}: a legend of {entries} entries (at most {MAX_LEGEND_ENTRIES} can be read)")
    if legend.get_visible() and _outside(legend.get_window_extent(renderer), canvas):
        problems.append(f"{name}: the legend reaches outside the canvas")
    return problems


def _labelled(ax, axis) -> bool:
    """An axis is labelled by its own label or by that of an axes sharing it (one label under a column)."""
    if axis.get_label_text():
        return True
    if axis.axis_name not in ("x", "y"):
        return False
    siblings = (ax.get_shared_x_axes() if axis.axis_name == "x" else ax.get_shared_y_axes()).get_siblings(ax)
    return any(getattr(other, f"{axis.axis_name}axis").get_label_text() for other in siblings)


def _axes_name(ax) -> str:
    title = ax.get_title() or ax.get_ylabel() or ax.get_xlabel()
    return f"panel {title.splitlines()[0]!r}" if title else "a panel"


def _drawn(text) -> bool:
    return text.get_visible() and bool(text.get_text().strip())


def _labels_overlap(a, b, renderer) -> bool:
    """Whether two texts' own (possibly rotated) rectangles overlap: the window extents of rotated labels side by
    side overlap although their letters do not."""
    angle = math.radians(a.get_rotation())
    if a.get_rotation() != b.get_rotation() or angle % (math.pi / 2) == 0:
        return _overlap(a.get_window_extent(renderer), b.get_window_extent(renderer))
    along, across = (math.cos(angle), math.sin(angle)), (-math.sin(angle), math.cos(angle))
    (ca, wa, ha), (cb, wb, hb) = (_rectangle(t, renderer) for t in (a, b))
    gap = (cb[0] - ca[0], cb[1] - ca[1])
    return (abs(gap[0] * along[0] + gap[1] * along[1]) < (wa + wb) / 2 - TOLERANCE
            and abs(gap[0] * across[0] + gap[1] * across[1]) < (ha + hb) / 2 - TOLERANCE)


def _rectangle(text, renderer) -> tuple[tuple[float, float], float, float]:
    """A rotated text's centre (that of its window extent), width and height as unrotated."""
    box = text.get_window_extent(renderer)
    rotation = text.get_rotation()
    text.set_rotation(0)
    flat = text.get_window_extent(renderer)
    text.set_rotation(rotation)
    return ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2), flat.width, flat.height


def _overlap(a, b) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > TOLERANCE) and (min(a.y1, b.y1) - max(a.y0, b.y0) > TOLERANCE)


def _outside(box, canvas) -> bool:
    return (box.x0 < canvas.x0 - TOLERANCE or box.y0 < canvas.y0 - TOLERANCE
            or box.x1 > canvas.x1 + TOLERANCE or box.y1 > canvas.y1 + TOLERANCE)
