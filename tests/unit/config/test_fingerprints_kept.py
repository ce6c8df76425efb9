"""Runs trained before a change keep their training fingerprints, so finished runs are not trained again.

The hex strings below are models.runs.training_fingerprint of every job of the shipped experiments, computed
before the training settings' dependencies moved into the schema's marks (config.schema.option's `added` and
`result`); they must never change. Settings that came later (train.betas, eps, rotation, rotation_seed) enter
the hash only when they change the weights, and what training writes besides the weights (track, trajectory,
budget, adapter, base_run) only when it is on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from config.loading import load_experiment
from models.runs import training_fingerprint

REPO = Path(__file__).resolve().parents[3]

KEPT = {
    "exp1": {"bs4/42": "fd0786f44be77610", "bs24-wd/42": "5b0802d26bb77956"},
    "exp2": {"bs1/42": "8d3fbed4a047aced", "bs32/42": "928cedd13857d760"},
    "exp3": {"random/42": "8ba52ad258abce8b", "sorted/42": "39ba85131c3fc37f"},
    "exp4-geometry-small": {
        "adam/42": "5ba0a15df72632a9", "adam-rotated/42": "67ede9e49b1f53b9",
        "adasgd/42": "ebf1b240ba8e6716", "adasgd-rotated/42": "8201be32e2269120",
        "signsgd/42": "0fb160210afda127", "signsgd-rotated/42": "15f6e3e904b36da6",
        "sgd/42": "4579743da9c8017f", "sgd-rotated/42": "cf77130b977bbae3"},
    "exp5-dynamics-small": {"sgd/42": "56584f527cefae5b", "adam/42": "c25506adbed349eb"},
    "exp6-peft-small": {"full/42": "021fde1d865d0e30", "lora-r2/42": "7276dfcd4301d0d0",
                        "lora-r8/42": "a1ed720ddb520924", "base/42": "27de6342bdb99187"},
    "exp8-flatness-small": {
        "optimizer=adamw_lr=0.003_batch_size=4/0": "52d619f054ae868d",
        "optimizer=adamw_lr=0.003_batch_size=4/1": "73b95ccc8ebdab73",
        "optimizer=adamw_lr=0.003_batch_size=16/0": "ed48073d383b99ac",
        "optimizer=adamw_lr=0.003_batch_size=16/1": "9f533c880512aec2",
        "optimizer=adamw_lr=0.01_batch_size=4/0": "7e67c53b570c670d",
        "optimizer=adamw_lr=0.01_batch_size=4/1": "5fbd9c2dc46e2321",
        "optimizer=adamw_lr=0.01_batch_size=16/0": "792138f794cff35a",
        "optimizer=adamw_lr=0.01_batch_size=16/1": "766e309d74126f5d",
        "optimizer=signsgd_lr=0.003_batch_size=4/0": "941a25462c822f25",
        "optimizer=signsgd_lr=0.003_batch_size=4/1": "25d3b83dfa4826ff",
        "optimizer=signsgd_lr=0.003_batch_size=16/0": "e2cccc63936d32a7",
        "optimizer=signsgd_lr=0.003_batch_size=16/1": "a1b8f0b563e3d6d8",
        "optimizer=signsgd_lr=0.01_batch_size=4/0": "f91b31c671944473",
        "optimizer=signsgd_lr=0.01_batch_size=4/1": "c13c695be2659d8f",
        "optimizer=signsgd_lr=0.01_batch_size=16/0": "c0faae30463febab",
        "optimizer=signsgd_lr=0.01_batch_size=16/1": "2ef3f95836054eb8"},
    "quickstart": {"small-batch/42": "321f8746081f9434", "large-batch/42": "454ddd404b6e8d03"},
}


@pytest.mark.parametrize("name", sorted(KEPT))
def test_shipped_experiments_keep_their_training_fingerprints(name):
    jobs = load_experiment(REPO / "config" / f"{name}.yaml").jobs()
    assert {f"{run.name}/{run.seed}": training_fingerprint(run) for run in jobs} == KEPT[name]


def exp1_sgd():
    return load_experiment(REPO / "config" / "exp1.yaml").jobs()[0]


def with_train(run, **values):
    return replace(run, train=replace(run.train, **values))


def test_settings_that_cannot_change_the_weights_leave_the_fingerprint_alone():
    sgd = exp1_sgd()
    kept = KEPT["exp1"]["bs4/42"]
    for optimizer in ("sgd", "signsgd"):  # betas and eps belong to the Adam family
        run = with_train(sgd, optimizer=optimizer)
        assert training_fingerprint(with_train(run, betas=[0.5, 0.9], eps=1e-6)) == training_fingerprint(run)
    assert training_fingerprint(with_train(sgd, rotation_seed=3)) == kept  # no rotation to draw
    assert training_fingerprint(with_train(sgd, compile=True)) == kept
    assert training_fingerprint(replace(sgd, logging=replace(sgd.logging, backend="tensorboard", every=1))) == kept
    quiet_track = replace(sgd.train.track, iters=7, tol=0.5, trace_samples=3, seed=9, metrics=["trace"])
    assert training_fingerprint(with_train(sgd, track=quiet_track)) == kept  # track.every 0: no track
    assert training_fingerprint(replace(sgd, model=replace(sgd.model, adapter=replace(sgd.model.adapter, r=2)))) == kept
    assert training_fingerprint(replace(sgd, sharpness=replace(sgd.sharpness, batches=9))) == kept  # nothing tracked


def test_settings_that_change_the_weights_or_what_training_writes_keep_their_old_hashes():
    sgd = exp1_sgd()
    adam = with_train(sgd, optimizer="adam")
    tracked = with_train(sgd, track=replace(sgd.train.track, every=5))
    lora = replace(sgd, model=replace(sgd.model, adapter=replace(sgd.model.adapter, type="lora")))
    assert {
        "adam": training_fingerprint(adam),
        "adam betas": training_fingerprint(with_train(adam, betas=[0.5, 0.9])),
        "adam eps": training_fingerprint(with_train(adam, eps=1e-6)),
        "global": training_fingerprint(with_train(sgd, rotation="global")),
        "global seed 3": training_fingerprint(with_train(sgd, rotation="global", rotation_seed=3)),
        "track 5": training_fingerprint(tracked),
        "trajectory 5": training_fingerprint(with_train(sgd, trajectory=replace(sgd.train.trajectory, every=5))),
        "budget": training_fingerprint(with_train(sgd, budget=replace(sgd.train.budget, flops=1e12))),
        "lora": training_fingerprint(lora),
        "base_run": training_fingerprint(replace(sgd, model=replace(sgd.model, base_run="x"))),
    } == {
        "adam": "1a21f8108bd731fc", "adam betas": "96baeca249cddbe3", "adam eps": "87c4046607a92859",
        "global": "469b5089d0edfec8", "global seed 3": "2e34ad30a19ca0ed", "track 5": "19c3b31e163b8124",
        "trajectory 5": "e23ffec50381b7c1", "budget": "eb318642bd18f18a", "lora": "5d3698bac9f06861",
        "base_run": "00811860c2275a6b",
    }
    # a tracked training is measured on the sharpness measurement set, and only its texts matter
    assert training_fingerprint(replace(tracked, sharpness=replace(tracked.sharpness, batches=9))) != \
        training_fingerprint(tracked)
    assert training_fingerprint(replace(tracked, sharpness=replace(tracked.sharpness, top_k=9))) == \
        training_fingerprint(tracked)
