"""One process per experiment folder.

Two processes writing the same run folders would interleave checkpoints and results. The lock is an
OS file lock (filelock: flock on Unix), which the kernel releases when its holder dies, however it
dies; a small JSON file beside it names the holder (pid, host, command, start) for the message a second
process prints, and is removed on a clean exit. Finding that file while the lock is free means its
writer died without cleaning up: the lock is taken over with a warning.
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


@contextmanager
def experiment_lock(folder: str | Path):
    """Hold the lock of an experiment folder for the block; OutputError (exit 2) if another process has it."""
    folder = make_dir(folder)
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    holder_path = folder / HOLDER_FILE
    try:
        lock.acquire()
    except Timeout:
        holder = _holder(holder_path)
        who = _describe(holder) if holder else "another process"
        raise OutputError(f"{folder} is in use by {who}; wait for it to finish or stop it") from None
    except OSError as err:
        raise output_error(err, folder / LOCK_FILE) or err from None
    try:
        stale = _holder(holder_path)
        if stale:
            print(f"warning: took over the lock of {folder} left by {_describe(stale)}, which is no longer running",
                  file=sys.stderr)
        write_json(holder_path, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                 "command": " ".join(sys.argv)})
        yield
    finally:
        holder_path.unlink(missing_ok=True)
        lock.release()
