"""model.base_run: a run that starts from another run's trained weights and tokenizer (a tiny "pretrained" model
for fine-tuning offline), trained after it, and trained again when the base's weights change."""

from __future__ import annotations

import json

import pytest
import torch

from optimization.train_stage import train_stage
from pipeline import run_experiment
from config.loading import load_experiment
from utils.errors import ConfigError, UserError
from models.runs import run_dir, trained_runs, trained_with, training_fingerprint

# Listed before their base, which must still train first; the base has other texts than the runs on it.
pytestmark = pytest.mark.usefixtures("figures_not_drawn")  # what the figures show is test_report's to check
RUNS = """
runs:
  full: {model: {base_run: base}}
  lora: {train: {lr: 0.05}, model: {base_run: base, adapter: {type: lora, r: 2, alpha: 4}}}
  base: {data: {n_train: 64}}
"""


def folders(experiment, out) -> dict:
    return {run.name: run_dir(out, experiment, run) for run in experiment.jobs()}


def metrics_of(folder) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_runs_start_from_their_base_after_it_trains(write_config, tmp_path):
    experiment = load_experiment(write_config(RUNS))
    train_stage(experiment, tmp_path, force=False)
    folder = folders(experiment, tmp_path)
    base = torch.load(folder["base"] / "checkpoint.pt", weights_only=True)["model"]
    for name in ("full", "lora"):
        init = torch.load(folder[name] / "init.pt", weights_only=True)["model"]
        frozen = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in init.items()
                  if "lora_" not in k}
        assert frozen.keys() == base.keys() and all(torch.equal(frozen[k], base[k]) for k in base), name
        # The base's tokenizer, not one trained on this run's (fewer) texts.
        assert (folder[name] / "tokenizer" / "tokenizer.json").read_text() == \
            (folder["base"] / "tokenizer" / "tokenizer.json").read_text()
        assert metrics_of(folder[name])["started_from"] == {"run": "base", "weights": trained_with(folder["base"])}
        # Training moved on from there: its first validation is the base's last, on these texts.
        assert metrics_of(folder[name])["val_loss"][-1] < metrics_of(folder[name])["init_val_loss"]
    assert "started_from" not in metrics_of(folder["base"])
    assert len(trained_runs(experiment, tmp_path)) == 3


def test_a_base_trained_again_to_other_weights_trains_its_runs_again(write_config, tmp_path):
    path = write_config(RUNS)
    experiment = load_experiment(path)
    train_stage(experiment, tmp_path, force=False)
    folder = folders(experiment, tmp_path)
    before = {name: trained_with(f) for name, f in folder.items()}
    train_stage(load_experiment(path, runs=["base"]), tmp_path, force=True)  # the same weights again (CPU)
    train_stage(experiment, tmp_path, force=False)
    assert {name: trained_with(f) for name, f in folder.items()} == before  # nothing to redo

    changed = write_config(RUNS.replace("base: {data: {n_train: 64}}", "base: {data: {n_train: 64}, train: {lr: 0.2}}"))
    train_stage(load_experiment(changed, runs=["base"]), tmp_path, force=False)
    with pytest.raises(UserError, match="started from other weights than its base run base holds now"):
        trained_runs(load_experiment(changed), tmp_path)
    train_stage(load_experiment(changed), tmp_path, force=False)
    for name in ("full", "lora"):
        assert trained_with(folder[name]) != before[name]
        assert metrics_of(folder[name])["started_from"]["weights"] == trained_with(folder["base"])


def test_a_run_whose_base_is_not_trained_is_one_clear_error(write_config, tmp_path):
    experiment = load_experiment(write_config(RUNS), runs=["full"])
    with pytest.raises(UserError, match="model.base_run base: .* holds no trained run; train it first"):
        run_experiment(experiment, ["train"], tmp_path)


@pytest.mark.parametrize("runs, message", [
    ("a: {model: {base_run: nothing}}", "no run named 'nothing' in this experiment"),
    ("a: {model: {base_run: a}}", r"in a circle: a -> a"),
    ("a: {model: {base_run: b}}\n  b: {model: {base_run: a}}", r"in a circle: a -> b -> a"),
    ("a: {model: {base_run: b}}\n  b: {model: {bpe_vocab_size: 400}}",
     "run a's model.bpe_vocab_size is 300 but its base run b's is 400; a run keeps its base's model"),
    ("a: {model: {base_run: b}}\n  b: {search: {n_trials: 2, space: {train.lr: [0.1, 0.2]}}}", "is a search"),
])
def test_a_bad_base_run_is_a_config_error(write_config, runs, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_experiment(write_config(f"runs:\n  {runs}\n"))
    assert "model.base_run" in str(caught.value)


def test_base_run_enters_the_fingerprint_only_when_set(write_config):
    experiment = load_experiment(write_config(RUNS))
    by_name = {run.name: run for run in experiment.runs}
    plain = load_experiment(write_config("data: {n_train: 64}\n")).runs[0]
    assert training_fingerprint(by_name["base"]) == training_fingerprint(plain)
    assert training_fingerprint(by_name["full"]) != training_fingerprint(load_experiment(write_config()).runs[0])


def test_lines_between_runs_that_see_other_texts_are_listed_not_drawn(write_config, tmp_path):
    """base trains on 64 texts, the runs on it on 48: their measurement texts differ, so the landscape stage draws
    the line between full and lora, lists the pairs with base as incomparable, and the report names them."""
    path = write_config(RUNS + "landscape: {resolution: 3, points: 3, eval_batches: 2, eval_batch_size: 4}\n")
    run_experiment(load_experiment(path), ["train", "landscape", "report"], tmp_path)
    lines = json.loads((tmp_path / "exp" / "interpolation.json").read_text())
    assert [pair["runs"] for pair in lines["pairs"]] == [["full", "lora"]]
    assert sorted(pair["runs"] for pair in lines["incomparable"]) == [["full", "base"], ["lora", "base"]]
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "No line between runs that see different texts" in report and "full → base, seed 42" in report
    assert "interpolation full → base" not in report  # not listed as missing
