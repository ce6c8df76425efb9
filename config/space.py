"""Spaces of settings: what a `sweep:` expands and what a `search:` samples.

A space maps dotted config keys to the values they may take:

    train.batch_size: [4, 8, 16]                 # a list: these values (a choice)
    train.lr: {loguniform: [1.0e-4, 1.0e-1]}     # log-uniform between the bounds
    train.weight_decay: {uniform: [0.0, 0.1]}    # uniform between the bounds
    train.epochs: {int: [1, 4]}                  # an integer from low to high, both included
    train.optimizer: {choice: [sgd, adam]}       # the same as a list

A grid takes every combination of lists; random sampling draws each key independently (choices
uniformly). Every value is typed and bounded by the schema of its key, so a bad value names the key
where it was written. Continuous values are rounded to 4 significant digits, so that the names of
runs, which are made of their values, show exactly the values trained with.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from utils.errors import ConfigError

KINDS = ("choice", "uniform", "loguniform", "int")
SIGNIFICANT_DIGITS = 4


@dataclass(frozen=True)
class Axis:
    """One key of a space: its values (choice) or its bounds (uniform, loguniform, int)."""
    key: str
    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0

    def grid(self, points: int) -> list:
        """The axis's grid: its values, or `points` values spaced evenly (geometrically for loguniform)."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int":
            return sorted({int(round(v)) for v in np.linspace(self.low, self.high, points)})
        spaced = np.geomspace(self.low, self.high, points) if self.kind == "loguniform" else \
            np.linspace(self.low, self.high, points)
        return [rounded(float(v)) for v in spaced]

    def sample(self, rng: np.random.Generator):
        if self.kind == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        if self.kind == "int":
            return int(rng.integers(int(self.low), int(self.high) + 1))
        if self.kind == "loguniform":
            return rounded(float(np.exp(rng.uniform(math.log(self.low), math.log(self.high)))))
        return rounded(float(rng.uniform(self.low, self.high)))


def rounded(value: float) -> float:
    """`value` to SIGNIFICANT_DIGITS significant digits."""
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def parse_space(space, origin: str, typed: Callable[[str, Any, str], Any], keys: list[str]) -> list[Axis]:
    """The axes of a space as written at `origin` (e.g. 'exp.yaml: sweep.grid'). `typed(key, value, origin)`
    types and bounds one value of a key (config.schema's schema); `keys` are the settable keys."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{origin}: expected a mapping of dotted keys to values, e.g. {{train.lr: [0.001, 0.01]}}")
    axes = []
    for key, spec in space.items():
        where = f"{origin}.{key}"
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.6)
            raise ConfigError(f"{where}: unknown key" + (f" (did you mean {close[0]}?)" if close else ""))
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in KINDS:
                raise ConfigError(f"{where}: expected a list of values or one of "
                                  f"{', '.join('{' + k + ': [...]}' for k in KINDS)}, got {spec!r}")
            kind, bounds = next(iter(spec.items()))
        else:
            kind, bounds = "choice", spec
        if kind == "choice":
            if not isinstance(bounds, list) or not bounds:
                raise ConfigError(f"{where}: expected a non-empty list of values, got {bounds!r}")
            values = tuple(typed(key, v, f"{where}[{i}]") for i, v in enumerate(bounds))
            if any(isinstance(v, dict) for v in values):
                raise ConfigError(f"{where}: {key} takes a mapping, which a sweep or search cannot vary; "
                                  "write one run per value under `runs:`")
            values = tuple(_hashable(v) for v in values)
            if len(set(values)) != len(values):
                raise ConfigError(f"{where}: each value may be listed once, got {bounds!r}")
            axes.append(Axis(key, kind, values=values))
            continue
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise ConfigError(f"{where}.{kind}: expected [low, high], got {bounds!r}")
        low, high = (typed(key, b, f"{where}.{kind}[{i}]") for i, b in enumerate(bounds))
        if kind == "int" and not all(isinstance(b, int) and not isinstance(b, bool) for b in (low, high)):
            raise ConfigError(f"{where}.int: {key} takes no integers; use uniform or loguniform")
        if kind != "int" and not all(isinstance(b, float) for b in (low, high)):
            raise ConfigError(f"{where}.{kind}: {key} is not a real number; use a list of values or int")
        if not low < high:
            raise ConfigError(f"{where}.{kind}: low must be below high, got {bounds!r}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}.loguniform: bounds must be positive, got {bounds!r}")
        axes.append(Axis(key, kind, low=low, high=high))
    return axes


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def grid_points(axes: list[Axis], points: int = 3) -> list[dict]:
    """Every combination of the axes' grid values, the first axis outermost."""
    return [dict(zip([a.key for a in axes], combo)) for combo in itertools.product(*(a.grid(points) for a in axes))]


def grid_size(axes: list[Axis], points: int = 3) -> int:
    return math.prod(len(a.grid(points)) for a in axes)


def random_points(axes: list[Axis], n: int, seed: int, origin: str) -> list[dict]:
    """n distinct points drawn from the axes (the same n for the same seed)."""
    rng = np.random.default_rng(seed)
    points, seen = [], set()
    for _ in range(100 * n):
        point = {a.key: a.sample(rng) for a in axes}
        if tuple(point.values()) not in seen:
            seen.add(tuple(point.values()))
            points.append(point)
            if len(points) == n:
                return points
    raise ConfigError(f"{origin}: could not draw {n} distinct points (found {len(points)}); "
                      "lower n or widen the space")


def format_value(value) -> str:
    """A value as it appears in a run name: 0.001, 8, adam, true, 0.9-0.99."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = "-".join(format_value(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text)


def point_name(point: dict) -> str:
    """'batch_size=8_lr=0.001': each key by its last part, or whole where two keys share a last part."""
    leaves = [key.rsplit(".", 1)[-1] for key in point]
    return "_".join(f"{leaf if leaves.count(leaf) == 1 else key}={format_value(value)}"
                    for (key, value), leaf in zip(point.items(), leaves))
