"""Faults a user can cause or meet: each ends in one clear sentence and a known exit code, and nothing
is lost or left half-written. Runs go through run.py's main() as a user's command would."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import run
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# Result files, locks, disk and logs.

QUICK = """
train: {epochs: 1}
sharpness: {max_iter: 4, epsilons: [1e-2], random_directions: 1, worst_case_steps: 1, trace_samples: 1}
landscape: {resolution: 3, points: 3, eval_batches: 1, eval_batch_size: 4}
runs:
  a: {train: {batch_size: 8}}
  b: {train: {batch_size: 16}}
"""


def write_experiment(folder: Path) -> Path:
    (folder / "tiny.yaml").write_text(textwrap.dedent(TINY))
    (folder / "exp.yaml").write_text("extends: tiny.yaml\n" + textwrap.dedent(QUICK))
    return folder / "exp.yaml"


def main(config: Path, output: Path, *args: str) -> int:
    return run.main(["--config", str(config), "--output", str(output), *args])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An experiment folder after every stage (2 runs), copied fresh for each test that damages it."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_experiment(folder)
    assert main(config, folder / "out") == 0
    return config, folder / "out"


@pytest.fixture
def damaged(finished, tmp_path):
    config, out = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return config, copy


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path: Path) -> None:
    """Damage that keeps the size and may still parse: only the checksum can catch it."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def garble(path: Path) -> None:
    path.write_text('{"fingerprint": "abc", ')


RUN = Path("exp/a/seed-42")


@pytest.mark.parametrize("name, damage, stage", [
    ("sharpness.json", garble, "sharpness"),
    ("interpolation.json", garble, "landscape"),
    ("landscape_2d.npz", flip_byte, "landscape"),
    ("landscape_directions.pt", truncate, "landscape"),
])
def test_a_corrupt_output_is_made_again_by_the_stage_that_writes_it(damaged, capsys, name, damage, stage):
    config, out = damaged
    path = out / RUN / name
    before = path.read_bytes()
    damage(path)
    assert main(config, out, "--stages", stage) == 0
    assert f"{path} is corrupt" in capsys.readouterr().out
    if name.endswith(".json"):
        assert json.loads(path.read_text())["fingerprint"] == json.loads(before)["fingerprint"]
    else:
        from utils.io import verify
        verify(path)


def test_a_corrupt_experiment_interpolation_is_computed_again(damaged, capsys):
    config, out = damaged
    path = out / "exp" / "interpolation.json"
    expected = json.loads(path.read_text())
    garble(path)
    assert main(config, out, "--stages", "landscape") == 0
    assert f"{path} is corrupt" in capsys.readouterr().out
    assert json.loads(path.read_text())["pairs"][0]["barrier"] == pytest.approx(expected["pairs"][0]["barrier"], abs=1e-6)


@pytest.mark.parametrize("name, damage", [("checkpoint.pt", flip_byte), ("init.pt", truncate),
                                          ("metrics.json", garble)])
def test_a_corrupt_training_output_stops_later_stages_with_the_command_and_is_retrained(damaged, capsys, name, damage):
    config, out = damaged
    damage(out / RUN / name)
    for stage in ("sharpness", "landscape"):
        assert main(config, out, "--stages", stage) == 2
        line = error_line(capsys)
        assert str(out / RUN / name) in line and "is corrupt" in line
        assert f"--config {config} --stages train --runs a" in line
    assert main(config, out, "--stages", "train") == 0
    assert "training again" in capsys.readouterr().out
    assert main(config, out, "--stages", "sharpness,landscape,report") == 0


def test_a_corrupt_last_checkpoint_starts_the_run_over(tmp_path, capsys):
    config = write_experiment(tmp_path)
    (tmp_path / "exp.yaml").write_text((tmp_path / "exp.yaml").read_text().replace("epochs: 1", "epochs: 2"))
    out = tmp_path / "out"
    assert main(config, out, "--stages", "train", "--runs", "a") == 0
    folder = out / RUN
    from utils.io import save_torch
    from models.checkpoint import read_checkpoint
    save_torch(folder / "last.pt", {**read_checkpoint(folder / "init.pt"), "epoch": 1})
    (folder / "metrics.json").unlink()  # the run looks unfinished
    flip_byte(folder / "last.pt")
    capsys.readouterr()
    assert main(config, out, "--stages", "train", "--runs", "a") == 0
    assert "last.pt is corrupt" in capsys.readouterr().out and (folder / "metrics.json").is_file()


def test_a_corrupt_manifest_is_written_again(damaged, capsys):
    config, out = damaged
    garble(out / "exp" / "experiment.json")
    assert main(config, out, "--stages", "train") == 0
    assert json.loads((out / "exp" / "experiment.json").read_text())["runs"] == ["a", "b"]


def test_every_pt_and_npz_has_a_checksum_that_matches(finished):
    from utils.io import CHECKSUM_SUFFIX, _sha256

    _, out = finished
    files = [p for p in out.rglob("*") if p.suffix in (".pt", ".npz")]
    assert len(files) >= 8
    for path in files:
        record = path.with_name(path.name + CHECKSUM_SUFFIX).read_text().split()
        assert record == [_sha256(path), path.name]


# ---- one process per experiment folder

def test_a_second_process_exits_at_once_naming_the_holder(tmp_path, capsys):
    config = write_experiment(tmp_path)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from utils.lock import experiment_lock\n"
         f"with experiment_lock({str(out / 'exp')!r}):\n    print('held', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(config, out, "--stages", "train") == 2
        line = error_line(capsys)
        assert f"pid {holder.pid}" in line and "in use" in line and os.uname().nodename in line
        assert not (out / "exp" / "a").exists()
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead holder's lock; its note is still there, so the next run says so.
    assert main(config, out, "--stages", "train", "--runs", "a") == 0
    assert f"took over the lock of {out / 'exp'} left by pid {holder.pid}" in capsys.readouterr().err
    assert not (out / "exp" / ".lock.holder.json").exists()


# ---- disk

def test_an_output_that_is_a_file_exits_2(tmp_path, capsys):
    config = write_experiment(tmp_path)
    (tmp_path / "out").write_text("not a folder")
    assert main(config, tmp_path / "out", "--stages", "train") == 2
    assert "cannot write" in error_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_output_exits_2(tmp_path, capsys):
    config = write_experiment(tmp_path)
    (tmp_path / "out").mkdir(mode=0o555)
    assert main(config, tmp_path / "out", "--stages", "train") == 2
    assert "permission denied" in error_line(capsys)


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only")])
def test_a_full_or_read_only_disk_exits_2_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch, code, words):
    import torch

    config = write_experiment(tmp_path)

    def no_space(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", no_space)
    assert main(config, tmp_path / "out", "--stages", "train", "--runs", "a") == 2
    line = error_line(capsys)
    assert words in line and "init.pt" in line
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]


def test_temporary_files_of_killed_writes_are_removed_when_a_stage_starts(finished, tmp_path, capsys):
    config, out = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    leftovers = [copy / RUN / ".checkpoint.pt.123-abcd.tmp", copy / "exp" / ".summary.json.9-ff.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    (copy / RUN / ".tokenizer.123-abcd.tmpdir").mkdir()
    assert main(config, copy, "--stages", "report") == 0
    assert not [p for p in copy.rglob("*") if ".tmp" in p.name]
    assert "left by an interrupted write" in capsys.readouterr().out


def test_files_and_folders_follow_the_umask(tmp_path):
    config = write_experiment(tmp_path)
    previous = os.umask(0o027)
    try:
        assert main(config, tmp_path / "out", "--stages", "train", "--runs", "a") == 0
    finally:
        os.umask(previous)
    folder = tmp_path / "out" / RUN
    for path in (folder / "checkpoint.pt", folder / "metrics.json", folder / "checkpoint.pt.sha256"):
        assert path.stat().st_mode & 0o777 == 0o640, path
    assert (folder / "tokenizer").stat().st_mode & 0o777 == 0o750


# ---- logs

def test_progress_in_a_log_file_is_whole_lines_not_carriage_returns(tmp_path):
    """stderr redirected to a file (CI, nohup): no '\\r' updates, a line per epoch or every few seconds."""
    config = write_experiment(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    with open(tmp_path / "log", "w") as log:
        done = subprocess.run([sys.executable, "run.py", "--config", str(config), "--output", str(tmp_path / "out"),
                               "--stages", "train,sharpness", "--runs", "a"], cwd=REPO, env=env, stderr=log,
                              stdout=subprocess.DEVNULL, timeout=300)
    assert done.returncode == 0
    text = (tmp_path / "log").read_text()
    assert "\r" not in text
    assert "epoch 1/1" in text  # the bars still report, as lines
    assert len(text.splitlines()) < 40
