"""The configuration reference, docs/config.md, rendered from the schema so that it cannot drift from it.

    python -m config.docs > docs/config.md
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import yaml

from config.schema import EXPERIMENT_KEYS, RunConfig, field_types

REGENERATE = "python -m config.docs > docs/config.md"

_INTRO = f"""# Configuration reference

<!-- Generated from config/schema.py by `{REGENERATE}`; do not edit by hand. -->

An experiment file (YAML) may `extends:` another file (usually `config/base.yaml`), overrides any key below,
lists `seeds`, and names `runs`, each of which overrides keys again. Layers apply in order: defaults < extended
files < experiment file < run < `--set KEY=VALUE`. Every layer is typed and checked where it is written; an error
is one line naming the file (or `--set`) and the dotted key, and the command exits with status 2 before anything
is written.

The **result** column says whether a key can change a result: `yes`; `no` (how work is logged or compiled: no
result's fingerprint holds it, so changing it redoes nothing); `yes, when set` (a key added after results existed:
at its default, older results stay current).
"""


def _yaml(value) -> str:
    """A value as it is written in an experiment file."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _type_name(kind) -> str:
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(_yaml(choice) for choice in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return f"list of ({_type_name(item)})" if typing.get_origin(item) is Literal else f"list of {_type_name(item)}"
    return {bool: "true/false", int: "integer", float: "number", str: "string", dict: "mapping"}[kind]


def _bounds(metadata) -> str:
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    return ", ".join(f"{words[key]} {metadata[key]}" for key in words if metadata.get(key) is not None)


def _result(metadata) -> str:
    if not metadata.get("result", True):
        return "no"
    return "yes, when set" if metadata.get("added") else "yes"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _section(cls, prefix: str) -> list[str]:
    """The markdown of one section's table, then of its nested sections."""
    types = field_types(cls)
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(types[f.name]):
            nested.append((types[f.name], f"{prefix}{f.name}."))
        elif prefix or f.name not in ("name", "seed"):  # a run's name and seed come from `runs:` and `seeds:`
            rows.append(f"| `{prefix}{f.name}` | {_cell(_type_name(types[f.name]))} | `{_cell(_yaml(_default(f)))}` "
                        f"| {_bounds(f.metadata)} | {_result(f.metadata)} | {_cell(f.metadata.get('doc', ''))} |")
    lines = []
    if rows:
        lines += ["", f"## `{prefix.rstrip('.')}`" if prefix else "## Run", "",
                  "| key | type | default | bounds | result | meaning |", "|---|---|---|---|---|---|", *rows]
    for kind, deeper in nested:
        lines += _section(kind, deeper)
    return lines


def config_reference() -> str:
    """docs/config.md: every key of the schema, a table per section, after the experiment-level keys."""
    lines = [_INTRO, "## Experiment", "", "| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | {_cell(default)} | {_cell(meaning)} |" for key, (default, meaning) in EXPERIMENT_KEYS.items()]
    lines += _section(RunConfig, "")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
