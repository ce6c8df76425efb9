"""What a reviewer would reject in a matplotlib Figure, found by drawing it: tick labels that overlap (on 3D axes
also those of different axes, where they meet at a corner, and an axis label and tick labels), text or a legend outside the canvas (cut off in the
saved file), a legend over the data, an axis or colour bar without a label, a legend too long to read, and
constrained layout giving up ("constrained_layout not applied"). The tests run it on every figure the small
experiments draw."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
from matplotlib import transforms
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

MAX_LEGEND_ENTRIES = 12  # beyond this a legend is a list to search, not a key: group the runs instead
TOLERANCE = 1.0  # pixels: rounding of text extents
MAX_COVERED = 0.05  # share of a line's (sampled every 2 pixels) or a scatter's points a legend may hide


def figure_problems(figure: Figure) -> list[str]:
    """Each problem of `figure` in one sentence; [] for a figure a reviewer would accept."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
    renderer = canvas.get_renderer()
    problems = [f"matplotlib warned: {w.message}" for w in caught if "constrained_layout not applied" in str(w.message)]
    for ax in figure.axes:
        if ax.get_visible() and (ax._axis3don if ax.name == "3d" else ax.axison):  # a 3D axes has its 2D axes off
            problems += _axes_problems(ax, renderer, figure.bbox)
    for legend in figure.legends:
        problems += _legend_problems(legend, "figure", renderer, figure.bbox)
    for legend in [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]:
        problems += _covered_data(legend, figure.axes, renderer)
    problems += [f"text {t.get_text()!r} reaches outside the canvas" for t in figure.texts
                 if _drawn(t) and _outside(t.get_window_extent(renderer), figure.bbox)]
    return problems


def _axes_problems(ax, renderer, canvas) -> list[str]:
    name = _axes_name(ax)
    problems = []
    colorbar = getattr(ax, "_colorbar", None)
    axes = [colorbar.long_axis] if colorbar is not None else [ax.xaxis, ax.yaxis, *([ax.zaxis] if ax.name == "3d" else [])]
    drawn_labels = {}
    for axis in axes:
        labels = drawn_labels[axis.axis_name] = _tick_labels_drawn(axis)
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
    if ax.name == "3d":  # the axes meet at corners, and each axis's label stands beside its tick labels
        problems += _texts_of_3d_axes_overlap(ax, name, drawn_labels, renderer)
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


def _texts_of_3d_axes_overlap(ax, name: str, drawn_labels: dict, renderer) -> list[str]:
    """Tick labels of two axes of a 3D panel that overlap, and an axis label over any axis's tick labels."""
    groups = {f"{letter} tick label": labels for letter, labels in drawn_labels.items()}
    groups.update({f"{axis.axis_name} axis label": [axis.label] for axis in (ax.xaxis, ax.yaxis, ax.zaxis)
                   if _drawn(axis.label)})
    problems = []
    for (one, texts), (other, others) in itertools.combinations(groups.items(), 2):
        if one.endswith("axis label") and other.endswith("axis label"):
            continue
        meeting = next(((a, b) for a in texts for b in others if _labels_overlap(a, b, renderer)), None)
        if meeting:
            problems.append(f"{name}: {one} {meeting[0].get_text()!r} and {other} {meeting[1].get_text()!r} overlap")
    return problems


def _tick_labels_drawn(axis) -> list:
    """The labels of the ticks within the view, major and minor, as the last draw placed them: read, not recomputed
    (Axis._update_ticks would move a 3D axis's labels, which it places while drawing)."""
    scale = axis.get_transform()
    view = scale.transform(axis.get_view_interval())
    ticks = [tick for locs, get in ((axis.get_majorticklocs(), axis.get_major_ticks),
                                    (axis.get_minorticklocs(), axis.get_minor_ticks))
             for tick, loc in zip(get(len(locs)), locs)
             if transforms._interval_contains_close(view, scale.transform([loc])[0])]
    return [label for tick in ticks for label in (tick.label1, tick.label2) if _drawn(label)]


def _covered_data(legend, axes, renderer) -> list[str]:
    """The panels (2D) of which `legend` hides more than MAX_COVERED of a line's or a scatter's points (a line's
    vertices and points along its segments every 2 pixels), of those within the panel."""
    if not legend.get_visible():
        return []
    box = legend.get_window_extent(renderer)
    problems = []
    for ax in axes:
        if ax.name == "3d" or not ax.get_visible() or not _overlap(box, ax.bbox):
            continue
        shares = [float(np.mean(_within(inside, box))) for points in _plotted_points(ax)
                  for inside in [points[_within(points, ax.bbox)]] if inside.size]
        if max(shares, default=0.0) > MAX_COVERED:
            problems.append(f"{_axes_name(ax)}: a legend covers {max(shares):.0%} of a plotted line's or scatter's "
                            "points")
    return problems


def _plotted_points(ax) -> list[np.ndarray]:
    """Display coordinates (n × 2) of each data line and scatter of `ax` (not of lines across the panel, such as
    axhline, whose coordinates are partly the axes')."""
    points = []
    for line in ax.get_lines():
        if not line.get_visible() or line.get_transform() != ax.transData:
            continue
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
        xy = xy[np.all(np.isfinite(xy), axis=1)]
        if line.get_linestyle() not in ("None", "", " ") and len(xy) > 1:
            steps = np.maximum(1, np.ceil(np.hypot(*np.diff(xy, axis=0).T) / 2.0)).astype(int)
            xy = np.concatenate([start + np.outer(np.arange(n) / n, end - start)
                                 for start, end, n in zip(xy[:-1], xy[1:], steps)] + [xy[-1:]])
        points.append(xy)
    for collection in ax.collections:
        if isinstance(collection, PathCollection) and collection.get_visible():
            points.append(collection.get_offset_transform().transform(collection.get_offsets()))
    return points


def _within(points: np.ndarray, box) -> np.ndarray:
    return ((points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1))


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
    side overlap although their letters do not. Two convex shapes are apart where their projections on one of their
    edges' normals are."""
    corners = [_corners(text, renderer) for text in (a, b)]
    for shape in corners:
        for edge in (shape[1] - shape[0], shape[3] - shape[0]):
            normal = np.array([-edge[1], edge[0]]) / max(float(np.hypot(*edge)), 1e-12)
            (low_a, high_a), (low_b, high_b) = ((float(p.min()), float(p.max())) for p in (c @ normal for c in corners))
            if min(high_a, high_b) - max(low_a, low_b) <= TOLERANCE:
                return False
    return True


def _corners(text, renderer) -> np.ndarray:
    """A text's rectangle as drawn (4 × 2, display coordinates, in order round it): its window extent's centre, its
    size unrotated, turned by its rotation."""
    box = text.get_window_extent(renderer)
    rotation = text.get_rotation()
    text.set_rotation(0)
    flat = text.get_window_extent(renderer)
    text.set_rotation(rotation)
    angle = math.radians(rotation)
    along, across = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
    centre = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
    half_w, half_h = along * flat.width / 2, across * flat.height / 2
    return np.array([centre - half_w - half_h, centre + half_w - half_h, centre + half_w + half_h,
                     centre - half_w + half_h])


def _overlap(a, b) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > TOLERANCE) and (min(a.y1, b.y1) - max(a.y0, b.y0) > TOLERANCE)


def _outside(box, canvas) -> bool:
    return (box.x0 < canvas.x0 - TOLERANCE or box.y0 < canvas.y0 - TOLERANCE
            or box.x1 > canvas.x1 + TOLERANCE or box.y1 > canvas.y1 + TOLERANCE)
