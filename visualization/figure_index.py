"""figures/index.json: each figure the landscape stage drew, with the fingerprint of the file it was drawn from, so a
figure counts as current only while that file is unchanged (the report reads it to list stale figures)."""

from __future__ import annotations

from pathlib import Path

from utils.errors import CorruptFileError
from utils.io import read_json, sha256_of, write_json

FIGURE_INDEX = "index.json"


def _figure_index(figures: Path) -> dict:
    """{stem: fingerprint of its data}; empty when missing or corrupt (every figure is then redrawn)."""
    try:
        return read_json(figures / FIGURE_INDEX)
    except (FileNotFoundError, CorruptFileError):
        return {}


def record_figure(figures: Path, stem: str, source: Path) -> None:
    write_json(figures / FIGURE_INDEX, {**_figure_index(figures), stem: sha256_of(source)})


def drawn_from(figures: Path, stem: str, source: Path) -> bool:
    """Whether figures/<stem>.png and .pdf exist and were drawn from what `source` holds now."""
    return all((figures / f"{stem}.{ext}").is_file() for ext in ("png", "pdf")) and \
        _figure_index(figures).get(stem) == sha256_of(source)
