"""Faults of the search stage and of run.py around it: a worker killed or interrupted mid-trial, a damaged study
database, bad storage URLs, Ctrl-C while run.py starts, two configs on one experiment folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

import optimization.search_stage as search
import run
from pipeline import run_experiment
from config.loading import load_experiment
from utils.io import read_json
from tests import conftest
from tests.conftest import TINY, exit_status, forked, forked_run_py, still_running
from utils.lock import experiment_lock

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}

# Three epochs, so that a trial stopped in its second has a last.pt to resume from.
SEARCH = "train: {epochs: 3}\n" + conftest.SEARCH
# One epoch where no trial resumes from its last.pt (the grid's is stopped in its first epoch, before one is written).
ONE_EPOCH = "train: {epochs: 1}\n" + conftest.SEARCH
GRID = ONE_EPOCH.replace("{loguniform: [0.01, 1.0]}", "[0.03, 0.3]") + "  sampler: grid\n"


def trials_of(out: Path) -> list[dict]:
    return read_json(out / "exp" / "search.json")["studies"]["default"]["trials"]


def outcome(out: Path) -> list[tuple]:
    """(number, run, state, params, value) of every trial: what an interrupted search must end with, as one that
    never was."""
    return [(t["number"], t["run"], t["state"], t["params"], t["value"]) for t in trials_of(out)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The trials of SEARCH and of GRID, each run without interruption."""
    results = {}
    for name, text in (("search", SEARCH), ("grid", GRID)):
        folder = tmp_path_factory.mktemp(name)
        (folder / "tiny.yaml").write_text(TINY)
        (folder / "exp.yaml").write_text("extends: tiny.yaml\n" + text)
        run_experiment(load_experiment(folder / "exp.yaml"), ["search"], folder / "out")
        results[name] = outcome(folder / "out")
    return results


def interrupt_trial(monkeypatch, run_name: str, epoch: int) -> None:
    """Ctrl-C in trial `run_name` after validating its epoch `epoch` (0-based), before that epoch's last.pt."""
    train = search.train_run

    def interrupted(run, folder, stop_after, **kwargs):
        def stop(at, val_loss):
            decision = stop_after(at, val_loss)
            if run.name == run_name and at == epoch:
                raise KeyboardInterrupt
            return decision

        return train(run, folder, stop_after=stop, **kwargs)

    monkeypatch.setattr(search, "train_run", interrupted)


@pytest.mark.parametrize("storage", ["", "journal:search.journal", "rdb"])
def test_an_interrupted_trial_is_resumed_in_its_folder(write_config, tmp_path, monkeypatch, capsys, storage, reference):
    """Ctrl-C in trial 2 (drawn by TPE) leaves it to the next worker, which resumes it in its folder from its
    last.pt, under its number and with its values: the search ends with the trials, values included, of a search
    never interrupted, on SQLite, an RDB URL and the journal."""
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}" if storage == "rdb" else storage
    path = write_config(SEARCH + f"  storage: '{url}'\n")
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        interrupt_trial(patch, "t002", epoch=1)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(load_experiment(path), ["search"], out)
    assert (out / "exp" / "t002" / "seed-42" / "last.pt").is_file()
    capsys.readouterr()
    run_experiment(load_experiment(path), ["search"], out)
    log = capsys.readouterr().out
    assert "exp/t002/seed-42: trial 2 lost its worker; resuming it" in log
    assert "exp/t002/seed-42: resuming after epoch 1 of 3" in log
    assert outcome(out) == reference["search"]


def test_an_interrupted_grid_search_covers_its_grid(write_config, tmp_path, monkeypatch, reference):
    """A grid search interrupted in trial 1 and rerun tries every point of its grid once, all of them counted."""
    path = write_config(GRID)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        interrupt_trial(patch, "t001", epoch=0)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(load_experiment(path), ["search"], out)
    run_experiment(load_experiment(path), ["search"], out)
    trials = trials_of(out)
    grid = sorted((lr, size) for lr in (0.03, 0.3) for size in (4, 8))
    assert sorted((t["params"]["train.lr"], t["params"]["train.batch_size"]) for t in trials) == grid
    assert all(t["state"] == "complete" and t["counted"] for t in trials)
    assert outcome(out) == reference["grid"]


def test_a_trial_of_a_live_worker_is_left_to_it(write_config, tmp_path, capsys):
    """A running trial whose run lock another worker holds is that worker's: the search trains the others, says
    which trial still runs, and claims it only once its worker is gone."""
    experiment = load_experiment(write_config(ONE_EPOCH.replace("n_trials: 4", "n_trials: 2")))
    template, out = experiment.runs[0], tmp_path / "out"
    folder = out / "exp"
    folder.mkdir(parents=True)
    with ExitStack() as worker:  # another worker of this folder, busy with trial 0
        study = search._open_study(experiment, template, folder)
        assert search._next_trial(study, template, folder, worker).number == 0
        search.run_study(experiment, template, out)
        assert [(t["run"], t["state"]) for t in trials_of(out)] == [(None, "running"), ("t001", "complete")]
        assert "still running in other workers: t000" in capsys.readouterr().out
        assert not (folder / "t000" / "seed-42" / "metrics.json").exists()
    search.run_study(experiment, template, out)  # its worker is gone (its lock free)
    assert [(t["run"], t["state"]) for t in trials_of(out)] == [("t000", "complete"), ("t001", "complete")]
    assert "trial 0 lost its worker; resuming it" in capsys.readouterr().out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_worker_killed_or_interrupted_mid_trial_is_resumed_by_the_rerun(write_config, tmp_path, capsys, sig,
                                                                          reference):
    """kill -9 or Ctrl-C of a worker (run.py's main in a process forked from this one) in trial 1, after its first
    epoch's last.pt: Ctrl-C ends it with one line and exit 130 (test_ctrl_c_while_run_py_loads_its_libraries checks
    that run.py exits with main's code); the rerun (run.py's main in this process) resumes trial 1 in its folder and
    ends with the trials of a search never interrupted."""
    path = write_config(SEARCH)
    out = tmp_path / "out"
    argv = ["--config", str(path), "--stages", "search", "--output", str(out)]
    worker = forked_run_py(argv, tmp_path / "worker.out", tmp_path / "worker.err")
    last = out / "exp" / "t001" / "seed-42" / "last.pt"
    while not last.is_file() and still_running(worker):
        time.sleep(0.01)
    os.kill(worker, sig)
    code, err = exit_status(worker), (tmp_path / "worker.err").read_text()
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    if sig == signal.SIGINT:
        assert err.strip() == "interrupted: rerun the same command to resume", err
    capsys.readouterr()
    assert run.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "exp/t001/seed-42: trial 1 lost its worker; resuming it" in printed
    assert "exp/t001/seed-42: resuming after epoch" in printed
    assert outcome(out) == reference["search"]


def cli(config: Path, out: Path, capsys, *args: str) -> tuple[int, list[str]]:
    """run.py's main on `config`: (exit code, the lines of stderr)."""
    code = run.main(["--config", str(config), "--output", str(out), *args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def two_trials_searched(tmp_path_factory) -> tuple[Path, Path]:
    """(a config of two trials, its output folder) once run.py has searched it: the tests that damage the output
    damage a copy."""
    folder = tmp_path_factory.mktemp("two_trials")
    (folder / "tiny.yaml").write_text(TINY)
    (folder / "exp.yaml").write_text("extends: tiny.yaml\n" + ONE_EPOCH.replace("n_trials: 4", "n_trials: 2"))
    assert run.main(["--config", str(folder / "exp.yaml"), "--output", str(folder / "out"), "--stages", "search"]) == 0
    return folder / "exp.yaml", folder / "out"


@pytest.mark.parametrize("damage", ["header", "page", "truncated"])
def test_a_damaged_study_database_is_one_line_with_the_way_forward(two_trials_searched, tmp_path, capsys, damage):
    """A search.db with overwritten bytes (in its header: it does not open; in a table's page: Optuna's first
    write fails) or cut short: one line naming it and how to start over (exit 2), every time; that way forward
    works and reuses the trained trials."""
    path, out = two_trials_searched[0], tmp_path / "out"
    shutil.copytree(two_trials_searched[1], out)
    database = out / "exp" / "search.db"
    data = bytearray(database.read_bytes())
    if damage == "header":
        data[100:4096] = bytes(3996)
    elif damage == "page":
        data[2 * 4096:3 * 4096] = b"Z" * 4096
    else:
        data = data[:len(data) // 3]
    database.write_bytes(bytes(data))
    for _ in range(2):
        code, lines = cli(path, out, capsys, "--stages", "search")
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: {database} is corrupt (") and "remove it to start the search over" in lines[0]
    database.unlink()
    assert run.main(["--config", str(path), "--output", str(out), "--stages", "search"]) == 0
    assert capsys.readouterr().out.count("already trained with this config; skipping") == 2


@pytest.mark.parametrize("url", ["foo://x", "not a url", "postgresql://lab:secret@127.0.0.1:1/optuna",
                                 "journal:/nonexistent/folder/search.journal"])
def test_a_bad_storage_url_is_a_user_error(write_config, tmp_path, capsys, url):
    """An unknown scheme, no URL at all, a database whose driver is missing, a journal in no folder: exit 2 with
    one line naming the storage, its password hidden."""
    code, lines = cli(write_config(SEARCH + f"  storage: '{url}'\n"), tmp_path / "out", capsys, "--stages", "search")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: search.storage of run default (") and "secret" not in lines[0]


@pytest.mark.parametrize("module", ["pipeline", "torch", "transformers"])
def test_ctrl_c_while_run_py_loads_its_libraries_is_one_line(write_config, tmp_path, module):
    """SIGINT while run.py imports `module` (what takes its first seconds): one line and exit 130, no traceback."""
    starter = ("import builtins, os, runpy, signal, sys\n"
               "load = builtins.__import__\n"
               "def importing(name, *args, **kwargs):\n"
               f"    if name == {module!r}:\n"
               "        os.kill(os.getpid(), signal.SIGINT)\n"
               "    return load(name, *args, **kwargs)\n"
               "builtins.__import__ = importing\n"
               f"sys.argv = ['run.py', '--config', {str(write_config(SEARCH))!r}, '--output', {str(tmp_path / 'out')!r},"
               " '--stages', 'search']\n"
               "runpy.run_path('run.py', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", starter], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=900)
    assert (done.returncode, done.stderr) == (130, "interrupted: rerun the same command to resume\n")
    assert not (tmp_path / "out").exists()


# ---- one experiment folder, one config

def two_configs(tmp_path: Path) -> list[Path]:
    """Two config files of one experiment name (exp), with other learning rates."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    paths = []
    for name, lr in (("a", 0.3), ("b", 0.1)):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "exp.yaml")
        paths[-1].write_text(f"extends: ../tiny.yaml\ntrain: {{epochs: 1, lr: {lr}}}\n")
    return paths


def test_two_configs_run_together_on_one_experiment_folder(tmp_path, capsys):
    """Two configs named alike, trained at once into one --output (run.py's main in a process forked from this one
    and, once that one holds the folder's lock, in this one): one trains, the other stops with one line naming the
    first (exit 2), and experiment.json describes the checkpoints that are there."""
    out = tmp_path / "out"
    commands = [["--config", str(path), "--stages", "train", "--output", str(out)] for path in two_configs(tmp_path)]
    worker = forked_run_py(commands[0], tmp_path / "worker.out", tmp_path / "worker.err")
    while not any((out / "exp").glob(".lock.holder*")) and still_running(worker):
        time.sleep(0.01)
    here = (run.main(commands[1]), capsys.readouterr().err.strip().splitlines())
    ends = [(exit_status(worker), (tmp_path / "worker.err").read_text().strip().splitlines()), here]
    assert sorted(code for code, _ in ends) == [0, 2], ends
    trained = [code for code, _ in ends].index(0)
    refused = ends[1 - trained][1]
    assert len(refused) == 1 and f"holds the experiment exp of another config, {commands[trained][1]}" in refused[0]
    manifest = read_json(out / "exp" / "experiment.json")
    assert manifest["config_path"] == commands[trained][1]
    metrics = read_json(out / "exp" / "default" / "seed-42" / "metrics.json")
    assert manifest["configs"]["default"]["train"]["lr"] == metrics["config"]["train"]["lr"] == [0.3, 0.1][trained]


def test_a_refused_process_is_told_which_stage_holds_the_folder(tmp_path, capsys):
    """The report stage, refused while a train stage holds the folder's lock (shared), names that process and
    its stage, and not a shared holder killed earlier whose note outlived it."""
    first, _ = two_configs(tmp_path)
    out = tmp_path / "out"
    held, holding = os.pipe()

    def hold() -> int:
        sys.argv = ["holder.py"]  # the command its note names (pytest's would name this file, "search" in it)
        with experiment_lock(out / "exp", shared=True, stage="train"):
            os.write(holding, b"held")
            time.sleep(60)
        return 0

    holder = forked(hold)
    os.close(holding)  # the holder's: a holder that fails ends the read below
    try:
        assert os.read(held, 4) == b"held"
        (out / "exp" / "experiment.json").write_text("{}")
        killed = subprocess.Popen(["true"])
        killed.wait()
        host = os.uname().nodename
        (out / "exp" / f".lock.holder.{host}.{killed.pid}.json").write_text(
            f'{{"pid": {killed.pid}, "host": "{host}", "started": 0, "command": "run.py", "stage": "search"}}')
        code, lines = cli(first, out, capsys, "--stages", "report")
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: {out / 'exp'} is in use by pid {holder} on host {host} (the train "
                                   "stage, started ") and lines[0].endswith("; wait for it to finish or stop it")
        assert "search" not in lines[0] and f"pid {killed.pid}" not in lines[0]
    finally:
        os.kill(holder, signal.SIGKILL)
        exit_status(holder)
        os.close(held)
