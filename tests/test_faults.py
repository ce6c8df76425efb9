"""Faults a user can cause: each ends quickly with one clear line (exit 2 for configuration errors)."""

from __future__ import annotations

import contextlib
import json
import signal
import typing

import pytest

import run
from data.corpus import BUILTIN_LONGEST_TEXT, filter_texts, load_texts
from utils.config import (DataConfig, LandscapeConfig, ModelConfig, SharpnessConfig, TrainConfig, all_keys,
                          load_experiment)
from utils.errors import ConfigError


def cli(args, tmp_path, capsys):
    """run.py's main: (exit code, stderr, output folder)."""
    out = tmp_path / "out"
    code = run.main([*args, "--output", str(out)])
    return code, capsys.readouterr().err.strip(), out


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging) if the block runs longer than `seconds`."""
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
    with deadline(5), pytest.raises(ConfigError, match=rf"data.min_text_length: the builtin corpus has no line "
                                                        rf"longer than {BUILTIN_LONGEST_TEXT} characters, got "
                                                        rf"{BUILTIN_LONGEST_TEXT}$"):
        load_texts(DataConfig(source="builtin", min_text_length=BUILTIN_LONGEST_TEXT))


def test_a_builtin_filter_that_keeps_nothing_ends_in_seconds_with_exit_2(write_config, tmp_path, capsys):
    path = write_config(f"data: {{min_text_length: {BUILTIN_LONGEST_TEXT - 1}}}\n")  # possible, but never drawn
    with deadline(60):
        code, err, _ = cli(["--config", str(path), "--stages", "train"], tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err == (f"error: data.min_text_length: train texts longer than {BUILTIN_LONGEST_TEXT - 1} characters are "
                   "too rare in the builtin corpus (0 of the 48 that data.n_train asks for, then none in 100,000 lines "
                   "in a row); lower data.min_text_length or data.n_train")


def test_filter_patience_stops_an_endless_stream():
    lines = iter(lambda: " too short ", None)  # endless
    with deadline(5):
        assert filter_texts(lines, 50, 10, patience=1000) == []
    assert filter_texts(["a" * 60, "b", "c", "d" * 60], 50, 10, patience=2) == ["a" * 60]
    assert filter_texts(["a" * 60, "b", "c", "d" * 60], 50, 10, patience=3) == ["a" * 60, "d" * 60]


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
    code, err, out = cli(["--config", str(path), "--stages", "train"], tmp_path, capsys)
    assert code == 0
    assert "warning: data.n_train asks for 48 texts; the train split has 20 after filtering" in err.splitlines()
    assert "warning: data.n_test asks for 16 texts; the test split has 5 after filtering" in err.splitlines()
    assert not any("n_val" in line for line in err.splitlines())
    metrics = json.loads(next(out.glob("*/*/seed-*/metrics.json")).read_text())
    assert metrics["texts"] == {"train": {"asked": 48, "got": 20}, "validation": {"asked": 16, "got": 16},
                                "test": {"asked": 16, "got": 5}}


def test_texts_counts_what_was_asked_and_got():
    texts = load_texts(DataConfig(source="builtin", n_train=7, n_val=2, n_test=3))
    assert texts.counts() == {"train": {"asked": 7, "got": 7}, "validation": {"asked": 2, "got": 2},
                              "test": {"asked": 3, "got": 3}}
