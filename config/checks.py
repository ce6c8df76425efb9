"""Checks of configuration values: each value typed and within its key's bounds where it is written, the
experiment-level values, the checks across keys of a whole run (and across the runs of an experiment), and the
shapes of models trained from scratch. Every error is a ConfigError naming where the value was written."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from pathlib import Path
from typing import Literal

from config.schema import ModelConfig, RunConfig, all_keys, field_types
from config.space import grid_size, parse_space
from config.optimizers import check_name, check_optimizer
from utils.errors import ConfigError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # run and experiment names


# ----------------------------------------------------------------------------------------------
# Typed values.

def _coerce(value, expected, origin: str):
    def fail(what: str):
        return ConfigError(f"{origin}: expected {what}, got {value!r}")

    if typing.get_origin(expected) is Literal:
        choices = typing.get_args(expected)
        if value is None and "" in choices:
            return ""
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{origin}: must be one of {', '.join(repr(c) for c in choices)}, got {value!r}{hint}")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise fail("a number")
        try:
            number = float(value)  # also strings: YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            raise fail("a number") from None
        except OverflowError:  # an integer with hundreds of digits
            raise fail("a finite number") from None
        if not math.isfinite(number):  # .inf, .nan, or strings such as "inf" that float() reads
            raise fail("a finite number")
        return number
    if expected is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if expected is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise fail("a mapping")
        return dict(value)
    if typing.get_origin(expected) is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            value = [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value
        if not isinstance(value, list) or not value:
            what = "value" if typing.get_origin(item_type) is Literal else item_type.__name__
            raise fail(f"a non-empty list of {what}s")
        return [_coerce(v, item_type, origin) for v in value]
    raise TypeError(f"unsupported schema type {expected}")


def _check_bounds(value, f: dataclasses.Field, origin: str):
    meta = f.metadata
    for bound, ok, words in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        b = meta.get(bound)
        if b is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            if not ok(v, b):
                raise ConfigError(f"{origin}: must be {words} {b}, got {v!r}")


def typed_value(dotted: str, value, origin: str):
    """The value written for schema key `dotted` in one layer, typed and within the key's bounds."""
    cls = RunConfig
    *parents, name = dotted.split(".")
    for parent in parents:
        cls = field_types(cls)[parent]
    value = _coerce(value, field_types(cls)[name], origin)
    _check_bounds(value, {f.name: f for f in dataclasses.fields(cls)}[name], origin)
    if dotted == "train.optimizer":  # a name, or torch.<Class>: more than a Literal can say
        try:
            check_name(value)
        except ValueError as err:
            raise ConfigError(f"{origin}: {err}") from None
    return value


def experiment_value(key: str, value, origin: str):
    """`seeds`, `stages`, `threads` or `experiment` as written in one layer, typed and checked (stage names are
    checked against the registry by the pipeline, which config may not import)."""
    if key == "threads":
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{origin}: expected auto or a number of threads (1 or more), got {value!r}")
        return value
    if key == "stages":
        stages = _coerce(value, list[str], origin)
        if len(set(stages)) != len(stages):
            raise ConfigError(f"{origin}: each stage may be listed once, got {stages}")
        return stages
    if key == "seeds":
        seeds = _coerce(value, list[int], origin)
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ConfigError(f"{origin}: seeds must be distinct non-negative integers, got {seeds}")
        return seeds
    name = _coerce(value, str, origin)
    if not RUN_NAME.match(name):
        raise ConfigError(f"{origin}: experiment names use letters, digits, '_', '-' and '.'")
    return name


# ----------------------------------------------------------------------------------------------
# Shapes of models trained from scratch: GPT-2 by default, any transformers model_type named in model.config.

# Shapes of the published GPT-2 family, for random-weight models of the same size.
ARCH_PRESETS = {
    "distilgpt2": {"n_layer": 6, "n_embd": 768, "n_head": 12, "n_positions": 1024},
    "gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024},
}
FROM_TOKENIZER = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")


def scratch_model_config(cfg: ModelConfig, vocab_size: int, eos_token_id: int):
    """The transformers config of an init: scratch model: model.config's model_type (default gpt2) with its
    library defaults, then model.arch's GPT-2 preset, then model.config's fields; the tokens from the tokenizer."""
    from transformers import AutoConfig

    fields = {**ARCH_PRESETS.get(cfg.arch, {}), **cfg.config}
    model_type = fields.pop("model_type", "gpt2")
    return AutoConfig.for_model(model_type, **fields, vocab_size=vocab_size, bos_token_id=eos_token_id,
                                eos_token_id=eos_token_id)


def check_scratch_config(cfg: ModelConfig, max_length: int) -> None:
    """Raise ValueError (one sentence) if cfg.config cannot build its model for texts of max_length tokens."""
    from transformers import CONFIG_MAPPING

    model_type = cfg.config.get("model_type", "gpt2")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"model_type {model_type!r} is not a transformers model type")
    if cfg.arch and model_type != "gpt2":
        raise ValueError(f"model.arch {cfg.arch!r} is a GPT-2 preset; it does not fit model_type {model_type!r}")
    config_class = CONFIG_MAPPING[model_type]
    allowed = config_class().to_dict()
    for key, value in cfg.config.items():
        if key not in allowed or key in FROM_TOKENIZER:
            why = "is set from the tokenizer" if key in allowed else f"is not a {config_class.__name__} field"
            raise ValueError(f"{key!r} {why}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
    shape = {**allowed, **ARCH_PRESETS.get(cfg.arch, {}), **cfg.config}
    # GPT-2 names the common fields n_layer, n_embd, n_head, n_positions (its attribute_map)
    layers, width, heads, positions = (config_class.attribute_map.get(key, key) for key in (
        "num_hidden_layers", "hidden_size", "num_attention_heads", "max_position_embeddings"))
    for key in (layers, width, heads, positions):
        if key in shape and (not isinstance(shape[key], int) or isinstance(shape[key], bool) or shape[key] < 1):
            raise ValueError(f"{key} must be a positive integer, got {shape[key]!r}")
    if shape[width] % shape[heads]:
        raise ValueError(f"{width} ({shape[width]}) must be divisible by {heads} ({shape[heads]})")
    kv_heads = shape.get("num_key_value_heads")  # grouped-query attention: query heads share key/value heads
    if kv_heads is not None and (not isinstance(kv_heads, int) or kv_heads < 1 or shape[heads] % kv_heads):
        raise ValueError(f"num_key_value_heads ({kv_heads}) must divide {heads} ({shape[heads]}); the "
                         f"{config_class.__name__} default is {allowed['num_key_value_heads']}")
    if shape.get(positions, max_length) < max_length:
        raise ValueError(f"{positions} ({shape[positions]}) is shorter than data.max_length ({max_length})")


# ----------------------------------------------------------------------------------------------
# Checks across keys.

def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~"))


def check_run(run: RunConfig, flat: dict, library_checks: bool = True) -> None:
    """ConfigError on the first setting of `run` that cannot work (`library_checks`: config.loading.load_experiment)."""
    def where(key: str) -> str:
        return flat[key][1] if key in flat else f"(default) {key}"

    check_optimizer(run.train, where, library_checks)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", run.device):
        raise ConfigError(f"{where('device')}: must be auto, cpu, cuda or cuda:N, got {run.device!r}")
    if run.data.source == "local":
        if not run.data.path:
            raise ConfigError(f"{where('data.source')}: source 'local' needs data.path (a folder of text or parquet files)")
        if not Path(run.data.path).expanduser().is_dir():
            raise ConfigError(f"{where('data.path')}: folder not found: {run.data.path}")
    for key in ("model.name", "model.tokenizer"):
        value = getattr(run.model, key.split(".")[1])
        if value and _looks_like_path(value) and not Path(value).expanduser().exists():
            raise ConfigError(f"{where(key)}: folder not found: {value}")
    if run.model.arch and run.model.init != "scratch":
        raise ConfigError(f"{where('model.arch')}: a shape preset needs model.init: scratch")
    if run.model.revision and (run.model.init == "scratch" or Path(run.model.name).expanduser().is_dir()):
        raise ConfigError(f"{where('model.revision')}: a revision selects a version of a hub model; model.name "
                          f"{run.model.name!r} is {'trained from scratch' if run.model.init == 'scratch' else 'a local folder'}")
    if run.model.init == "scratch" and library_checks:
        try:
            check_scratch_config(run.model, run.data.max_length)
        except ValueError as err:
            raise ConfigError(f"{where('model.config')}: {err}") from None
    if run.geometry.bootstrap == 1:
        raise ConfigError(f"{where('geometry.bootstrap')}: one resample has no spread; use 0 (no interval) or at least 2")
    if run.landscape.directions == "pca" and not run.train.trajectory.every:
        raise ConfigError(f"{where('landscape.directions')}: pca directions come from the training path; set "
                          "train.trajectory.every (e.g. 10) to save it")
    if len(set(run.train.track.metrics)) != len(run.train.track.metrics):
        raise ConfigError(f"{where('train.track.metrics')}: each metric may be listed once, got {run.train.track.metrics}")
    if run.model.adapter.type != "none" and run.train.rotation != "none":
        raise ConfigError(f"{where('train.rotation')}: a rotation of the weights and a LoRA adapter do not combine; "
                          "rotate full fine-tuning runs only")
    if run.model.adapter.type != "none" and run.landscape.space == "merged" and run.landscape.directions == "pca":
        raise ConfigError(f"{where('landscape.space')}: pca directions come from the adapter's trajectory; use "
                          "landscape.space: adapter with them")
    if len(run.train.betas) != 2:
        raise ConfigError(f"{where('train.betas')}: expected two numbers [beta1, beta2], got {run.train.betas}")
    if run.landscape.alpha_min >= run.landscape.alpha_max:
        raise ConfigError(f"{where('landscape.alpha_max')}: must be greater than landscape.alpha_min")
    if run.search.n_trials:
        if not run.search.space:
            raise ConfigError(f"{where('search.n_trials')}: a search needs search.space, e.g. "
                              "{train.lr: {loguniform: [1.0e-4, 1.0e-1]}}")
        axes = parse_space(run.search.space, where("search.space"), typed_value,
                           [key for key in all_keys() if not key.startswith("search.")])
        points = grid_size(axes, run.search.grid_points)
        if run.search.sampler == "grid" and run.search.n_trials > points:
            raise ConfigError(f"{where('search.n_trials')}: the grid has {points} points, fewer than "
                              f"{run.search.n_trials} trials; lower n_trials or raise search.grid_points")
    if run.model.tokenizer in ("bytes", "bpe") and run.model.init == "pretrained":
        raise ConfigError(f"{where('model.tokenizer')}: a new tokenizer needs a model trained from scratch (model.init: scratch)")


def check_base_runs(runs: list[RunConfig], wheres: dict[str, str]) -> None:
    """model.base_run names another run of the experiment, not a search, with no cycle, whose model settings
    (all but the adapter) are this run's: the architecture and tokenizer that the base's weights fit."""
    by_name = {run.name: run for run in runs}
    for run in runs:
        base, where = run.model.base_run, wheres[run.name]
        if not base:
            continue
        if base not in by_name:
            raise ConfigError(f"{where}: no run named {base!r} in this experiment (its runs: {', '.join(by_name)})")
        if by_name[base].search.n_trials:
            raise ConfigError(f"{where}: run {base!r} is a search, whose trials are not known in advance; name a run")
        chain = [run.name]
        while base:
            if base in chain:
                raise ConfigError(f"{where}: the runs start from each other in a circle: {' -> '.join(chain + [base])}")
            chain.append(base)
            base = by_name[base].model.base_run
        mine, theirs = dataclasses.asdict(run.model), dataclasses.asdict(by_name[run.model.base_run].model)
        for key in mine:
            if key not in ("adapter", "base_run") and mine[key] != theirs[key]:
                raise ConfigError(f"{where}: run {run.name}'s model.{key} is {mine[key]!r} but its base run "
                                  f"{run.model.base_run}'s is {theirs[key]!r}; a run keeps its base's model")
