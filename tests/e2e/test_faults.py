"""Faults a user can cause or meet: each ends in one clear sentence and a known exit code (2 for
configuration errors, locked or unwritable folders and corrupt files), and nothing is lost or left
half-written. Runs go through run.py's main() as a user's command would."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

import run
from data.corpus import BUILTIN_LONGEST_TEXT, filter_texts, load_texts
from tests.conftest import TINY
from config.loading import load_experiment
from config.schema import DataConfig, LandscapeConfig, ModelConfig, SharpnessConfig, TrainConfig, all_keys
from utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("figures_not_drawn")  # what the figures show is test_report's to check
REPO = Path(__file__).resolve().parents[2]


def cli(args, tmp_path, capsys):
    """run.py's main: (exit code, stderr, output folder)."""
    out = tmp_path / "out"
    code = run.main([*args, "--output", str(out)])
    return code, capsys.readouterr().err.strip(), out


@contextlib.contextmanager
def fails_instead_of_hanging(seconds: int = 600):
    """Fail (instead of hanging) if the block never ends: a guard against an endless loop, far above what the
    block takes on a busy machine. What the block's speed stands for (a bounded scan) the tests assert in counts."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------------------------
# Config

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "sharpness": SharpnessConfig,
            "landscape": LandscapeConfig}
FLOAT_KEYS = [f"{section}.{name}" for section, cls in SECTIONS.items()
              for name, kind in typing.get_type_hints(cls).items() if kind in (float, list[float])]


def test_the_schema_has_the_float_keys_the_finiteness_test_covers():
    assert {"train.lr", "train.momentum", "train.weight_decay", "train.grad_clip", "sharpness.tol",
            "sharpness.epsilons", "landscape.range", "landscape.alpha_min", "landscape.alpha_max"} <= set(FLOAT_KEYS)
    assert set(FLOAT_KEYS) <= set(all_keys())


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("written", [".inf", "-.inf", ".nan", "inf", "'-inf'", "nan", "1e999", "1" + "0" * 400])
def test_every_float_must_be_finite(write_config, key, written):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"exp\.yaml: {key}: expected a finite number"):
        load_experiment(write_config(f"{section}:\n  {name}: {written}\n"))


def test_non_finite_numbers_exit_2_from_the_command_line(write_config, tmp_path, capsys):
    path = write_config("runs:\n  a:\n    landscape: {alpha_max: .nan}\n")
    code, err, out = cli(["--config", str(path)], tmp_path, capsys)
    assert (code, err) == (2, f"error: {path}: runs.a.landscape.alpha_max: expected a finite number, got nan")
    assert not out.exists()
    code, err, out = cli(["--config", str(write_config()), "--set", "train.lr=inf"], tmp_path, capsys)
    assert (code, err) == (2, "error: --set train.lr: expected a finite number, got 'inf'") and not out.exists()
    code, err, _ = cli(["--config", str(write_config("model:\n  config: {resid_pdrop: .nan}\n"))], tmp_path, capsys)
    assert code == 2 and "model.config: resid_pdrop must be a finite number, got nan" in err


@pytest.mark.parametrize("bad, fix, expected", [
    ("train: {lr: .inf}", "train: {lr: 0.1}", "train.lr: expected a finite number"),
    ("train: {momentum: 1.5}", "train: {momentum: 0.5}", "train.momentum: must be < 1"),
    ("train: {batch_size: 4.5}", "train: {batch_size: 4}", "train.batch_size: expected an integer"),
    ("data: {order: shuffled}", "data: {order: sorted}", "data.order: must be one of"),
    ("sharpness: {epsilons: [1.0e-3, -1]}", "sharpness: {epsilons: [1.0e-3]}", "sharpness.epsilons: must be > 0"),
    ("runs: {a: {train: {lr: -1}}}", "runs: {b: {}}", "runs.a.train.lr: must be > 0"),
    ("seeds: [1, 1]", "seeds: [3]", "seeds: seeds must be distinct"),
    ("experiment: a b", "experiment: ab", "experiment: experiment names use"),
])
def test_every_layer_is_checked_where_it_is_written(write_config, bad, fix, expected):
    write_config(bad + "\n", name="base.yaml")  # extends tiny.yaml; the experiment overrides the bad value
    path = write_config(f"extends: base.yaml\n{fix}\n", tiny=False)
    with pytest.raises(ConfigError, match="base.yaml: " + expected):
        load_experiment(path)


def test_a_bad_overridden_value_exits_2_naming_its_file(write_config, tmp_path, capsys):
    write_config("train: {weight_decay: .nan}\n", name="base.yaml")
    path = write_config("extends: base.yaml\ntrain: {weight_decay: 0.0}\n", tiny=False)
    code, err, out = cli(["--config", str(path)], tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert "base.yaml: train.weight_decay: expected a finite number, got nan" in err


@pytest.mark.parametrize("body, expected", [
    ("train:\n  lr: 0.1\n  lr: 0.2\n", "(line 4, column 3): duplicate key 'lr'"),  # line 1 is `extends:`
    ("train: {lr: 0.1}\ndata: {}\ntrain: {epochs: 1}\n", "(line 4, column 1): duplicate key 'train'"),
    ("runs:\n  a: {}\n  a: {train: {lr: 0.1}}\n", "(line 4, column 3): duplicate key 'a'"),
])
def test_duplicate_keys_exit_2_naming_key_and_line(write_config, tmp_path, capsys, body, expected):
    path = write_config(body)
    code, err, out = cli(["--config", str(path)], tmp_path, capsys)
    assert code == 2 and f"{path}: invalid YAML {expected}" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_yaml_merge_key_may_still_be_overridden(write_config):
    exp = load_experiment(write_config("""
        runs:
          a: &a {train: {lr: 0.1}, data: {order: sorted}}
          b: {<<: *a, train: {lr: 0.2}}
    """))
    assert [(r.train.lr, r.data.order) for r in exp.runs] == [(0.1, "sorted"), (0.2, "sorted")]


@pytest.mark.parametrize("content, expected", [
    (b"", "the file holds no settings (it is empty or only comments)"),
    (b"# nothing here\n\n   # nor here\n", "the file holds no settings (it is empty or only comments)"),
    (b"train:\n  lr: 0.1  # \xe9t\xe9\n", "not a UTF-8 text file (the first invalid byte is on line 2)"),
    (None, "is a folder, not a config file"),
])
def test_unreadable_configs_exit_2_with_one_sentence(tmp_path, capsys, content, expected):
    path = tmp_path / "exp.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    code, err, out = cli(["--config", str(path)], tmp_path, capsys)
    assert (code, err) == (2, f"error: {path}: {expected}")
    assert not out.exists()


def test_an_empty_extended_file_is_an_error_naming_it(write_config, tmp_path):
    (tmp_path / "empty.yaml").write_text("# to be written\n")
    with pytest.raises(ConfigError, match="empty.yaml: the file holds no settings"):
        load_experiment(write_config("extends: empty.yaml\ntrain: {lr: 0.1}\n", tiny=False))


# ----------------------------------------------------------------------------------------------
# Data

def test_builtin_min_text_length_at_or_above_the_longest_line_is_refused_at_once():
    with fails_instead_of_hanging(), pytest.raises(ConfigError, match=rf"data.min_text_length: the builtin corpus has no line "
                                                        rf"longer than {BUILTIN_LONGEST_TEXT} characters, got "
                                                        rf"{BUILTIN_LONGEST_TEXT}$"):
        load_texts(DataConfig(source="builtin", min_text_length=BUILTIN_LONGEST_TEXT))


def test_a_builtin_filter_that_keeps_nothing_ends_in_seconds_with_exit_2(write_config, tmp_path, capsys):
    path = write_config(f"data: {{min_text_length: {BUILTIN_LONGEST_TEXT - 1}}}\n")  # possible, but never drawn
    with fails_instead_of_hanging():
        code, err, _ = cli(["--config", str(path), "--stages", "train"], tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err == (f"error: data.min_text_length: train texts longer than {BUILTIN_LONGEST_TEXT - 1} characters are "
                   "too rare in the builtin corpus (0 of the 48 that data.n_train asks for in 104,800 lines); "
                   "lower data.min_text_length or data.n_train")


def test_a_rare_builtin_text_is_refused_in_seconds_however_many_are_asked_for(write_config, tmp_path, capsys):
    """About 1 line in 20,000 is longer than 575 characters: the scan is bounded by the texts asked for."""
    path = write_config("data: {min_text_length: 575, n_train: 1000}\n")
    with fails_instead_of_hanging():
        code, err, _ = cli(["--config", str(path), "--stages", "train"], tmp_path, capsys)
    assert code == 2 and "train texts longer than 575 characters are too rare" in err and "in 200,000 lines" in err


def test_a_line_budget_stops_an_endless_stream():
    lines = iter(lambda: " too short ", None)  # endless
    with fails_instead_of_hanging():
        assert filter_texts(lines, 50, 10, max_lines=1000) == []
    assert filter_texts(["a" * 60, "b", "c", "d" * 60], 50, 10, max_lines=3) == ["a" * 60]
    assert filter_texts(["a" * 60, "b", "c", "d" * 60], 50, 10, max_lines=4) == ["a" * 60, "d" * 60]


def test_a_local_split_with_fewer_texts_than_asked_warns_and_metrics_record_both(write_config, tmp_path, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    for split, n in (("train", 20), ("valid", 16), ("test", 5)):
        (folder / f"{split}.txt").write_text("".join(f" {split} text {i} " + "z" * 60 + " \n" for i in range(n)))
    path = write_config(f"""
        data: {{source: local, path: {folder}}}
        model: {{tokenizer: bytes}}
        train: {{epochs: 1}}
    """)
    code, err, out = cli(["--config", str(path), "--stages", "train,sharpness", "--set", "sharpness.max_iter=2",
                          "--set", "sharpness.trace_samples=0", "--set", "sharpness.worst_case_steps=0"], tmp_path, capsys)
    assert code == 0
    assert "warning: data.n_train asks for 48 texts; the train split has 20 after filtering" in err.splitlines()
    assert "warning: data.n_test asks for 16 texts; the test split has 5 after filtering" in err.splitlines()
    assert not any("n_val" in line for line in err.splitlines())
    for name in ("metrics.json", "sharpness.json"):
        recorded = json.loads(next(out.glob(f"*/*/seed-*/{name}")).read_text())
        assert recorded["texts"] == {"train": {"asked": 48, "got": 20}, "validation": {"asked": 16, "got": 16},
                                     "test": {"asked": 16, "got": 5}}


def test_texts_counts_what_was_asked_and_got():
    texts = load_texts(DataConfig(source="builtin", n_train=7, n_val=2, n_test=3))
    assert texts.counts() == {"train": {"asked": 7, "got": 7}, "validation": {"asked": 2, "got": 2},
                              "test": {"asked": 3, "got": 3}}


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
    if name == "landscape_directions.pt":  # read only to compute a surface
        (out / RUN / "landscape_2d.npz").unlink()
    assert main(config, out, "--stages", stage) == 0
    assert f"{path} is corrupt" in capsys.readouterr().out
    if name.endswith(".json"):
        assert json.loads(path.read_text())["fingerprint"] == json.loads(before)["fingerprint"]
    else:
        from utils.io import verify
        verify(path)
    if name == "landscape_directions.pt":  # drawn again from the same seed: the same plane
        import io
        import torch
        from utils.io import load_torch
        old, new = torch.load(io.BytesIO(before), weights_only=True), load_torch(path)
        assert torch.equal(old["d1"], new["d1"]) and torch.equal(old["d2"], new["d2"])


def test_a_corrupt_experiment_interpolation_is_computed_again(damaged, capsys):
    config, out = damaged
    path = out / "exp" / "interpolation.json"
    expected = json.loads(path.read_text())
    garble(path)
    assert main(config, out, "--stages", "landscape") == 0
    assert f"{path} is corrupt" in capsys.readouterr().out
    assert json.loads(path.read_text())["pairs"][0]["barrier"] == pytest.approx(expected["pairs"][0]["barrier"], abs=1e-6)


@pytest.mark.parametrize("name, damage", [("checkpoint.pt", flip_byte), ("init.pt", truncate),
                                          ("metrics.json", garble), ("tokenizer/tokenizer.json", truncate)])
def test_a_corrupt_training_output_stops_later_stages_with_the_command_and_is_retrained(damaged, capsys, name, damage):
    config, out = damaged
    damage(out / RUN / name)
    for stage in ("sharpness", "landscape"):
        assert main(config, out, "--stages", stage) == 2
        line = error_line(capsys)
        assert f"{out / RUN / name.split('/')[0]} is corrupt" in line  # a file of tokenizer/ names the folder
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


def test_the_report_names_a_corrupt_result_and_the_command_that_regenerates_it(damaged, capsys):
    from report.reader import load_results

    config, out = damaged
    garble(out / RUN / "sharpness.json")
    assert main(config, out, "--stages", "report") == 2
    line = error_line(capsys)
    assert f"{out / RUN / 'sharpness.json'} is corrupt" in line
    assert f"--config {config} --stages sharpness,report --output {out}" in line  # the report made again too
    results = load_results(out, "exp")  # what the notebook shows instead of failing
    assert any("sharpness.json is corrupt" in item for item in results.missing)
    assert "a" not in results.sharpness
    assert main(config, out, "--stages", "sharpness,report") == 0


def test_a_corrupt_manifest_stops_the_report_with_the_train_command(damaged, capsys):
    config, out = damaged
    garble(out / "exp" / "experiment.json")
    assert main(config, out, "--stages", "report") == 2
    assert "experiment.json is corrupt" in (line := error_line(capsys)) and "--stages train" in line


def test_json_files_keep_a_diverged_number_apart_from_a_missing_one(tmp_path):
    import numpy as np
    from utils.io import read_json, write_json

    write_json(tmp_path / "x.json", {"loss": float("nan"), "curve": [1.0, float("inf")], "f32": np.float32("-inf"),
                                     "missing": None})
    data = read_json(tmp_path / "x.json")
    assert data == {"loss": "nan", "curve": [1.0, "inf"], "f32": "-inf", "missing": None}
    assert float(data["curve"][1]) == float("inf")


def test_every_pt_and_npz_has_a_checksum_that_matches(finished):
    from utils.io import CHECKSUM_SUFFIX, sha256_of

    _, out = finished
    files = [p for p in out.rglob("*") if p.suffix in (".pt", ".npz")]
    assert len(files) >= 8
    for path in files:
        record = path.with_name(path.name + CHECKSUM_SUFFIX).read_text().split()
        assert record == [sha256_of(path), path.name]


# ---- results of other weights or versions are never reused

def test_other_weights_under_the_same_settings_redo_every_later_result(damaged, capsys):
    """A retrain may give other weights under the same settings (a GPU, another library version)."""
    import torch
    from models.checkpoint import read_checkpoint
    from utils.io import save_torch

    config, out = damaged
    folder = out / RUN
    checkpoint = read_checkpoint(folder / "checkpoint.pt")
    checkpoint["model"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in checkpoint["model"].items()}
    save_torch(folder / "checkpoint.pt", checkpoint)
    capsys.readouterr()
    assert main(config, out, "--stages", "sharpness,landscape,report") == 0
    printed = capsys.readouterr().out
    assert "exp/a/seed-42: sharpness already measured" not in printed
    assert "exp/a/seed-42: init -> final interpolation already measured" not in printed
    assert "exp/a/seed-42: 2D landscape already measured" not in printed
    assert "exp: a -> b, seed 42: barrier" in printed
    assert "exp/b/seed-42: sharpness already measured" in printed  # the other run is untouched
    assert "## Missing" not in (out / "exp" / "report.md").read_text()


def test_an_interpolation_of_an_older_version_is_made_again(damaged, capsys):
    config, out = damaged
    path = out / RUN / "interpolation.json"
    data = json.loads(path.read_text())
    del data["checkpoint"]
    path.write_text(json.dumps(data))
    assert main(config, out, "--stages", "landscape,report") == 0
    assert "checkpoint" in json.loads(path.read_text())
    assert "## Missing" not in (out / "exp" / "report.md").read_text()


def test_landscape_for_some_runs_keeps_the_pairs_of_the_others(tmp_path):
    config = write_experiment(tmp_path)
    text = (tmp_path / "exp.yaml").read_text() + "  c: {train: {batch_size: 4}}\n"
    (tmp_path / "exp.yaml").write_text(text)
    out = tmp_path / "out"
    assert main(config, out, "--stages", "train,landscape") == 0
    assert main(config, out, "--stages", "landscape", "--runs", "a", "b", "--force") == 0
    pairs = json.loads((out / "exp" / "interpolation.json").read_text())["pairs"]
    assert sorted(tuple(p["runs"]) for p in pairs) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_the_report_warns_when_the_config_changed_since_the_results(damaged, capsys):
    config, out = damaged
    config.write_text(config.read_text().replace("a: {train: {batch_size: 8}}", "a: {train: {batch_size: 2}}"))
    assert main(config, out, "--stages", "report") == 0
    assert "run a's settings differ from those in experiment.json" in capsys.readouterr().out


def test_a_later_stage_of_an_experiment_never_trained_writes_nothing(tmp_path, capsys):
    config = write_experiment(tmp_path)
    assert main(config, tmp_path / "out", "--stages", "report") == 1
    assert "run the train stage first" in error_line(capsys)
    assert not (tmp_path / "out").exists()


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


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KB file system: a tiny run's tokenizer and init.pt fit (157 KB), its checkpoint.pt does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root in a mount namespace that allows it")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_exits_2_and_leaves_no_temporary_file(tmp_path, small_disk, capsys):
    config = write_experiment(tmp_path)
    assert main(config, small_disk / "out", "--stages", "train", "--runs", "a") == 2
    line = error_line(capsys)
    assert "the disk is full" in line and ".pt" in line, line
    assert not [p for p in small_disk.rglob("*") if ".tmp" in p.name]


def test_a_read_only_file_system_exits_2_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    """What a read-only mount answers when a file is created in it (root cannot be refused otherwise)."""
    import utils.io

    config = write_experiment(tmp_path)
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT and str(path).endswith(".tmp"):  # every file the project writes starts so
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(utils.io.os, "open", read_only)
    assert main(config, tmp_path / "out", "--stages", "train", "--runs", "a") == 2
    assert "the file system is read-only" in error_line(capsys)
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

def test_a_log_file_gets_whole_lines_not_carriage_returns(tmp_path):
    """`run.py ... > log 2>&1` (CI, nohup): no '\\r' updates, a line per epoch and per result."""
    config = write_experiment(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    with open(tmp_path / "log", "w") as log:  # 48 steps and 4 sharpness loops: a redraw per step would show
        done = subprocess.run([sys.executable, "run.py", "--config", str(config), "--output", str(tmp_path / "out"),
                               "--stages", "train,sharpness", "--runs", "a", "--set", "train.batch_size=1"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900)
    assert done.returncode == 0
    text = (tmp_path / "log").read_text()
    assert "\r" not in text
    assert "epoch 1/1: train loss" in text and "lambda_max" in text
    assert len(text.splitlines()) <= 8, text


def test_a_long_loop_in_a_log_file_reports_a_line_every_interval(monkeypatch, capsys):
    import time
    import utils.progress

    monkeypatch.setattr(utils.progress, "LOG_INTERVAL_S", 0.05)
    for _ in utils.progress.progress(range(20), desc="long loop", disable=False):  # the suite sets TQDM_DISABLE
        time.sleep(0.02)
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 10 and all(line.startswith("long loop:") for line in lines), lines
