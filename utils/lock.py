"""One process per experiment folder (or several search workers).

Two processes writing the same run folders would interleave checkpoints and results. The lock is an
OS file lock (filelock: flock on Unix), which the kernel releases when its holder dies, however it
dies; a small JSON file beside it names the holder (pid, host, command, start) for the message a second
process prints, and is removed on a clean exit. Finding that file while the lock is free means its
writer died without cleaning up: the lock is taken over with a warning.

The train and search stages share the lock instead (flock's shared mode): each process trains its own runs
(--runs) or trials in their own folders, a run folder being trained by one process at a time (`run_lock`),
and the files they all update (experiment.json, search.json) are written under `manifest_lock`. Where flock
is missing (Windows), the shared lock is the exclusive one: one such process per folder there.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from utils.errors import CorruptFileError, OutputError
from utils.io import make_dir, output_error, read_json, write_json

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder.json"


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} (started {started}: {holder.get('command', '?')})"


def _holder(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, CorruptFileError):  # vanished or half-written: nothing to report
        return None


def _take_over(holder_path: Path) -> None:
    """Called with the lock held: a holder note found then was left by a process that died holding it."""
    stale = _holder(holder_path)
    if stale:
        print(f"warning: took over the lock of {holder_path.parent} left by {_describe(stale)}, which is no longer "
              "running", file=sys.stderr)
        holder_path.unlink(missing_ok=True)


try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

MANIFEST_LOCK = ".manifest.lock"


@contextmanager
def experiment_lock(folder: str | Path, shared: bool = False):
    """Hold the lock of an experiment folder for the block; OutputError (exit 2) if another process has it.
    `shared`: with other shared holders (search workers) but no exclusive one."""
    folder = make_dir(folder)
    if shared and fcntl is not None:
        with _shared_lock(folder):
            yield
        return
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    holder_path = folder / HOLDER_FILE
    try:
        lock.acquire()
    except Timeout:
        holder = _holder(holder_path)
        who = _describe(holder) if holder else "another process (search workers share it)"
        raise OutputError(f"{folder} is in use by {who}; wait for it to finish or stop it") from None
    except OSError as err:
        raise output_error(err, folder / LOCK_FILE) or err from None
    try:
        _take_over(holder_path)
        write_json(holder_path, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                 "command": " ".join(sys.argv)})
        yield
    finally:
        holder_path.unlink(missing_ok=True)
        lock.release()


@contextmanager
def _shared_lock(folder: Path):
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise output_error(err, folder / LOCK_FILE) or err from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(folder / HOLDER_FILE)
            who = _describe(holder) if holder else "another process"
            raise OutputError(f"{folder} is in use by {who}; wait for it to finish or stop it") from None
        _take_over(folder / HOLDER_FILE)  # no exclusive holder can be alive while a shared one holds the lock
        yield
    finally:
        os.close(fd)  # releases the flock


@contextmanager
def run_lock(folder: str | Path):
    """Yield whether this process may train the run folder `folder`: False while another process holds it (the
    train stage holds the experiment's lock shared, so processes given other --runs train side by side)."""
    folder = Path(folder)
    lock = FileLock(str(make_dir(folder.parent) / f".{folder.name}.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    except OSError as err:
        raise output_error(err, folder.parent) or err from None
    try:
        yield True
    finally:
        lock.release()


@contextmanager
def manifest_lock(folder: str | Path):
    """Serialize the read-modify-write of the experiment's shared files among the processes holding its lock."""
    with FileLock(str(make_dir(folder) / MANIFEST_LOCK), timeout=120):
        yield
