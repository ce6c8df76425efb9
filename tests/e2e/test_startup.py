"""What run.py does before the work: it answers --help, --list and config errors without loading torch and the
stages' libraries, says what it will run before it loads them, and chooses torch's threads from the free cores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from utils.device import threads_for

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "optuna", "matplotlib", "scipy")
ENV = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_py(*args: str, importing_torch: str = "") -> subprocess.CompletedProcess:
    """run.py in a fresh interpreter; its stderr ends with the heavy libraries it had loaded when it ended.
    `importing_torch`: printed when run.py starts to import torch, which then stops it (Ctrl-C)."""
    hook = ("import builtins, os, signal\n"
            "load = builtins.__import__\n"
            "def importing(name, *args, **kwargs):\n"
            "    if name == 'torch' and 'torch' not in sys.modules:\n"
            f"        print({importing_torch!r}, flush=True)\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return load(name, *args, **kwargs)\n"
            "builtins.__import__ = importing\n") if importing_torch else ""
    probe = ("import runpy, sys\n" + hook +
             f"sys.argv = ['run.py', *{list(args)!r}]\n"
             "try:\n"
             "    runpy.run_path('run.py', run_name='__main__')\n"
             "finally:\n"
             f"    print('loaded:', *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n")
    return subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.parametrize("args, code, first_line", [
    (["--help"], 0, "usage: run.py"),
    (["--config", "config/exp1.yaml", "--list"], 0, "exp1: 2 run(s), seeds 42"),
    (["--config", "config/nope.yaml"], 2, "error: "),
    (["--config", "config/exp1.yaml", "--set", "train.nope=1"], 2, "error: --set: train.nope: unknown key"),
    (["--config", "config/exp1.yaml", "--set", "threads=0"], 2, "error: --set threads: expected auto or a number"),
    (["--config", "config/exp1.yaml", "--stages", "trian"], 2, "error: --stages: unknown stage 'trian'"),
])
def test_help_list_and_config_errors_answer_without_the_heavy_libraries(args, code, first_line):
    """What made `--help` take 15-22 s on a busy CPU: torch, transformers, optuna, matplotlib and scipy,
    which none of these answers needs."""
    done = run_py(*args)
    *said, loaded = done.stderr.splitlines()
    assert done.returncode == code, done.stderr
    assert loaded == "loaded:"
    assert (done.stdout if code == 0 else said[0]).startswith(first_line) and len(said) == (code != 0)


@pytest.mark.parametrize("config, plan", [
    ("exp1", "exp1: 2 run(s), seeds 42; stages train, sharpness, landscape, report"),
    # a scratch model: its model.config is checked against transformers' (which loads torch) after the plan
    ("quickstart", "quickstart: 2 run(s), seeds 42; stages train, sharpness, landscape, report"),
])
def test_a_run_says_what_it_runs_before_torch_loads(tmp_path, config, plan):
    """The first line of a run comes before its seconds of imports (stopped here as torch starts to load)."""
    done = run_py("--config", f"config/{config}.yaml", "--output", str(tmp_path / "out"), importing_torch="[torch]")
    assert done.returncode == 130
    assert done.stdout.splitlines() == [plan, "[torch]"]
    assert not (tmp_path / "out").exists()


def test_a_scratch_models_config_is_still_checked_before_anything_runs(tmp_path):
    done = run_py("--config", "config/quickstart.yaml", "--set", "model.config.n_layrs=2", "--output",
                  str(tmp_path / "out"))
    assert done.returncode == 2 and done.stdout.startswith("quickstart: 2 run(s)")
    assert "model.config" in done.stderr.splitlines()[0] and not (tmp_path / "out").exists()


# ---- threads

@pytest.fixture
def machine(monkeypatch):
    """A fake machine: set(cores, load) to give this process `cores` cores at a 1-minute load average `load`."""
    for name in ("OMP_NUM_THREADS", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)

    def set_machine(cores: int, load: float) -> None:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setattr("os.getloadavg", lambda: (load, load, load), raising=False)

    return set_machine


@pytest.mark.parametrize("cores, load, threads", [(2, 0.0, 2), (2, 0.3, 2), (2, 1.8, 1), (2, 9.5, 1),
                                                  (8, 2.6, 5), (8, 0.0, 8), (1, 0.0, 1)])
def test_auto_threads_are_the_free_cores(machine, cores, load, threads):
    machine(cores, load)
    count, line = threads_for("auto")
    assert count == threads
    assert line == f"threads: {threads} of {cores} cores (load {load:.1f}); set `threads:` to choose"


def test_a_set_count_or_omp_num_threads_is_kept(machine, monkeypatch):
    """`threads: N` wins; with auto, OMP_NUM_THREADS set by the user does (a busy machine or not)."""
    machine(2, 9.0)
    assert threads_for(2) == (2, "threads: 2 (the experiment's `threads`)")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads_for("auto") == (2, "threads: 2 (OMP_NUM_THREADS)")
    assert threads_for(1)[0] == 1


def test_torchrun_ranks_share_the_free_cores(machine, monkeypatch):
    """Under torchrun (which sets OMP_NUM_THREADS=1 itself) the local ranks divide the free cores."""
    machine(16, 3.8)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads_for("auto") == (3, "threads: 3 in each of 4 ranks of 16 cores (load 3.8); set `threads:` to choose")
    machine(4, 3.0)
    assert threads_for("auto")[0] == 1


def test_the_choice_is_applied_and_said_once(capsys, monkeypatch):
    import torch

    from utils import device

    monkeypatch.setitem(device._threads, "count", None)  # as in a new process
    before = torch.get_num_threads()
    try:
        device.use_threads(2)
        device.use_threads(2)
        assert torch.get_num_threads() == 2
        device.use_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert capsys.readouterr().out.splitlines() == ["threads: 2 (the experiment's `threads`)",
                                                    "threads: 1 (the experiment's `threads`)"]


def test_threads_is_a_key_of_the_experiment(write_config):
    from config.loading import load_experiment
    from utils.errors import ConfigError

    path = write_config("threads: 3\n")
    assert load_experiment(path).threads == 3
    assert load_experiment(path, ["threads=auto"]).threads == "auto"
    for bad in ("threads: 0\n", "threads: many\n", "threads: true\n", "runs: {a: {threads: 2}}\n"):
        with pytest.raises(ConfigError, match="threads"):
            load_experiment(write_config(bad))
