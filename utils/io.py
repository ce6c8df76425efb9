"""Atomic file writes and provenance. A killed process never leaves a truncated file behind:
everything is written to a temporary file in the target folder and moved into place with os.replace."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


@contextmanager
def _temporary_beside(path: Path, suffix: str = ""):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _finite_or_none(value):
    """JSON has no NaN/Infinity: write them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: str | Path, data: dict) -> None:
    text = json.dumps(_finite_or_none(data), indent=2, default=_json_default) + "\n"
    write_text(path, text)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_text(path: str | Path, text: str) -> None:
    with _temporary_beside(Path(path)) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with _temporary_beside(Path(path)) as tmp:
        tmp.write_bytes(data)


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def save_torch(path: str | Path, obj) -> None:
    with _temporary_beside(Path(path)) as tmp:
        torch.save(obj, tmp)


def save_npz(path: str | Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def save_figure(path: str | Path, figure, dpi: int = 150) -> None:
    """A matplotlib figure, in the format its suffix names (png, pdf, ...)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=Path(path).suffix[1:], dpi=dpi)
    write_bytes(path, buffer.getvalue())


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder that replaces `path` (if any) once the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def fingerprint(settings) -> str:
    """A short stable hash of JSON-able settings: a stage redoes its work when this changes."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> str:
    """The commit of this checkout (with '+dirty' for uncommitted changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "git_commit": git_commit()}
