"""Reading experiment files into typed runs (config.schema), every value checked where it is written.

An experiment file (YAML) may `extends:` another file (usually config/base.yaml), overrides any
field of the schema, lists `seeds`, and names `runs`, each of which overrides fields again:

    extends: base.yaml
    seeds: [42]
    train: {optimizer: sgd, lr: 1.0e-3}
    runs:
      bs4:  {train: {batch_size: 4}}
      bs24: {train: {batch_size: 24, weight_decay: 5.0e-4}}

Layers apply in order: dataclass defaults < extended files < experiment file < run < `--set`.
Every layer is typed and checked where it is written (a bad value that a later layer overrides is
still an error), and every error names the file (or `--set`) and the dotted key, and is raised
before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml

from config.checks import RUN_NAME, check_base_runs, check_run, experiment_value, typed_value
from config.schema import EXPERIMENT_KEYS, Experiment, RunConfig, all_keys, field_types
from config.space import format_value, grid_points, parse_space, point_name, random_points
from utils.errors import ConfigError


# ----------------------------------------------------------------------------------------------
# Reading files: the tree of raw values, each leaf remembering where it was written.

_EXPERIMENT_VALUES = ("experiment", "seeds", "stages", "threads")  # the experiment keys that hold one typed value
_EXPERIMENT_KEYS = set(EXPERIMENT_KEYS)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in a mapping is an error (PyYAML keeps
    the last one silently, so one of two settings would be ignored)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(problem=f"duplicate key {key!r}",
                                                            problem_mark=key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        line = err.object[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not a UTF-8 text file (the first invalid byte is on line {line})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "invalid syntax"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the file holds no settings (it is empty or only comments)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def _unknown_key(source: str, dotted: str, candidates: list[str]) -> ConfigError:
    close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{source}: {dotted}: unknown key{hint}")


def _flatten(tree: dict, source: str, root: str = "", cls=None, prefix: str = "") -> dict:
    """Nested mapping -> {dotted schema key: (value, origin)}; unknown keys are errors.

    `root` is where the mapping sits in its file (e.g. 'runs.bs4.'), so errors quote the key as written.
    """
    cls = cls or RunConfig
    flat = {}
    types = field_types(cls)
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in types or (cls is RunConfig and key in ("name", "seed")):
            candidates = all_keys() + ([] if root else sorted(_EXPERIMENT_KEYS))
            raise _unknown_key(source, root + dotted, [root + k for k in candidates])
        if dataclasses.is_dataclass(types[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {root}{dotted}: expected a mapping of {key} settings, got {value!r}")
            flat.update(_flatten(value, source, root, types[key], f"{dotted}."))
        else:
            origin = f"{source}: {root}{dotted}"
            flat[dotted] = (typed_value(dotted, value, origin), origin)
    return flat


def _load_layers(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, dict, dict]:
    """(flat settings, experiment keys, flat run overrides by run name) of a file and its parents."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: extends itself through {' -> '.join(str(p) for p in chain)}")
    raw = _read_yaml(path)
    source = _display(path)
    flat, meta, runs = {}, {}, {}
    if "extends" in raw:
        parent = raw["extends"]
        if not isinstance(parent, str):
            raise ConfigError(f"{source}: extends: expected a file name, got {parent!r}")
        flat, meta, runs = _load_layers(path.parent / parent, chain + (path,))
    for key in _EXPERIMENT_VALUES:
        if key in raw:
            origin = f"{source}: {key}"
            meta[key] = (experiment_value(key, raw[key], origin), origin)
    if "sweep" in raw:
        meta["sweep"] = (_sweep_points(raw["sweep"], f"{source}: sweep"), f"{source}: sweep")
    settings = {k: v for k, v in raw.items() if k not in _EXPERIMENT_KEYS}
    flat = _merge(flat, _flatten(settings, source))
    if "runs" in raw:
        listed = raw["runs"]
        if not isinstance(listed, dict) or not listed:
            raise ConfigError(f"{source}: runs: expected a mapping of run names to their settings")
        runs = {}
        for name, overrides in listed.items():
            if not isinstance(name, str) or not RUN_NAME.match(name):
                raise ConfigError(f"{source}: runs.{name}: run names use letters, digits, '_', '-' and '.'")
            if overrides is not None and not isinstance(overrides, dict):
                raise ConfigError(f"{source}: runs.{name}: expected a mapping of settings, got {overrides!r}")
            runs[name] = _flatten(overrides or {}, source, root=f"runs.{name}.")
    return flat, meta, runs


def _sweep_points(block, origin: str) -> list[dict]:
    """The points of a `sweep:` block: `grid: {key: [values], ...}` (every combination) or
    `random: {n, seed, space}` (n distinct draws), each value typed by its key's schema."""
    if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in ("grid", "random"):
        raise ConfigError(f"{origin}: expected `grid: {{key: [values], ...}}` or `random: {{n: N, seed: S, space: "
                          f"{{key: ..., ...}}}}`, got {block!r}")
    kind, body = next(iter(block.items()))
    if kind == "grid":
        axes = parse_space(body, f"{origin}.grid", typed_value, all_keys())
        ranged = [a.key for a in axes if a.kind != "choice"]
        if ranged:
            raise ConfigError(f"{origin}.grid.{ranged[0]}: a grid takes lists of values (draw from ranges with "
                              "`random:`, or search them with `search:`)")
        return grid_points(axes)
    if not isinstance(body, dict) or set(body) - {"n", "seed", "space"} or not {"n", "space"} <= set(body):
        raise ConfigError(f"{origin}.random: expected {{n: N, seed: S, space: {{key: ..., ...}}}} (seed optional), "
                          f"got {body!r}")
    n, seed = body["n"], body.get("seed", 0)
    for key, value in (("n", n), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "n" else 0):
            raise ConfigError(f"{origin}.random.{key}: expected an integer >= {1 if key == 'n' else 0}, got {value!r}")
    axes = parse_space(body["space"], f"{origin}.random.space", typed_value, all_keys())
    return random_points(axes, n, seed, f"{origin}.random")


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _build(cls, flat: dict, prefix: str = ""):
    """A schema object from typed flat values (defaults where no layer set a key)."""
    types = field_types(cls)
    kwargs = {}
    for name in (f.name for f in dataclasses.fields(cls)):
        dotted = prefix + name
        if dataclasses.is_dataclass(types[name]):
            kwargs[name] = _build(types[name], flat, dotted + ".")
        elif dotted in flat:
            kwargs[name] = flat[dotted][0]
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------
# Command-line overrides, and the runs of an experiment.

def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=0.01' -> ('train.lr', 0.01); the value is read as YAML, then typed by the schema."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set train.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _apply_overrides(flat: dict, meta: dict, overrides: list[str]) -> None:
    keys = all_keys()
    for text in overrides:
        key, value = parse_override(text)
        origin = f"--set {key}"
        if key in _EXPERIMENT_VALUES:
            meta[key] = (experiment_value(key, value, origin), origin)
        elif key.startswith("model.config."):
            flat.setdefault("model.config", ({}, origin))
            merged = dict(flat["model.config"][0] or {})
            merged[key[len("model.config."):]] = value
            flat["model.config"] = (merged, origin)
        elif key not in keys:
            raise _unknown_key("--set", key, keys + list(_EXPERIMENT_VALUES))
        else:
            flat[key] = (typed_value(key, value, origin), origin)


def _merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, (value, origin) in top.items():
        if key == "model.config" and key in merged and isinstance(value, dict) and isinstance(merged[key][0], dict):
            value = {**merged[key][0], **value}
        merged[key] = (value, origin)
    return merged


def load_experiment(path: str | Path, overrides: list[str] = (), runs: list[str] | None = None,
                    library_checks: bool = True) -> Experiment:
    """Read, merge, type and check an experiment file; `runs` keeps only the named runs (or, with a
    sweep, every run made from a named one). `library_checks`: whether what only a library knows is checked too, a
    scratch model's config (transformers) and train.optimizer_args (the optimizer's library): seconds of imports,
    which `run.py --list` skips."""
    path = Path(path)
    flat, meta, run_layers = _load_layers(path)
    _apply_overrides(cli := {}, meta, list(overrides))
    seeds = meta["seeds"][0] if "seeds" in meta else [42]
    if "experiment" in meta:
        name = meta["experiment"][0]
    else:
        name = experiment_value("experiment", path.stem, f"{_display(path)}: experiment (the file name)")
    layers, swept, made_from = _expand_sweep(run_layers or {"default": {}}, meta.get("sweep"))
    configs, wheres = [], {}
    for run_name, layer in layers.items():
        merged = _merge(_merge(flat, layer), cli)
        wheres[run_name] = merged["model.base_run"][1] if "model.base_run" in merged else "model.base_run"
        run = _build(RunConfig, merged)
        run = dataclasses.replace(run, name=run_name, seed=seeds[0])
        check_run(run, merged, library_checks)
        if run.search.n_trials and len(seeds) > 1:
            raise ConfigError(f"{meta['seeds'][1]}: a search trains each trial at one seed; list one seed and vary "
                              f"search.seed to repeat the search (run {run_name} searches)")
        configs.append(run)
    check_base_runs(configs, wheres)
    stages = meta["stages"][0] if "stages" in meta else []
    threads = meta["threads"][0] if "threads" in meta else "auto"
    experiment = Experiment(name=name, source=path, seeds=seeds, runs=configs, stages=stages, threads=threads,
                            swept=swept)
    return _select(experiment, runs, made_from) if runs else experiment


def _expand_sweep(run_layers: dict, sweep: tuple | None) -> tuple[dict, dict, dict]:
    """Run layers crossed with the sweep's points (run < point), named '<run>_<values>' ('<values>' alone
    for a file without `runs:`); each made run's swept values, and the file's run it was made from."""
    if sweep is None:
        return run_layers, {}, {name: name for name in run_layers}
    points, origin = sweep
    layers, swept, made_from = {}, {}, {}
    for run_name, layer in run_layers.items():
        for point in points:
            made = point_name(point) if run_name == "default" and len(run_layers) == 1 else f"{run_name}_{point_name(point)}"
            if made in layers:
                raise ConfigError(f"{origin}: two points make the same run name {made!r}; make their values differ more")
            values = {key: list(v) if isinstance(v, tuple) else v for key, v in point.items()}
            layers[made] = {**layer, **{key: (v, f"{origin}: {key}={format_value(v)}") for key, v in values.items()}}
            swept[made], made_from[made] = values, run_name
    return layers, swept, made_from


def _select(experiment: Experiment, names: list[str], made_from: dict[str, str]) -> Experiment:
    """The runs named by --runs: a run, or a run of the file that a sweep expanded (all its points). In an
    experiment that searches, other names may be trials: they are kept in `requested` until the trials are
    known (models.runs.with_trials)."""
    unknown = [n for n in names if n not in made_from and n not in made_from.values()]
    if unknown and not experiment.studies():
        known = [run.name for run in experiment.runs]
        listed = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        raise ConfigError(f"{_display(experiment.source)}: runs: no run named {unknown[0]!r} (runs: {listed}; "
                          "`run.py --config FILE --list` lists them)")
    keep = [run for run in experiment.runs if run.name in names or made_from[run.name] in names]
    return dataclasses.replace(experiment, runs=keep, requested=unknown,
                               swept={k: v for k, v in experiment.swept.items() if k in {r.name for r in keep}})


def search_axes(run: RunConfig) -> list:
    """The axes (config.space.Axis) of run.search.space, typed by the schema."""
    return parse_space(run.search.space, f"run {run.name}: search.space", typed_value,
                       [key for key in all_keys() if not key.startswith("search.")])


def with_values(run: RunConfig, values: dict, name: str, origin: str) -> RunConfig:
    """`run` with dotted keys set to `values` (typed and checked, errors naming `origin`), renamed `name`."""
    flat = _flatten({k: v for k, v in run.to_dict().items() if k not in ("name", "seed")}, "the run's config")
    flat.update({key: (typed_value(key, list(v) if isinstance(v, tuple) else v, f"{origin}: {key}"), f"{origin}: {key}")
                 for key, v in values.items()})
    made = dataclasses.replace(_build(RunConfig, flat), name=name, seed=run.seed)
    check_run(made, flat)
    return made


def run_config_from_dict(data: dict) -> RunConfig:
    """Rebuild a RunConfig from `RunConfig.to_dict()` (as stored in checkpoints)."""
    flat = _flatten({k: v for k, v in data.items() if k not in ("name", "seed")}, "checkpoint config")
    run = _build(RunConfig, flat)
    return dataclasses.replace(run, name=data.get("name", run.name), seed=data.get("seed", run.seed))
