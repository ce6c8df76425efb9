"""One process per experiment folder (or several search workers).

Two processes writing the same run folders would interleave checkpoints and results. The lock is an
OS file lock (filelock: flock on Unix), which the kernel releases when its holder dies, however it
dies; a small JSON file beside it names the holder (pid, host, command, start) for the message a second
process prints, and is removed on a clean exit. Finding that file while the lock is free means its
writer died without cleaning up: the lock is taken over with a warning.

The train and search stages share the lock instead (flock's shared mode): each process trains its own runs
(--runs) or trials in their own folders, a run folder being trained by one process at a time (`run_lock`),
and the files they all update (experiment.json, search.json) are written under `manifest_lock`. Each shared
holder names itself in a note of its own (.lock.holder.<host>.<pid>.json), so a process refused the lock
is told who holds it, whichever stage that is. Where flock is missing (Windows), the shared lock is the
exclusive one: one such process per folder there.
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
    stage = f"the {holder['stage']} stage, " if holder.get("stage") else ""
    return (f"pid {holder.get('pid')} on host {holder.get('host')} ({stage}started {started}: "
            f"{holder.get('command', '?')})")


def _note(stage: str) -> dict:
    """What a holder's note says: who it is, what it runs (the command names the config), since when."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv),
            "stage": stage}


def _shared_notes(folder: Path) -> list[Path]:
    return sorted(folder.glob(".lock.holder.*.json"))


def _in_use(folder: Path, notes: list[Path]) -> OutputError:
    """The error of a process refused the lock: who holds it, as the holders' notes say (a shared holder's note
    that outlived it, killed, is left out)."""
    holders = [h for h in map(_holder, notes) if h and _may_be_alive(h)]
    who = " and ".join(map(_describe, holders)) or "another process"
    return OutputError(f"{folder} is in use by {who}; wait for it to finish or stop it")


def _may_be_alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: not ours to tell
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):  # alive but another user's, say
        return True
    return True


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
def experiment_lock(folder: str | Path, shared: bool = False, stage: str = ""):
    """Hold the lock of an experiment folder for the block, for `stage`; OutputError (exit 2) naming the holder if
    another process has it. `shared`: with other shared holders (train stages, search workers) but no exclusive
    one."""
    folder = make_dir(folder)
    if shared and fcntl is not None:
        with _shared_lock(folder, stage):
            yield
        return
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    holder_path = folder / HOLDER_FILE
    try:
        lock.acquire()
    except Timeout:
        raise _in_use(folder, [holder_path, *_shared_notes(folder)]) from None
    except OSError as err:
        raise output_error(err, folder / LOCK_FILE) or err from None
    try:
        _take_over(holder_path)
        for note in _shared_notes(folder):  # left by shared holders that were killed
            note.unlink(missing_ok=True)
        write_json(holder_path, _note(stage))
        yield
    finally:
        holder_path.unlink(missing_ok=True)
        lock.release()


@contextmanager
def _shared_lock(folder: Path, stage: str):
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise output_error(err, folder / LOCK_FILE) or err from None
    note = folder / f".lock.holder.{socket.gethostname()}.{os.getpid()}.json"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(folder, [folder / HOLDER_FILE]) from None
        _take_over(folder / HOLDER_FILE)  # no exclusive holder can be alive while a shared one holds the lock
        write_json(note, _note(stage))
        yield
    finally:
        note.unlink(missing_ok=True)
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
