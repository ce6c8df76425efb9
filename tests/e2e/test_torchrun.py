"""torchrun jobs on the CPU (gloo, 2 processes): the same numbers as one process, and only rank 0 writes.

Two jobs run under torchrun itself (run.py end to end, and a rank killed under its launcher); the other checks
fork their processes from this one (tests.conftest.in_forked_processes), which has torch and transformers imported
already: a process torchrun or Popen starts spends seconds of CPU importing them before it does anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

import run
from models.checkpoint import read_checkpoint
from tests.conftest import in_forked_processes
from utils.io import load_npz, save_npz, verify

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}

# No dropout, so that the ranks' shares of a batch give the gradient of the whole batch exactly; 41 texts in
# batches of 8 end with a batch of one text, whose second share is empty.
DDP = """
data: {n_train: 41}
model: {config: {resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}}
train: {epochs: 1}
sharpness: {max_iter: 10, tol: 1.0e-4, random_directions: 2, worst_case_steps: 2, trace_samples: 2}
geometry: {cauchy_vectors: 6, bootstrap: 10, frobenius_probes: 3}
landscape: {resolution: 4, points: 5, eval_batches: 2, eval_batch_size: 4}
"""


def torchrun(*args: str, processes: int = 2, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone", *args]
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def finished(process: subprocess.Popen, timeout: float = 900) -> str:
    log = process.communicate(timeout=timeout)[0]
    assert process.returncode == 0, log
    return log


def run_logged(index: int, argv: list[str], logs: Path) -> None:
    """run.py's main with `argv`, its output in logs/<index>.log; it must succeed."""
    log = logs / f"{index}.log"
    with log.open("w") as out:
        sys.stdout = sys.stderr = out
        code = run.main(argv)
    assert code == 0, log.read_text()


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_the_objective_and_sharpness_on_two_ranks_equal_one_process(tmp_path):
    """Loss, gradient, H·v, λ_max, λ_min, Hutchinson's trace, ε-sharpness and worst-case sharpness of a float64
    model on 5 batches (shares of 3 and 2): all-reduced sums equal one process's to rounding."""
    from tests.e2e.distributed_check import main as check

    one, two = tmp_path / "one.json", tmp_path / "two.json"
    check(one)  # here, as one process
    in_forked_processes(lambda rank: check(two))
    single, split = json.loads(one.read_text()), json.loads(two.read_text())
    assert (single["world_size"], split["world_size"]) == (1, 2) and split["local_batches"] == 3
    for key in ("loss", "evaluate", "lambda_max", "lambda_min", "trace", "eps_sharpness", "worst_case"):
        assert split[key] == pytest.approx(single[key], rel=1e-9, abs=1e-12), key
    vectors = {name: torch.load(path.with_suffix(".pt"), weights_only=True) for name, path in (("one", one), ("two", two))}
    for key in ("grad", "hvp"):
        assert torch.allclose(vectors["two"][key], vectors["one"][key], rtol=1e-9, atol=1e-12), key
    assert (tmp_path / "two.json.rank-0").is_file() and not (tmp_path / "two.json.rank-1").exists()  # rank 1 wrote nothing


def test_a_torchrun_job_trains_and_measures_as_one_process(write_config, tmp_path):
    """train, sharpness, geometry, landscape and report under torchrun with 2 ranks: the weights equal one
    process's to 1e-6; λ_max, the trace, the (1,1)-norm and ‖H‖_F estimates and the 2D grid to 1e-5 relative;
    the files are the same ones, written once."""
    path = write_config(DDP)
    args = ["--config", str(path), "--stages", "train,sharpness,geometry,landscape,report"]
    assert run.main(args + ["--output", str(tmp_path / "one")]) == 0
    log = finished(torchrun(str(ROOT / "run.py"), *args, "--output", str(tmp_path / "two")))
    assert log.count(": done; test loss") == 1  # rank 0 speaks for the job
    one, two = tmp_path / "one" / "exp", tmp_path / "two" / "exp"
    assert files_under(two) == files_under(one)
    seed = Path("default") / "seed-42"
    weights = [torch.load(folder / seed / "checkpoint.pt", weights_only=True)["model"] for folder in (one, two)]
    assert max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0]) < 1e-6
    metrics = [json.loads((folder / seed / "metrics.json").read_text()) for folder in (one, two)]
    for key in ("optimizer_steps", "train_tokens"):
        assert metrics[1][key] == metrics[0][key], key
    assert metrics[1]["train_flops"] <= metrics[0]["train_flops"]  # each share is padded to its own longest text
    # The job records its devices, and its MFU is per device: its FLOPs over 2 devices' peak in its time
    assert [(m["world_size"], m["devices"]) for m in metrics] == [(1, [metrics[0]["device_name"]]),
                                                                   (2, [metrics[0]["device_name"]] * 2)]
    for m in metrics:
        assert m["mfu"] == pytest.approx(m["train_flops"] / (m["train_time_s"] * m["device_peak_flops"] * m["world_size"]),
                                         rel=1e-12)
    assert metrics[1]["step_loss"] == pytest.approx(metrics[0]["step_loss"], rel=1e-6)
    assert metrics[1]["test_loss"] == pytest.approx(metrics[0]["test_loss"], rel=1e-6)
    sharpness = [json.loads((folder / seed / "sharpness.json").read_text()) for folder in (one, two)]
    assert sharpness[1]["lambda_max"] == pytest.approx(sharpness[0]["lambda_max"], rel=1e-5)
    assert sharpness[1]["trace"]["mean"] == pytest.approx(sharpness[0]["trace"]["mean"], rel=1e-5)
    geometry = [json.loads((folder / seed / "geometry.json").read_text())["frames"]["original"] for folder in (one, two)]
    assert geometry[1]["l11"]["median"]["total"] == pytest.approx(geometry[0]["l11"]["median"]["total"], rel=1e-5)
    assert geometry[1]["linf"]["median"] == pytest.approx(geometry[0]["linf"]["median"], rel=1e-5)
    for key in ("spectral", "frobenius"):
        assert geometry[1][key]["value"] == pytest.approx(geometry[0][key]["value"], rel=1e-5), key
    grids = [np.load(folder / seed / "landscape_2d.npz")["train_loss"] for folder in (one, two)]
    assert np.allclose(grids[1], grids[0], rtol=1e-5)

    # A grid cut short after two rows (as a kill would leave it) is finished by the ranks where it stopped.
    surface = two / seed / "landscape_2d.npz"
    partial = load_npz(surface)
    partial["done"][2:] = False
    partial["train_loss"][2:] = np.nan
    save_npz(surface, **partial)
    in_forked_processes(run_logged, args[:2] + ["--stages", "landscape", "--output", str(tmp_path / "two")], tmp_path)
    assert "resuming the 2D landscape (8 of 16 points done)" in (tmp_path / "0.log").read_text()
    assert np.allclose(load_npz(surface)["train_loss"], grids[0], rtol=1e-5) and load_npz(surface)["done"].all()


def test_a_killed_rank_ends_the_job_and_the_last_checkpoint_resumes(write_config, tmp_path):
    """SIGKILL of rank 1 mid-training ends the whole job with an error; last.pt, written by rank 0 after an
    epoch, is intact, and the same command run again (here as one process) resumes from it and finishes."""
    path = write_config(DDP.replace("epochs: 1", "epochs: 40"))
    args = ["--config", str(path), "--stages", "train", "--output", str(tmp_path)]
    job = torchrun(str(ROOT / "run.py"), *args)
    last = tmp_path / "exp" / "default" / "seed-42" / "last.pt"
    deadline = time.time() + 900  # a guard against a hang, not a speed check
    while not last.with_name("last.pt.sha256").is_file() and time.time() < deadline and job.poll() is None:
        time.sleep(0.2)
    ranks = [p for p in psutil.Process(job.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    assert ranks, "no rank 1 to kill"
    ranks[0].kill()
    log = job.communicate(timeout=900)[0]
    assert job.returncode != 0, log
    verify(last)  # its checksum matches: nothing half-written
    # Each rank has its own dropout stream (utils.distributed.rank_seed), kept for its resume: not one set of masks
    # drawn again on every rank's texts
    ranks = read_checkpoint(last)["rng"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    assert run.main(args) == 0
    metrics = json.loads((last.parent / "metrics.json").read_text())
    assert metrics["epochs"] == 40 and not last.exists()


def test_processes_given_other_runs_train_side_by_side_in_one_folder(write_config, tmp_path):
    """The alternative to DDP for many small runs: one process per --runs subset, in one experiment folder (the
    train stage's lock is shared); a run given to two processes is trained by the one that took it first."""
    path = write_config("runs:\n  a: {train: {epochs: 30}}\n  b: {train: {epochs: 5, lr: 0.1}}\n")
    args = ["--config", str(path), "--stages", "train", "--output", str(tmp_path)]
    given = ("a", "b", "a")
    in_forked_processes(lambda index: run_logged(index, args + ["--runs", given[index]], tmp_path), processes=3,
                        ranks=False)
    logs = [(tmp_path / f"{index}.log").read_text() for index in range(3)]
    manifest = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert sorted(manifest["runs"]) == ["a", "b"]
    for name in ("a", "b"):
        assert (tmp_path / "exp" / name / "seed-42" / "metrics.json").is_file()
    trained_a = [log for log in (logs[0], logs[2]) if "exp/a/seed-42: done" in log]
    left = [log for log in (logs[0], logs[2]) if "another process is training it" in log]
    assert len(trained_a) == 1 and len(left) == 1, logs
