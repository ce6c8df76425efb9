"""Geometry along the way, as stages: the spectral density in the sharpness stage (its own stamp), the saved
trajectory, the PCA plane of the landscape stage and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import run
from optimization.train_stage import train_stage
from sharpness.sharpness_stage import sharpness_stage
from utils.errors import UserError
from models.runs import run_dir
from visualization.landscape_stage import landscape_stage

CHEAP = """
sharpness: {batches: 2, batch_size: 4, max_iter: 6, epsilons: [1.0e-3], random_directions: 1, worst_case_steps: 1,
            trace_samples: 2, density: {probes: 2, steps: 8}}
landscape: {resolution: 3, points: 3, eval_batches: 1, eval_batch_size: 4}
"""


def test_the_density_has_its_own_stamp_and_leaves_sharpness_alone(tiny_experiment, tmp_path):
    exp = tiny_experiment("train: {epochs: 1}\n" + CHEAP)
    train_stage(exp, tmp_path, force=False)
    sharpness_stage(exp, tmp_path, force=False)
    folder = run_dir(tmp_path, exp, exp.runs[0])
    density = json.loads((folder / "density.json").read_text())
    sharp = json.loads((folder / "sharpness.json").read_text())
    assert density["matvecs"] == 16 and density["reorthogonalized"] and len(density["grid"]) == len(density["density"])
    assert np.trapezoid(density["density"], density["grid"]) == pytest.approx(1.0, abs=1e-3)
    assert "density" not in sharp["settings"]
    # the sharpness stamp does not depend on the density's settings: runs measured before it existed stay current
    plain = tiny_experiment("train: {epochs: 1}\n" + CHEAP.replace("density: {probes: 2, steps: 8}", "density: {probes: 0}"))
    stamp = sharp["fingerprint"]
    sharpness_stage(plain, tmp_path, force=False)
    assert json.loads((folder / "sharpness.json").read_text())["fingerprint"] == stamp

    sharp_written = (folder / "sharpness.json").stat().st_mtime_ns
    other = tiny_experiment("train: {epochs: 1}\n" + CHEAP.replace("steps: 8}", "steps: 6, reorthogonalize: none}"))
    sharpness_stage(other, tmp_path, force=False)  # only the density is measured again, without reorthogonalization
    redone = json.loads((folder / "density.json").read_text())
    assert redone["matvecs"] == 12 and not redone["reorthogonalized"]
    assert (folder / "sharpness.json").stat().st_mtime_ns == sharp_written


def test_the_trajectory_holds_every_nth_step_from_init(tiny_experiment, tmp_path):
    exp = tiny_experiment("train: {epochs: 2, trajectory: {every: 4}}\n")
    train_stage(exp, tmp_path, force=False)
    folder = run_dir(tmp_path, exp, exp.runs[0])
    index = json.loads((folder / "trajectory.json").read_text())
    assert index["steps"] == [0, 4, 8, 12]  # 6 steps per epoch, and the last
    rows = np.load(folder / "trajectory.npy")
    init, final = (torch.load(folder / name, weights_only=True)["model"] for name in ("init.pt", "checkpoint.pt"))
    names = [n for n, _ in torch.nn.Module.named_parameters(_model(folder))]
    delta = torch.cat([(final[n] - init[n]).reshape(-1) for n in names]).numpy()
    assert rows.dtype == np.float16 and not rows[0].any()
    assert np.allclose(rows[-1], delta, rtol=1e-3, atol=1e-7)
    assert json.loads((folder / "metrics.json").read_text())["trajectory"] == {"rows": 4, "bytes": rows.nbytes + 128}


def _model(folder):
    from models.checkpoint import load_trained
    return load_trained(folder / "checkpoint.pt").model


def test_pca_directions_need_a_trajectory_and_say_so(write_config, tiny_experiment, tmp_path, capsys):
    config = write_config("train: {epochs: 1}\nlandscape: {directions: pca, resolution: 3, points: 3, eval_batches: 1}\n")
    code = run.main(["--config", str(config), "--output", str(tmp_path / "out"), "--stages", "train,landscape"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "landscape.directions" in err[0] and "train.trajectory.every" in err[0]
    assert not (tmp_path / "out").exists()  # before any training
    # a trajectory that is gone by the time the landscape stage runs: one clear error too
    exp = tiny_experiment("train: {epochs: 1, trajectory: {every: 2}}\nlandscape: {directions: pca, resolution: 3, "
                          "points: 3, eval_batches: 1}\n")
    train_stage(exp, tmp_path, force=False)
    (run_dir(tmp_path, exp, exp.runs[0]) / "trajectory.npy").unlink()
    with pytest.raises(UserError, match=r"landscape.directions is pca.*train.trajectory.every > 0"):
        landscape_stage(exp, tmp_path, force=False)


def test_a_damaged_trajectory_names_the_command_that_makes_it_again(tiny_experiment, tmp_path):
    exp = tiny_experiment("train: {epochs: 1, trajectory: {every: 2}}\nlandscape: {directions: pca, resolution: 3, "
                          "points: 3, eval_batches: 1}\n")
    train_stage(exp, tmp_path, force=False)
    rows = run_dir(tmp_path, exp, exp.runs[0]) / "trajectory.npy"
    data = bytearray(rows.read_bytes())
    data[-1] ^= 0xFF
    rows.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"trajectory.npy.*--stages train.*--force"):
        landscape_stage(exp, tmp_path, force=False)


@pytest.mark.parametrize("dim, full", [(1000, True), (5000, False)])
def test_auto_reorthogonalizes_only_when_the_lanczos_basis_fits(dim, full):
    from sharpness.sharpness_stage import measure_density
    from config.schema import DensityConfig

    class Diagonal:  # what measure_density needs of an Objective
        def __init__(self):
            self.dim, self.device = dim, torch.device("cpu")
            self.base = torch.zeros(dim)
            self.scale = torch.linspace(-1.0, 4.0, dim)

        def hvp(self, v):
            return self.scale * v

    # 81 vectors of `dim` floats: 0.3 MiB (fits in 1 MiB) or 1.5 MiB (does not)
    result = measure_density(Diagonal(), DensityConfig(probes=1, steps=80, memory_mb=1))
    assert result["reorthogonalized"] is full and result["matvecs"] == 80
    assert result["trace"] == pytest.approx(float(torch.linspace(-1.0, 4.0, dim).sum()), rel=1e-3)
