"""Where a search's study lives and how a worker opens it (optimization.study_storage)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_workers_that_create_the_database_together_all_open_it(tmp_path):
    """Four processes opening one new SQLite study database at the same instant race to create its tables;
    the losers' UNIQUE-constraint failure is retried, so every one opens it (without the retry, about one
    start in three lost a worker here)."""
    opener = ("import sys, time; from types import SimpleNamespace as S; "
              "from pathlib import Path; from optimization.study_storage import open_storage; import optuna.storages; "
              "print('ready', flush=True); go = Path(sys.argv[1])\n"
              "while not go.exists(): time.sleep(0.001)\n"
              "open_storage(S(name='x', search=S(storage='')), Path(sys.argv[2])); print('opened')")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    folders = [tmp_path / "exp0"]  # one new database, four openers at one instant
    for folder in folders:
        folder.mkdir()
    go = tmp_path / "go"
    openers = [subprocess.Popen([sys.executable, "-c", opener, str(go), str(folder)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for folder in folders for _ in range(4)]
    assert [p.stdout.readline() for p in openers] == ["ready\n"] * 4  # every one has imported Optuna: go at once
    go.touch()
    logs = [p.communicate(timeout=900)[0] for p in openers]
    assert [p.returncode for p in openers] == [0] * 4, logs
