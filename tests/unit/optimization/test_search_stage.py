"""The search stage: Optuna studies whose trials are runs, shared by concurrent workers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import optimization.search_stage as search
import run
from optimization.study_storage import storage_url
from pipeline import run_experiment
from config.loading import load_experiment
from utils.errors import ConfigError, UserError
from utils.io import read_json
from models.runs import with_trials
from tests.conftest import SEARCH, exit_status, forked_run_py, still_running  # SEARCH: TINY's two epochs


def trials_of(folder: Path, study: str = "default") -> list[dict]:
    return read_json(folder / "search.json")["studies"][study]["trials"]


def test_trials_are_runs_and_the_study_has_n_trials(write_config, tmp_path, figures_not_drawn):
    """4 trials, each a trained run folder listed in experiment.json; each value is the trial's lowest
    validation loss; the best is the lowest; a second invocation trains nothing more. (What the report's figures
    show is test_plots' and test_exp7's to check.)"""
    path = write_config(SEARCH + "  pruner: median\n")
    out = tmp_path / "out"
    run_experiment(load_experiment(path), ["search"], out)
    folder = out / "exp"
    trials = trials_of(folder)
    assert [t["number"] for t in trials] == [0, 1, 2, 3] and all(t["counted"] for t in trials)
    assert [t["run"] for t in trials] == ["t000", "t001", "t002", "t003"]
    manifest = read_json(folder / "experiment.json")
    assert manifest["trials"] == {f"t00{i}": "default" for i in range(4)} and manifest["runs"] == list(manifest["trials"])
    for trial in trials:
        metrics = read_json(folder / trial["run"] / "seed-42" / "metrics.json")
        assert metrics["config"]["train"]["lr"] == pytest.approx(trial["params"]["train.lr"])
        assert metrics["config"]["train"]["batch_size"] == trial["params"]["train.batch_size"]
        assert metrics["config"]["search"]["n_trials"] == 0  # a trial is a plain run
        if trial["state"] == "complete":
            assert trial["value"] == pytest.approx(min(metrics["val_loss"]))
        else:  # stopped by the median pruner after its first epoch
            assert trial["state"] == "pruned" and metrics["pruned"]["epoch"] == trial["pruned_at_epoch"] == 1
            assert len(metrics["val_loss"]) == 1
    complete = [t for t in trials if t["state"] == "complete"]
    best = read_json(folder / "search.json")["studies"]["default"]["best"]
    assert best["value"] == min(t["value"] for t in complete)
    run_experiment(load_experiment(path), ["report"], out)
    report = (folder / "report.md").read_text()
    assert "## Hyper-parameter search" in report and f"| default | tpe | 0 | 4 |" in report
    assert (folder / "figures" / "search_convergence.png").is_file()
    before = {t["run"]: (folder / t["run"] / "seed-42" / "metrics.json").stat().st_mtime_ns for t in trials}
    run_experiment(load_experiment(path), ["search"], out)
    assert len(trials_of(folder)) == 4
    assert before == {t["run"]: (folder / t["run"] / "seed-42" / "metrics.json").stat().st_mtime_ns for t in trials}


def test_later_stages_see_the_trials_and_runs_picks_them(write_config, tmp_path):
    """After the search, a stage sees its trials as runs; --runs t001 picks one; an unknown trial is one error."""
    path = write_config(SEARCH.replace("n_trials: 4", "n_trials: 2") +
                        "sharpness: {batches: 1, batch_size: 4, max_iter: 4, random_directions: 1, "
                        "worst_case_steps: 1, trace_samples: 1}\n")
    out = tmp_path / "out"
    run_experiment(load_experiment(path), ["search"], out)
    assert [run.name for run in with_trials(load_experiment(path), out).jobs()] == ["t000", "t001"]
    run_experiment(load_experiment(path, runs=["t001"]), ["sharpness"], out)
    assert (out / "exp" / "t001" / "seed-42" / "sharpness.json").is_file()
    assert not (out / "exp" / "t000" / "seed-42" / "sharpness.json").exists()
    with pytest.raises(UserError, match="no run or trained trial named 't009'"):
        run_experiment(load_experiment(path, runs=["t009"]), ["sharpness"], out)
    with pytest.raises(ConfigError, match="--runs names no search run"):
        run_experiment(load_experiment(path, runs=["t001"]), ["search"], out)


def test_a_diverged_trial_fails_counts_and_the_search_goes_on(write_config, tmp_path):
    """A trial whose loss becomes NaN is recorded as failed with its error, counts toward n_trials, and the
    study goes on to the next trial."""
    path = write_config(SEARCH.replace("n_trials: 4", "n_trials: 3").replace(
        "train.lr: {loguniform: [0.01, 1.0]}", "train.lr: [0.1, 1.0e+30]").replace("train.batch_size: [4, 8]", "")
        + "  sampler: grid\n")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="the grid has 2 points"):
        load_experiment(path)
    path.write_text(path.read_text().replace("n_trials: 3", "n_trials: 2"))
    run_experiment(load_experiment(path), ["search"], out)
    trials = {t["params"]["train.lr"]: t for t in trials_of(out / "exp")}
    assert trials[1e30]["state"] == "fail" and "loss became" in trials[1e30]["error"] and trials[1e30]["counted"]
    assert trials[0.1]["state"] == "complete"
    assert list(read_json(out / "exp" / "experiment.json")["trials"]) == [trials[0.1]["run"]]  # trained trials only


def test_a_changed_search_is_one_clear_error(write_config, tmp_path):
    """The study remembers what it was made with: another objective (or space) for the same study name is an
    error that says how to start another study; a larger n_trials continues the study."""
    path = write_config(SEARCH.replace("n_trials: 4", "n_trials: 1"))
    out = tmp_path / "out"
    run_experiment(load_experiment(path), ["search"], out)
    with pytest.raises(UserError, match="made with other search.objective; set search.study"):
        run_experiment(load_experiment(path, ["search.objective=final_val_loss"]), ["search"], out)
    run_experiment(load_experiment(path, ["search.n_trials=2"]), ["search"], out)
    assert [t["run"] for t in trials_of(out / "exp")] == ["t000", "t001"]


def opened_study(write_config, tmp_path, n_trials: int):
    """(the experiment of SEARCH with n_trials, its output folder, its study opened as a worker would)."""
    experiment = load_experiment(write_config(SEARCH.replace("n_trials: 4", f"n_trials: {n_trials}")))
    folder = tmp_path / "out" / "exp"
    folder.mkdir(parents=True)
    return experiment, tmp_path / "out", search._open_study(experiment, experiment.runs[0], folder)


def test_a_draw_past_n_trials_is_surplus_and_trains_nothing(write_config, tmp_path, monkeypatch):
    """When another worker holds the last trial, a worker's draw past n_trials is marked surplus, trains
    nothing and does not count."""
    import optuna

    experiment, out, other = opened_study(write_config, tmp_path, n_trials=1)
    folder = out / "exp"
    other.ask()  # trial 0, running in "another worker"
    monkeypatch.setattr(search, "_counted", lambda study: 0)  # as if this worker looked before trial 0 existed
    search.run_study(experiment, experiment.runs[0], out)
    trials = optuna.load_study(study_name="exp.default", storage=storage_url(experiment.runs[0], folder)).trials
    assert trials[1].user_attrs["surplus"] and trials[1].state.name == "PRUNED" and "run" not in trials[1].user_attrs
    assert not (folder / "t001").exists()
    assert read_json(folder / "search.json")["studies"]["default"]["counted"] == 1


@pytest.mark.parametrize("storage", ["", "journal:search.journal"])
def test_two_workers_share_one_study(write_config, tmp_path, capsys, monkeypatch, storage):
    """Two workers of one SQLite file (or one journal file), run.py's main in a process forked from this one and in
    this one: n_trials in all, every trial trained once, by one of them. This one trains its first trial once both
    have claimed one, so that both work however fast each starts; one epoch a trial, as which worker trains a trial
    does not depend on how long it trains."""
    path = write_config("train: {epochs: 1}\n" + SEARCH.replace("n_trials: 4", "n_trials: 6") +
                        f"  storage: '{storage}'\n")
    out = tmp_path / "out"
    argv = ["--config", str(path), "--stages", "search", "--output", str(out)]
    worker = forked_run_py(argv, tmp_path / "worker.log", tmp_path / "worker.err")
    train = search.train_run

    def train_once_both_work(run, folder, **kwargs):
        while not (out / "exp" / "t001").is_dir() and still_running(worker):  # t000 and t001: one each
            time.sleep(0.01)
        return train(run, folder, **kwargs)

    monkeypatch.setattr(search, "train_run", train_once_both_work)
    capsys.readouterr()
    assert run.main(argv) == 0, capsys.readouterr().err
    logs = ["".join(capsys.readouterr())]
    assert exit_status(worker) == 0, (tmp_path / "worker.err").read_text()[-3000:]  # the end, where the error is
    logs.append((tmp_path / "worker.log").read_text())
    trials = [t for t in trials_of(out / "exp") if t["counted"]]
    assert len(trials) == 6 and all(t["state"] == "complete" for t in trials)
    trained = [line.split(":")[0] for log in logs for line in log.splitlines() if ": done; test loss" in line]
    assert sorted(trained) == sorted(f"exp/{t['run']}/seed-42" for t in trials)  # each once, by one worker
    assert all(any(": done; test loss" in line for line in log.splitlines()) for log in logs), logs  # both worked
    assert sorted(read_json(out / "exp" / "experiment.json")["trials"]) == sorted(t["run"] for t in trials)
