"""Every way forward the program names is one that works: damage a file, run the command that the error line
or the report's Missing section gives, and the report is complete again (issue 21, faults 4 and 6). Runs go
through run.py's main() as a user's command would."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import textwrap
from pathlib import Path

import pytest

import run
from tests.conftest import TINY

EXPERIMENT = """
train: {epochs: 1, track: {every: 3, iters: 4}, trajectory: {every: 3}}
sharpness: {batches: 1, batch_size: 4, max_iter: 4, epsilons: [1e-2], random_directions: 1, worst_case_steps: 1,
            trace_samples: 1}
landscape: {directions: pca, resolution: 3, points: 3, eval_batches: 1, eval_batch_size: 4}
runs:
  full: {}
  lora: {model: {adapter: {type: lora, r: 2, alpha: 4}}, train: {optimizer: adamw, lr: 0.01}}
"""
FULL, LORA = Path("exp/full/seed-42"), Path("exp/lora/seed-42")
COMMAND = re.compile(r"python run\.py (.+?) \(with the same --set options as before\)")
pytestmark = pytest.mark.usefixtures("figures_not_drawn")  # each test writes the report 3 or 4 times


def main(*args) -> int:
    return run.main([str(a) for a in args])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Every stage done, on a full fine-tuning run and a LoRA run, both tracked and with a trajectory."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "tiny.yaml").write_text(textwrap.dedent(TINY))
    (folder / "exp.yaml").write_text("extends: tiny.yaml\n" + textwrap.dedent(EXPERIMENT))
    assert main("--config", folder / "exp.yaml", "--output", folder / "out") == 0
    assert "## Missing" not in (folder / "out" / "exp" / "report.md").read_text()
    return folder / "exp.yaml", folder / "out"


@pytest.fixture
def damaged(finished, tmp_path):
    config, out = finished
    shutil.copytree(out, tmp_path / "out")
    return config, tmp_path / "out"


def the_command(text: str) -> list[str]:
    """The arguments of the one command that `text` (an error line, a report) names."""
    commands = COMMAND.findall(text)
    assert len(set(commands)) == 1, text
    return shlex.split(commands[0])


def report(config: Path, out: Path, capsys) -> tuple[int, str]:
    """(exit code, what names the way forward: the error line, or report.md's Missing section)."""
    capsys.readouterr()
    code = main("--config", config, "--output", out, "--stages", "report")
    if code:
        return code, capsys.readouterr().err
    text = (out / "exp" / "report.md").read_text()
    return code, text.split("## Missing")[1].split("## ")[0] if "## Missing" in text else ""


def follow(config: Path, out: Path, capsys) -> str:
    """Run the command the report names and return what it printed; the report is then complete."""
    code, forward = report(config, out, capsys)
    assert main(*the_command(forward)) == 0
    printed = capsys.readouterr().out
    assert report(config, out, capsys) == (0, "")
    return printed


def other_fingerprint(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "fingerprint": "0123456789abcdef"}))


@pytest.mark.parametrize("name, damage, why", [
    ("track.json", lambda p: p.write_text('{"points": ['), "track.json is corrupt"),
    ("track.json", other_fingerprint, "track.json was measured along another training"),
    ("metrics.json", lambda p: p.write_text('{"fingerprint": '), "metrics.json is corrupt"),
])
def test_the_report_names_the_command_that_makes_a_damaged_training_output_again(damaged, capsys, name, damage, why):
    config, out = damaged
    path = out / FULL / name
    damage(path)
    code, forward = report(config, out, capsys)
    assert code in (0, 2) and forward and "--stages train," in forward
    printed = follow(config, out, capsys)
    assert why in printed and "training again" in printed  # not "already trained; skipping"
    assert json.loads((out / FULL / "track.json").read_text())["fingerprint"] == \
        json.loads((out / FULL / "metrics.json").read_text())["fingerprint"]


@pytest.mark.parametrize("name", ["trajectory.json", "trajectory.npy"])
def test_a_deleted_trajectory_file_is_named_and_the_named_command_makes_it_again(damaged, capsys, name):
    config, out = damaged
    (out / FULL / name).unlink()
    assert main("--config", config, "--output", out, "--stages", "landscape", "--force") == 1
    line = capsys.readouterr().err
    assert f"has no {name};" in line
    assert main(*the_command(line)) == 0
    assert f"{name} missing; training again" in capsys.readouterr().out
    assert (out / FULL / name).is_file()
    follow(config, out, capsys)  # the retrained run's later results


def test_a_corrupt_trajectory_index_trains_the_run_again(damaged, capsys):
    config, out = damaged
    (out / FULL / "trajectory.json").write_text("{")
    assert main("--config", config, "--output", out, "--stages", "train") == 0
    assert "trajectory.json is corrupt" in capsys.readouterr().out
    assert json.loads((out / FULL / "trajectory.json").read_text())["steps"]


def test_a_deleted_lora_init_names_the_command_and_the_report_lists_it(damaged, capsys):
    """A LoRA run's frozen weights live in init.pt: without it no later stage can load the run."""
    config, out = damaged
    (out / LORA / "init.pt").unlink()
    assert main("--config", config, "--output", out, "--stages", "sharpness", "--force") == 1
    line = capsys.readouterr().err.strip()
    assert f"{out / LORA / 'init.pt'} not found" in line and "--stages train --runs lora" in line
    code, forward = report(config, out, capsys)
    assert code == 0 and "init.pt of lora/seed-42" in forward
    follow(config, out, capsys)
    assert main("--config", config, "--output", out, "--stages", "sharpness", "--force") == 0


def test_a_missing_result_is_listed_with_the_command_that_makes_it(damaged, capsys):
    config, out = damaged
    (out / FULL / "sharpness.json").unlink()
    (out / LORA / "landscape_2d.npz").unlink()
    code, forward = report(config, out, capsys)
    assert code == 0 and "sharpness of full/seed-42 (no sharpness.json)" in forward
    assert "--stages sharpness,landscape,report" in forward  # what is missing, and no retraining
    follow(config, out, capsys)


# ----------------------------------------------------------------------------------------------
# Bad values: what the sketch needs is bounded by what the machine has, before any file is made.

@pytest.mark.parametrize("short_of", ["disk", "memory"])
def test_a_sketch_larger_than_the_disk_or_memory_is_refused_before_any_file(damaged, capsys, monkeypatch, short_of):
    from collections import namedtuple

    from sharpness import geometry_stage

    config, out = damaged
    k = 1000  # 4 kB of disk and 32 kB of memory per weight of the model
    room = namedtuple("room", "free available")(free=10**6, available=10**6)
    if short_of == "disk":
        monkeypatch.setattr(geometry_stage.shutil, "disk_usage", lambda path: room)
    else:
        monkeypatch.setattr(geometry_stage.psutil, "virtual_memory", lambda: room)
    code = main("--config", config, "--output", out, "--stages", "geometry", "--set", f"geometry.cauchy_vectors={k}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"geometry.cauchy_vectors {k} needs a {k} × " in err[0] and err[0].endswith("lower geometry.cauchy_vectors")
    assert ("has 0.001 GB free" if short_of == "disk" else "0.001 GB of memory are available") in err[0]
    assert not list(out.rglob("geometry*"))
