"""Configuration: typed loading, overrides, and one-line errors (exit 2) before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

import run
from config.loading import load_experiment
from utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def run_cli(args, tmp_path, capsys):
    out = tmp_path / "out"
    code = run.main([*args, "--output", str(out)])
    err = capsys.readouterr().err.strip()
    return code, err, out


@pytest.mark.parametrize("body, expected", [
    ("train:\n  optimzer: adamw\n", "train.optimzer: unknown key (did you mean train.optimizer?)"),
    ("train:\n  lr: fast\n", "train.lr: expected a number, got 'fast'"),
    ("train:\n  batch_size: 4.5\n", "train.batch_size: expected an integer"),
    ("train:\n  lr: -0.1\n", "train.lr: must be > 0"),
    ("data:\n  order: shuffled\n", "data.order: must be one of 'random', 'sorted'"),
    ("train: [1, 2\n", "invalid YAML (line"),
    ("runs:\n  a:\n    train: {momentum: 1.5}\n", "runs.a.train.momentum: must be < 1"),
    ("runs:\n  a:\n    trian: {lr: 1}\n", "runs.a.trian: unknown key (did you mean runs.a.train"),
    ("data:\n  source: local\n  path: /no/such/folder\n", "data.path: folder not found"),
    ("model:\n  config: {n_embd: 30, n_head: 4}\n", "must be divisible by n_head"),
    ("model:\n  config: {n_layers: 2}\n", "'n_layers' is not a GPT2Config field"),
    ("seeds: [1, 1]\n", "seeds must be distinct"),
    ("stages: [train, sharpnes]\n", "stages: unknown stage 'sharpnes'"),
    ("stages: [train, train]\n", "stages: each stage may be listed once"),
    ("train:\n  betas: [0.9]\n", "train.betas: expected two numbers"),
    ("train:\n  betas: [0.9, 1.0]\n", "train.betas: must be < 1"),
    ("train:\n  rotation: random\n", "train.rotation: must be one of 'none', 'global', 'per-layer'"),
    ("geometry:\n  bootstrap: 1\n", "geometry.bootstrap: one resample has no spread"),
    ("geometry:\n  cauchy_vectors: 4611686018427387904\n", "geometry.cauchy_vectors: must be <= 100000"),  # 2^62
    ("geometry:\n  cauchy_vectors: 1000000000000\n", "geometry.cauchy_vectors: must be <= 100000"),
    ("geometry:\n  cauchy_vectors: 1.0e+20\n", "geometry.cauchy_vectors: expected an integer"),
    ("geometry:\n  cauchy_vectors: 1e12\n", "geometry.cauchy_vectors: expected an integer"),
])
def test_bad_config_exits_2_naming_file_and_key(write_config, tmp_path, capsys, body, expected):
    path = write_config(body)
    code, err, out = run_cli(["--config", str(path)], tmp_path, capsys)
    assert code == 2
    assert expected in err
    assert str(path.name) in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_missing_file_and_bad_overrides_exit_2(tmp_path, capsys, write_config):
    code, err, out = run_cli(["--config", str(tmp_path / "nope.yaml")], tmp_path, capsys)
    assert code == 2 and "config file not found" in err and not out.exists()
    path = write_config()
    code, err, _ = run_cli(["--config", str(path), "--set", "train.optimzer=sgd"], tmp_path, capsys)
    assert code == 2 and "--set: train.optimzer: unknown key (did you mean train.optimizer?)" in err
    code, err, _ = run_cli(["--config", str(path), "--set", "train.epochs=two"], tmp_path, capsys)
    assert code == 2 and "--set train.epochs: expected an integer" in err
    code, err, _ = run_cli(["--config", str(path), "--stages", "train,sharpnes"], tmp_path, capsys)
    assert code == 2 and "unknown stage 'sharpnes'" in err
    code, err, _ = run_cli(["--config", str(path), "--runs", "nope"], tmp_path, capsys)
    assert code == 2 and "no run named 'nope'" in err
    assert not (tmp_path / "out").exists()


def test_layers_apply_in_order(write_config):
    path = write_config("""
        train: {lr: 1e-2, batch_size: 4}
        model: {config: {n_layer: 3}}
        seeds: [1, 2]
        runs:
          a: {train: {lr: 0.5}}
          b: {model: {config: {n_embd: 64}}}
    """)
    exp = load_experiment(path, ["train.batch_size=16"])
    a, b = exp.runs
    assert (a.name, a.train.lr, a.train.batch_size) == ("a", 0.5, 16)
    assert b.train.lr == 0.01  # "1e-2" (a string in YAML 1.1) is typed as a float by the schema
    assert b.model.config == {"n_layer": 3, "n_embd": 64, "n_head": 2, "n_positions": 32}
    assert [(j.name, j.seed) for j in exp.jobs()] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert exp.name == "exp"


def test_shipped_configs_load_with_the_studys_settings():
    base = load_experiment(REPO / "config" / "base.yaml").runs[0]
    assert (base.data.subset, base.model.name, base.data.max_length, base.data.min_text_length) == \
        ("wikitext-2-raw-v1", "distilgpt2", 128, 50)
    assert (base.data.n_train, base.data.n_val, base.data.n_test, base.seed, base.train.epochs) == (1000, 100, 100, 42, 60)

    def settings(name):
        return [(r.name, r.train.optimizer, r.train.lr, r.train.batch_size, r.train.weight_decay, r.data.order)
                for r in load_experiment(REPO / "config" / f"{name}.yaml").runs]

    assert settings("exp1") == [("bs4", "sgd", 1e-3, 4, 0.0, "random"), ("bs24-wd", "sgd", 1e-3, 24, 5e-4, "random")]
    assert settings("exp2") == [("bs1", "adamw", 1e-4, 1, 5e-4, "random"), ("bs32", "adamw", 1e-4, 32, 5e-4, "random")]
    assert settings("exp3") == [("random", "sgd", 1e-3, 4, 5e-4, "random"), ("sorted", "sgd", 1e-3, 4, 5e-4, "sorted")]
    quick = load_experiment(REPO / "config" / "quickstart.yaml")
    assert quick.name == "quickstart" and quick.runs[0].data.source == "builtin"
    assert quick.runs[0].train.batch_size < quick.runs[1].train.batch_size


def test_config_error_is_a_config_error(write_config):
    with pytest.raises(ConfigError):
        load_experiment(write_config("device: tpu\n"))


def test_docs_config_md_is_the_reference_generated_from_the_schema():
    from config.docs import REGENERATE, config_reference
    from config.schema import all_keys

    reference = config_reference()
    assert all(f"| `{key}` |" in reference for key in all_keys())
    assert (REPO / "docs" / "config.md").read_text(encoding="utf-8") == reference, \
        f"docs/config.md is not the schema's reference; regenerate it with: {REGENERATE}"


def test_stages_come_from_the_command_line_else_the_config_else_the_default(write_config):
    from pipeline import DEFAULT_STAGES, experiment_stages

    plain = load_experiment(write_config())
    assert experiment_stages(plain, None) == DEFAULT_STAGES and "geometry" not in DEFAULT_STAGES
    listed = load_experiment(write_config("stages: [report, geometry, train]\n"))
    assert experiment_stages(listed, None) == ["train", "geometry", "report"]  # the registry's order
    assert experiment_stages(listed, "train") == ["train"]
    assert load_experiment(write_config(), ["stages=[train,geometry]"]).stages == ["train", "geometry"]
    searching = load_experiment(write_config("search: {n_trials: 2, space: {train.lr: [0.1, 0.2]}}\n"))
    assert experiment_stages(searching, None) == ["train", "search", "sharpness", "landscape", "report"]

