"""Atomic, verified file writes and reads. A killed process never leaves a truncated file behind:
everything is written to a temporary file in the target folder and moved into place with os.replace.
Every .pt and .npz file, and every folder written with atomic_dir, gets a `<name>.sha256` beside it,
checked before it is used, so a file damaged later (a full disk, a copy cut short, a bit flip) is
caught instead of loaded.

Temporary names start with '.' and end in '.tmp' (files) or '.tmpdir' (folders); a process killed
mid-write leaves them behind, and `remove_interrupted_writes` clears them when a stage starts again.
Files and folders get the permissions the user's umask allows, like any file the user creates.
In a torchrun job only rank 0 writes (utils.distributed): elsewhere every write here goes nowhere.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import pickle
import secrets
import shutil
import subprocess
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from utils.distributed import writes
from utils.errors import CorruptFileError, OutputError

CHECKSUM_SUFFIX = ".sha256"
_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.ENOTDIR: "a part of the path is a file, not a folder",
                errno.EEXIST: "a file is in the way of a folder"}


def output_error(err: BaseException, path: Path, action: str = "write") -> OutputError | None:
    """The one-sentence error for a problem a user can fix (full disk, read-only folder, ...), or None.
    The OSError may sit in the exception's chain: torch.save, for one, turns it into a RuntimeError."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _DISK_ERRORS:
            return OutputError(f"cannot {action} {path}: {_DISK_ERRORS[err.errno]} ({os.strerror(err.errno)})")
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def _disk_errors_named(path: Path):
    """Turn a full disk, a read-only folder, ... met while writing `path` into one OutputError."""
    try:
        yield
    except Exception as err:
        problem = output_error(err, path)
        if problem is None:
            raise
        raise problem from None


def make_dir(path: str | Path) -> Path:
    """mkdir -p, with one sentence when it cannot be done (a file in the way, no permission, ...)."""
    path = Path(path)
    if not writes():
        return path
    with _disk_errors_named(path):
        path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        raise OutputError(f"cannot write {path}: it is a file, not a folder")
    return path


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}"


@contextmanager
def _temporary_beside(path: Path):
    """A new temporary file beside `path` (mode 0666 less the umask) that replaces `path` on success."""
    path = Path(path)
    if not writes():
        yield Path(os.devnull)
        return
    make_dir(path.parent)
    tmp = _temporary_name(path, ".tmp")
    try:
        with _disk_errors_named(path):
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            yield tmp
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_interrupted_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files and folders that killed writes left under `folder`; return them.
    Only safe while no other process writes there (the experiment lock guarantees it)."""
    folder = Path(folder)
    if not folder.is_dir() or not writes():
        return []
    removed = []
    for leftover in sorted(folder.rglob(".*.tmp*"), key=lambda p: len(p.parts), reverse=True):
        if leftover.name.endswith(".tmp") and leftover.is_file():
            leftover.unlink()
        elif leftover.name.endswith(".tmpdir") and leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            continue
        removed.append(leftover)
    return removed


def _json_safe(value):
    """JSON has no NaN or Infinity: write them as the strings "nan", "inf", "-inf", which every reader
    can parse and float() reads back, so a diverged value stays distinct from a missing one (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: dict) -> None:
    text = json.dumps(_json_safe(data), indent=2, default=_json_default, allow_nan=False) + "\n"
    write_text(path, text)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_text(path: str | Path, text: str) -> None:
    with _temporary_beside(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")  # report.md holds ε, λ, ±: not the locale's choice


def write_bytes(path: str | Path, data: bytes) -> None:
    with _temporary_beside(Path(path)) as tmp:
        tmp.write_bytes(data)


def read_json(path: str | Path) -> dict:
    """A JSON object written by write_json; CorruptFileError when the file does not parse as one."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(path, f"not valid JSON: {type(err).__name__}") from None
    if not isinstance(data, dict):
        raise CorruptFileError(path, "not a JSON object")
    return data


# A write within the file system's clock tick (up to 2 s on some) of the last one can leave a file's size and mtime
# as they were: only a file older than that when read is known by its stat alone.
SETTLED_NS = 2_000_000_000
_digests: dict[tuple, str] = {}  # (path, inode, size, mtime_ns) -> sha256, of files settled when read


def sha256_of(path: str | Path) -> str:
    """The sha256 of a file; of a folder, the sha256 of its files' relative paths and sha256s. A file is read once
    per process while it is unchanged (_digests): every stage of a command verifies the checkpoints it loads."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = "".join(f"{sha256_of(p)}  {p.relative_to(path).as_posix()}\n" for p in files)
        return hashlib.sha256(listing.encode()).hexdigest()
    before = path.stat()
    key = (str(path.resolve()), before.st_ino, before.st_size, before.st_mtime_ns)
    if key in _digests:
        return _digests[key]
    started = time.time_ns()
    digest = hash_file(path)
    after = path.stat()
    if (after.st_ino, after.st_size, after.st_mtime_ns) == key[1:] and before.st_mtime_ns < started - SETTLED_NS:
        _digests[key] = digest
    return digest


def hash_file(path: Path) -> str:
    """The sha256 of a file's bytes, read now (sha256_of remembers it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _verified_beside(path: Path):
    """Like _temporary_beside, and records the new file's sha256 in `path`.sha256. The old record goes
    first and the new one comes last, so a kill in between leaves a file without a record (checked by
    parsing alone), never an intact file with a record that does not match it."""
    record = path.with_name(path.name + CHECKSUM_SUFFIX)
    with _temporary_beside(path) as tmp:
        yield tmp
        digest = sha256_of(tmp)
        record.unlink(missing_ok=True)
    write_text(record, f"{digest}  {path.name}\n")


def remove(path: str | Path) -> None:
    """Delete a file written here and its sha256 record, if they exist."""
    path = Path(path)
    if not writes():
        return
    path.unlink(missing_ok=True)
    path.with_name(path.name + CHECKSUM_SUFFIX).unlink(missing_ok=True)


def new_memmap(path: str | Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A memory-mapped .npy of `shape` whose blocks are allocated on disk now: a memory map of a sparse file on
    a full disk dies of SIGBUS at the first page it cannot write, so the space is claimed up front, where a
    full disk is one clear error (and no file is left)."""
    path = Path(path)
    if not writes():
        return np.zeros(shape, dtype)
    with _disk_errors_named(path):
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    allocate = getattr(os, "posix_fallocate", None)  # Linux; elsewhere the file stays sparse
    if allocate is not None:
        try:
            with open(path, "r+b") as handle:
                allocate(handle.fileno(), 0, os.path.getsize(path))
        except OSError as err:
            del array
            remove(path)
            raise output_error(err, path) or err from None
    return array


def seal(path: str | Path) -> None:
    """Record the sha256 of a file written in place (a memory map), so `verify` can check it like the others."""
    path = Path(path)
    if writes():
        write_text(path.with_name(path.name + CHECKSUM_SUFFIX), f"{sha256_of(path)}  {path.name}\n")


def recorded_sha256(path: str | Path) -> str:
    """The sha256 recorded when `path` was written (computed for a file written before checksums existed)."""
    path = Path(path)
    record = path.with_name(path.name + CHECKSUM_SUFFIX)
    return record.read_text(errors="replace").split(" ", 1)[0].strip() if record.is_file() else sha256_of(path)


def verify(path: str | Path) -> None:
    """Raise CorruptFileError unless `path` matches the sha256 recorded when it was written.
    A file written before checksums existed has none; its parse is then the only check."""
    path = Path(path)
    record = path.with_name(path.name + CHECKSUM_SUFFIX)
    if not record.is_file():
        return
    expected = record.read_text(errors="replace").split(" ", 1)[0].strip()
    if sha256_of(path) != expected:
        raise CorruptFileError(path, "its sha256 differs from the one recorded when it was written")


def save_torch(path: str | Path, obj) -> None:
    # Through a Python file: torch.save given a path writes from C++ and a full disk then raises a bare
    # RuntimeError instead of OSError(ENOSPC).
    if not writes():  # not even serialized: a checkpoint can be large
        return
    with _verified_beside(Path(path)) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


def load_torch(path: str | Path) -> dict:
    """A file written by save_torch (tensors on the CPU, weights_only), after its checksum."""
    path = Path(path)
    verify(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as err:
        raise CorruptFileError(path, f"it does not load ({type(err).__name__})") from None


def save_npz(path: str | Path, **arrays) -> None:
    if not writes():
        return
    with _verified_beside(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a file written by save_npz, after its checksum."""
    path = Path(path)
    verify(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise CorruptFileError(path, f"it does not load ({type(err).__name__})") from None


def read_own_output(path: str | Path, reader=None, label: str = ""):
    """A stage's own earlier output, or None when it is missing or corrupt. A corrupt one is deleted
    with a warning, so the stage simply computes it again."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return (reader or read_json)(path)
    except CorruptFileError as err:
        print(f"{label + ': ' if label else ''}warning: {err}; making it again")
        remove(path)
        return None


FIGURE_FORMATS = ("png", "pdf")


def save_figure(stem: str | Path, figure, dpi: int = 150) -> None:
    """A matplotlib figure as stem.png and stem.pdf. Its layout is computed once, for the PNG, and kept for the
    PDF: matplotlib would compute it again, about half of what saving a figure costs."""
    if not writes():  # not even rendered
        return
    stem = Path(stem)
    for ext in FIGURE_FORMATS:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=ext, dpi=dpi)
        write_bytes(stem.with_name(f"{stem.name}.{ext}"), buffer.getvalue())
        figure.set_layout_engine("none")  # positions stay where the layout put them


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder that replaces `path` (if any) once the block succeeds; its files'
    checksums go to `path`.sha256, as for a single file (`verify` checks a folder too)."""
    path = Path(path)
    if not writes():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)
        return
    make_dir(path.parent)
    tmp = _temporary_name(path, ".tmpdir")
    record = path.with_name(path.name + CHECKSUM_SUFFIX)
    try:
        with _disk_errors_named(path):
            tmp.mkdir(0o777)
            yield tmp
            digest = sha256_of(tmp)
            record.unlink(missing_ok=True)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        write_text(record, f"{digest}  {path.name}\n")
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
