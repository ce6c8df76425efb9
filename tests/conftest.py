"""Shared fixtures: tiny experiments on the builtin corpus that train in about a second on a CPU."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may wait on the network
os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")  # run.py's threads: auto keeps the one thread set below

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
# Tiny models: one thread is as fast as two, and far faster when other work shares the CPU.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TINY = """
device: cpu
data: {source: builtin, n_train: 48, n_val: 16, n_test: 16, max_length: 32}
model:
  init: scratch
  tokenizer: bpe
  bpe_vocab_size: 300
  config: {n_layer: 2, n_embd: 32, n_head: 2, n_positions: 32}
train: {optimizer: sgd, lr: 0.3, momentum: 0.9, batch_size: 8, epochs: 2, eval_batch_size: 8}
"""

# A search of TINY's learning rate and batch size: four trials, TPE after two random ones. Its `search:` block comes
# last, so that a test may add keys to it (e.g. SEARCH + "  storage: ...\n").
SEARCH = """
search:
  n_trials: 4
  startup_trials: 2
  space:
    train.lr: {loguniform: [0.01, 1.0]}
    train.batch_size: [4, 8]
"""


def shipped_config_args(config: str, output: Path, overrides=(), *extra: str) -> list[str]:
    """run.py's arguments for config/<config> into `output`, each override as --set (the e2e tests' trimmed
    budgets), then `extra` (e.g. --runs ...)."""
    return ["--config", str(REPO / "config" / config), "--output", str(output), *extra,
            *[arg for override in overrides for arg in ("--set", override)]]


def forked(work: Callable[[], int]) -> int:
    """`work()` in a process forked from this one, for a test of another process (to signal, or to run beside this
    one): its pid; exit_status gives its end, work's return value (1 if it raised, its traceback on its stderr).
    A new interpreter would first spend ~5 CPU s importing torch and transformers, which this one has imported."""
    pid = os.fork()
    if pid:
        return pid
    code = 1  # the child: it leaves through os._exit, never back into pytest
    try:
        code = work()
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def forked_run_py(argv: list[str], stdout: Path, stderr: Path) -> int:
    """run.py's main with `argv` in a forked process (`forked`), its output in the files `stdout` and `stderr`."""

    def main() -> int:
        import run

        for fd, path in ((1, stdout), (2, stderr)):
            file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(file, fd)
            os.close(file)
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
        return run.main(argv)

    return forked(main)


def still_running(pid: int) -> bool:
    """Whether a forked process has not ended yet (its end is left for exit_status)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def exit_status(pid: int) -> int:
    """A forked process's exit code once it has ended; -N if signal N ended it."""
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def in_forked_processes(work: Callable, *args, processes: int = 2, ranks: bool = True) -> None:
    """`work(index, *args)` in `processes` processes forked from this one (index 0, 1, …), returning when every one
    has ended: the suite's one way to run a function on N gloo ranks. With `ranks`, each process has the environment
    torchrun gives its ranks (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and a free MASTER_PORT), so
    `torch.distributed.init_process_group("gloo")` (or utils.distributed) joins them into one group; without, they
    only run side by side. A process that raises ends the others and fails the test with its traceback. Unlike
    `forked` (one process, its pid, for a test of how a process ends), this waits for its processes; forked, not
    spawned, for the same reason: they start with this process's imports."""
    with socket.socket() as probe:  # a free port for the ranks' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_in_environment, args=(processes, port if ranks else None, work, args), nprocs=processes,
                       start_method="fork")


def _in_environment(index: int, processes: int, port: int | None, work: Callable, args: tuple) -> None:
    if port is not None:
        os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(processes),
                          LOCAL_WORLD_SIZE=str(processes), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    work(index, *args)


@pytest.fixture
def write_config(tmp_path):
    """Write a YAML experiment file (tiny settings unless `tiny=False`) and return its path."""

    def write(text: str = "", name: str = "exp.yaml", tiny: bool = True) -> Path:
        path = tmp_path / name
        body = textwrap.dedent(text)
        if tiny:
            (tmp_path / "tiny.yaml").write_text(textwrap.dedent(TINY))
            body = "extends: tiny.yaml\n" + body
        path.write_text(body)
        return path

    return write


@pytest.fixture
def tiny_experiment(write_config):
    from config.loading import load_experiment

    def make(text: str = "", overrides=()):
        return load_experiment(write_config(text), list(overrides))

    return make


@pytest.fixture
def tiny_model_and_tokenizer():
    """A 2-layer, 32-wide GPT-2 with a byte-level tokenizer (random weights, seeded)."""
    from models.models import build_model, byte_tokenizer
    from config.schema import ModelConfig

    tokenizer = byte_tokenizer()
    cfg = ModelConfig(init="scratch", config={"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64})
    return build_model(cfg, tokenizer, seed=0), tokenizer


@contextmanager
def placeholder_figures():
    """For tests that are not about figures: each figure's files are still written (the report links them, the
    landscape stage checks they exist), but as a placeholder, not drawn. Matplotlib's layout takes ~0.6 s a figure,
    most of the time of a test that writes a report several times; test_report and test_landscape check what the
    figures show."""
    import report.report_stage
    import visualization.landscape_stage
    from utils.io import FIGURE_FORMATS, write_bytes

    def placeholder(stem, figure, dpi=150):
        for ext in FIGURE_FORMATS:
            write_bytes(Path(f"{stem}.{ext}"), b"figure not drawn in this test")

    with pytest.MonkeyPatch.context() as patch:
        for module in (report.report_stage, visualization.landscape_stage):
            patch.setattr(module, "save_figure", placeholder)
        yield


@pytest.fixture(scope="module")
def figures_not_drawn():
    """placeholder_figures for every test of a module (its module-scoped fixtures included)."""
    with placeholder_figures():
        yield


@pytest.fixture(scope="module")
def checked_figures():
    """Every figure a test module's experiments save is first checked by visualization.figure_check: the first
    with a problem stops the test, naming the figure and its problems."""
    import report.report_stage
    import visualization.landscape_stage
    from visualization.figure_check import figure_problems

    def checked(save):
        def save_checked(stem, figure, dpi=150):
            problems = figure_problems(figure)
            assert not problems, f"{Path(stem).name}: " + "; ".join(problems)
            save(stem, figure, dpi)
        return save_checked

    with pytest.MonkeyPatch.context() as patch:
        for module in (report.report_stage, visualization.landscape_stage):
            patch.setattr(module, "save_figure", checked(module.save_figure))
        yield


# Run in the notebook's kernel with its OUTPUT cell: the figures it draws itself (a report section's Figure.draw)
# pass visualization.figure_check before it shows them (savefig), or the cell fails with their problems.
NOTEBOOK_FIGURES_CHECKED = """
from matplotlib.figure import Figure as _Figure
from visualization.figure_check import figure_problems as _figure_problems
_unchecked_savefig = getattr(_Figure.savefig, "unchecked", _Figure.savefig)  # checked once in a reused kernel
def _checked_savefig(figure, *args, **kwargs):
    problems = _figure_problems(figure)
    assert not problems, f"the notebook's figure {figure.get_suptitle() or figure.axes[0].get_title()!r}: {problems}"
    return _unchecked_savefig(figure, *args, **kwargs)
_checked_savefig.unchecked = _unchecked_savefig
_Figure.savefig = _checked_savefig
"""


# One notebook kernel per test process (see execute_notebook); shut down when the session ends.
_kernel: dict = {}


def execute_notebook(output: Path):
    """results.ipynb run on `output` (its OUTPUT cell rewritten, the figures it draws checked); the executed
    notebook. The kernel is this process's, reused with its namespace reset (%reset -f) before each notebook: a
    kernel's start and its imports cost ~4 CPU s, once per process instead of once per notebook. A failed run
    leaves no kernel behind for the next."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "results.ipynb", as_version=4)
    assert notebook.cells[1].source.startswith('OUTPUT = "results"')
    notebook.cells[1].source = (f"%reset -f\nOUTPUT = {str(output)!r}\nEXPERIMENTS = None\n" +
                                NOTEBOOK_FIGURES_CHECKED)
    client = NotebookClient(notebook, km=_kernel.get("manager"), timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}})
    try:
        client.execute(cleanup_kc=False)
    except BaseException:
        _kernel["manager"] = client.km  # in an unknown state: not reused
        _stop_kernel()
        raise
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    _kernel["manager"] = client.km
    return notebook


def _stop_kernel() -> None:
    from jupyter_core.utils import run_sync

    manager = _kernel.pop("manager", None)
    if manager is not None:
        run_sync(manager.shutdown_kernel)(now=True)


@pytest.fixture(scope="session", autouse=True)
def notebook_kernel_stopped():
    """The notebook kernel (if a test started one) ends with the session, its CPU counted with the suite's."""
    yield
    _stop_kernel()
