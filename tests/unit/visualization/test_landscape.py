"""Loss landscapes: normalised orthogonal directions, exact endpoints, barriers, grids that resume, figures."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import textwrap

import numpy as np
import pytest
import torch

import visualization.landscape_stage as stage
from data.batches import collate, tokenize
from data.corpus import load_texts
from data.measurement import fixed_set
from models.checkpoint import load_trained
from models.models import build_model
from optimization.train_stage import train_stage
from utils.io import load_torch
from models.runs import experiment_dir, run_dir
from optimization.objective import Objective
from tests.conftest import TINY
from config.loading import load_experiment
from config.schema import ModelConfig
from utils.errors import UserError
from models.runs import trained_with
from visualization.directions import conv1d_weight_names, directions_for, random_directions
from visualization.interpolation import barrier, interpolate, interpolation_alphas, weights_in
from visualization.surface_plots import Surface, surface_contour_figure
from visualization.surface import grid_axis

LANDSCAPE = """
landscape: {resolution: 5, range: 0.5, points: 5, eval_batches: 2, eval_batch_size: 4, val_surface: true}
train: {epochs: 1}
runs:
  small: {train: {batch_size: 4}}
  large: {train: {batch_size: 16}}
"""


def make_experiment(folder, overrides=(), text=LANDSCAPE):
    (folder / "tiny.yaml").write_text(textwrap.dedent(TINY))
    (folder / "exp.yaml").write_text("extends: tiny.yaml\n" + textwrap.dedent(text))
    return load_experiment(folder / "exp.yaml", list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An experiment of two tiny runs, trained once for the whole module: (experiment, output folder)."""
    folder = tmp_path_factory.mktemp("landscape")
    experiment = make_experiment(folder)
    train_stage(experiment, folder / "trained", force=False)
    return experiment, folder / "trained"


@pytest.fixture(scope="module")
def landscaped(trained, tmp_path_factory):
    """The same experiment after the landscape stage, run once: (experiment, output folder)."""
    experiment, output = trained
    done = tmp_path_factory.mktemp("landscaped") / "out"
    shutil.copytree(output, done)
    stage.landscape_stage(experiment, done, force=False)
    return experiment, done


def evaluation_loss(checkpoint, run, split: str = "train") -> float:
    """The loss of a checkpoint on the run's fixed evaluation set, computed from scratch."""
    model = load_trained(checkpoint)
    texts = getattr(load_texts(run.data), split)
    cfg = run.landscape
    batches = fixed_set(texts, cfg.eval_batches, cfg.eval_batch_size, cfg.eval_seed, model.tokenizer,
                        run.data.max_length).batches
    return Objective(model.model, batches).loss()


# ----------------------------------------------------------------------------------------------
# Directions.

@pytest.fixture
def tiny_objective(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    texts = ["The river flows near the old city .", "In 1850 , the ship sailed ."]
    return model, Objective(model, [collate(tokenize(texts, tokenizer, 64), tokenizer.eos_token_id)])


def unit_norms(tensor, name, conv1d_names, norm):
    if norm == "layer" or tensor.dim() == 1:
        return tensor.norm().reshape(1)
    return tensor.norm(dim=0) if name in conv1d_names else tensor.norm(dim=1)


@pytest.mark.parametrize("norm", ["layer", "filter"])
def test_directions_have_the_weights_norm_per_unit_and_are_orthogonal(tiny_objective, norm):
    model, objective = tiny_objective
    conv1d = conv1d_weight_names(model)
    assert "transformer.h.0.attn.c_attn.weight" in conv1d and "transformer.wte.weight" not in conv1d
    assert "lm_head.weight" not in objective.names  # tied to wte: counted once
    d1, d2 = random_directions(objective, conv1d, norm, "", seed=3)
    for direction in (d1, d2):
        for name, d, w in zip(objective.names, objective.views(direction), objective.views(objective.base)):
            torch.testing.assert_close(unit_norms(d, name, conv1d, norm), unit_norms(w, name, conv1d, norm),
                                       rtol=1e-5, atol=1e-6)
    assert abs(torch.nn.functional.cosine_similarity(d1.double(), d2.double(), dim=0)) < 1e-6
    if norm == "filter":  # Conv1D weights are [in, out]: columns are normalised, not rows
        d, w = objective.views(d1)[objective.names.index("transformer.h.0.attn.c_attn.weight")], \
            model.transformer.h[0].attn.c_attn.weight
        assert not torch.allclose(d.norm(dim=1), w.norm(dim=1), rtol=1e-3)


def test_biasbn_zeroes_1d_tensors_and_none_only_orthogonalises(tiny_objective):
    model, objective = tiny_objective
    conv1d = conv1d_weight_names(model)
    d1, d2 = random_directions(objective, conv1d, "layer", "biasbn", seed=0)
    for d in (*objective.views(d1), *objective.views(d2)):
        assert (d.dim() == 1) == bool((d == 0).all())
    raw1, raw2 = random_directions(objective, conv1d, "none", "", seed=0)
    torch.testing.assert_close(raw1, torch.randn(objective.dim, generator=torch.Generator().manual_seed(0)))
    assert abs(torch.nn.functional.cosine_similarity(raw1.double(), raw2.double(), dim=0)) < 1e-6


def test_directions_are_seeded(tiny_objective):
    model, objective = tiny_objective
    conv1d = conv1d_weight_names(model)
    a, b, c = (random_directions(objective, conv1d, "filter", "", seed=s) for s in (1, 1, 2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


# ----------------------------------------------------------------------------------------------
# Interpolation.

def test_alphas_hold_both_endpoints_and_the_barrier_is_the_excess_over_the_chord():
    from config.schema import LandscapeConfig

    alphas = interpolation_alphas(LandscapeConfig())
    assert len(alphas) == 33 and alphas[0] == -0.5 and alphas[-1] == 1.5 and {0.0, 1.0} <= set(alphas)
    assert len(interpolation_alphas(LandscapeConfig(points=5))) == 5
    alphas = np.linspace(-0.5, 1.5, 9)
    losses = 1.0 + alphas + np.where((alphas > 0) & (alphas < 1), 2.0 * np.sin(np.pi * alphas), 0.0)
    assert barrier(alphas, losses) == pytest.approx((2.0, 0.5))
    assert barrier(alphas, alphas**2) == (0.0, 0.0)  # convex: no barrier


def test_barrier_between_a_model_and_itself_is_zero(tiny_objective):
    model, objective = tiny_objective
    alphas = np.linspace(-0.5, 1.5, 9)
    losses = interpolate({"train": objective}, weights_in(objective, model, "self"), alphas)["train"]
    height, _ = barrier(alphas, losses)
    assert 0.0 <= height < 1e-6
    assert losses[np.flatnonzero(alphas == 0.0)[0]] == losses[np.flatnonzero(alphas == 1.0)[0]] == objective.loss()


def test_models_of_different_shapes_are_refused(tiny_objective, tiny_model_and_tokenizer):
    _, objective = tiny_objective
    _, tokenizer = tiny_model_and_tokenizer
    other = build_model(ModelConfig(init="scratch", config={"n_layer": 2, "n_embd": 16, "n_head": 2,
                                                            "n_positions": 64}), tokenizer, seed=0)
    with pytest.raises(UserError, match="different architectures"):
        weights_in(objective, other, "a -> b")


def test_interpolation_endpoints_reproduce_each_models_loss_exactly(landscaped):
    experiment, output = landscaped
    small, large = experiment.runs
    between = json.loads((experiment_dir(output, experiment) / "interpolation.json").read_text())
    alphas = between["alphas"]
    assert alphas == [-0.5, 0.0, 0.5, 1.0, 1.5] and len(between["pairs"]) == 1
    pair = between["pairs"][0]
    assert pair["runs"] == ["small", "large"] and pair["seed"] == 42
    for split, key in (("train", "train_loss"), ("validation", "val_loss")):
        assert pair[key][1] == evaluation_loss(run_dir(output, experiment, small) / "checkpoint.pt", small, split)
        assert pair[key][3] == evaluation_loss(run_dir(output, experiment, large) / "checkpoint.pt", large, split)
    assert pair["barrier"] >= 0.0 and 0.0 <= pair["barrier_alpha"] <= 1.0
    for run in experiment.runs:
        folder = run_dir(output, experiment, run)
        line = json.loads((folder / "interpolation.json").read_text())
        assert line["endpoints"] == ["init", "final"] and line["alphas"] == alphas
        assert line["train_loss"][1] == evaluation_loss(folder / "init.pt", run)
        assert line["train_loss"][3] == evaluation_loss(folder / "checkpoint.pt", run)
        assert {"barrier", "barrier_alpha", "val_barrier", "val_barrier_alpha", "fingerprint"} <= set(line)


# ----------------------------------------------------------------------------------------------
# The 2D surface.

def test_grid_axis_is_symmetric_with_an_exact_centre():
    axis = grid_axis(21, 1.0)
    assert axis[10] == 0.0 and axis[0] == -1.0 and axis[-1] == 1.0 and np.array_equal(axis, -axis[::-1])
    assert np.allclose(np.diff(grid_axis(4, 0.3)), 0.2)


def test_grid_centre_equals_the_base_loss(landscaped):
    experiment, output = landscaped
    for run in experiment.runs:
        folder = run_dir(output, experiment, run)
        with np.load(folder / "landscape_2d.npz") as data:
            grid, base = data["train_loss"], float(data["base_loss"])
            assert grid.shape == data["val_loss"].shape == (5, 5) and not np.isnan(grid).any()
            assert list(data["alphas"]) == list(data["betas"]) == [-0.5, -0.25, 0.0, 0.25, 0.5]
            assert str(data["norm"]) == "layer" and int(data["seed"]) == 0 and int(data["eval_tokens"]) > 0
        assert grid[2, 2] == base == evaluation_loss(folder / "checkpoint.pt", run)
        assert grid.min() <= base < grid.max()


def test_saved_directions_redraw_the_same_plane(landscaped):
    experiment, output = landscaped
    folder = run_dir(output, experiment, experiment.runs[0])
    saved = load_torch(folder / "landscape_directions.pt")
    assert (saved["norm"], saved["ignore"], saved["seed"]) == ("layer", "", 0)
    model = load_trained(folder / "checkpoint.pt").model
    objective = Objective(model, [])
    d1, d2 = directions_for(saved, objective)
    again = random_directions(objective, conv1d_weight_names(model), "layer", "", seed=0)
    assert torch.equal(d1, again[0]) and torch.equal(d2, again[1])
    other = Objective(load_trained(run_dir(output, experiment, experiment.runs[1]) / "checkpoint.pt").model, [])
    assert torch.equal(directions_for(saved, other)[0], d1)  # other models of the same shape: the same plane


def test_an_interrupted_grid_resumes_to_the_same_result(trained, landscaped, tmp_path, monkeypatch, capsys):
    experiment, output = trained
    shutil.copytree(output, tmp_path / "out")
    real_fill = stage.fill_surface

    def interrupted_fill(objectives, *args, **kwargs):
        objective, real_loss, calls = objectives["train_loss"], objectives["train_loss"].loss, itertools.count()

        def loss():
            if next(calls) == 7:  # the third point of the second row
                raise KeyboardInterrupt
            return real_loss()

        monkeypatch.setattr(objective, "loss", loss)
        return real_fill(objectives, *args, **kwargs)

    monkeypatch.setattr(stage, "fill_surface", interrupted_fill)
    with pytest.raises(KeyboardInterrupt):
        stage.landscape_stage(experiment, tmp_path / "out", force=False)
    partial = run_dir(tmp_path / "out", experiment, experiment.runs[0]) / "landscape_2d.npz"
    with np.load(partial) as data:
        assert np.isnan(data["train_loss"]).sum() == 20 and not np.isnan(data["train_loss"][0]).any()
        assert data["done"].sum() == 5 and data["done"][0].all()
    monkeypatch.setattr(stage, "fill_surface", real_fill)
    capsys.readouterr()
    stage.landscape_stage(experiment, tmp_path / "out", force=False)
    assert "resuming the 2D landscape (5 of 25 points done)" in capsys.readouterr().out
    _, straight = landscaped
    for run in experiment.runs:
        with np.load(run_dir(straight, experiment, run) / "landscape_2d.npz") as a, \
                np.load(run_dir(tmp_path / "out", experiment, run) / "landscape_2d.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for key in set(a.files) - {"time_s"}:  # wall time differs; every other array is identical
                assert np.array_equal(a[key], b[key]), key


def test_finished_work_is_skipped_unless_forced_or_changed(landscaped, tmp_path, capsys):
    experiment, output = landscaped
    shutil.copytree(output, tmp_path / "out")
    folder = run_dir(tmp_path / "out", experiment, experiment.runs[0])
    files = [folder / "interpolation.json", folder / "landscape_2d.npz",
             experiment_dir(tmp_path / "out", experiment) / "interpolation.json",
             experiment_dir(tmp_path / "out", experiment) / "figures" / "surface_2d_small_seed-42.png"]

    def stamps():
        return [f.stat().st_mtime_ns for f in files]

    before = stamps()
    capsys.readouterr()
    stage.landscape_stage(experiment, tmp_path / "out", force=False)
    assert capsys.readouterr().out.count("skipping") == 5 and stamps() == before
    changed = make_experiment(tmp_path, ["landscape.seed=1"])
    stage.landscape_stage(changed, tmp_path / "out", force=False)
    after = stamps()
    assert after[0] == before[0] and after[2] == before[2]  # the lines do not depend on the plane
    assert after[1] != before[1] and after[3] != before[3]
    stage.landscape_stage(changed, tmp_path / "out", force=True)
    assert all(a != b for a, b in zip(stamps(), after))


def test_figures_are_written_and_not_empty(landscaped):
    experiment, output = landscaped
    figures = experiment_dir(output, experiment) / "figures"
    stems = ["interpolation"] + [f"{kind}_{run.name}_seed-42" for run in experiment.runs
                                 for kind in ("init_to_final", "surface_2d", "surface_3d")]
    for stem in stems:
        for ext in ("png", "pdf"):
            assert (figures / f"{stem}.{ext}").stat().st_size > 1000, f"{stem}.{ext}"
    assert not [p for p in output.rglob("*") if ".tmp" in p.name]


def test_a_missing_checkpoint_is_one_clear_error(tmp_path):
    experiment = make_experiment(tmp_path)
    with pytest.raises(UserError, match="run the train stage first"):
        stage.landscape_stage(experiment, tmp_path / "empty", force=False)


def patch_surface_loss(monkeypatch, diverge_at=None, stop_at=None) -> list:
    """Make the 2D surfaces of the next landscape stage count their training-loss evaluations (the
    list returned), return NaN at evaluation `diverge_at` and stop at `stop_at` (1-based, over the stage)."""
    real_fill, calls = stage.fill_surface, []

    def fill(objectives, *args, **kwargs):
        real_loss = objectives["train_loss"].loss

        def loss():
            calls.append(None)
            if len(calls) == stop_at:
                raise KeyboardInterrupt
            return math.nan if len(calls) == diverge_at else real_loss()

        monkeypatch.setattr(objectives["train_loss"], "loss", loss)
        return real_fill(objectives, *args, **kwargs)

    monkeypatch.setattr(stage, "fill_surface", fill)
    return calls


def test_a_diverged_point_is_done_never_evaluated_again_and_drawn(trained, tmp_path, monkeypatch, capsys):
    experiment, output = trained
    out = tmp_path / "out"
    shutil.copytree(output, out)
    patch_surface_loss(monkeypatch, diverge_at=3, stop_at=8)  # point [0, 2] diverges; stop in the second row
    with pytest.raises(KeyboardInterrupt):
        stage.landscape_stage(experiment, out, force=False)
    resumed = patch_surface_loss(monkeypatch)
    stage.landscape_stage(experiment, out, force=False)
    assert len(resumed) == 20 + 25  # the rest of the first run's grid, all of the second's: not the NaN point
    with np.load(run_dir(out, experiment, experiment.runs[0]) / "landscape_2d.npz") as data:
        loss, done = data["train_loss"], data["done"]
        assert done.all() and np.isnan(loss[0, 2]) and np.isfinite(np.delete(loss.ravel(), 2)).all()
        assert np.isfinite(data["val_loss"]).all()
    figures = experiment_dir(out, experiment) / "figures"
    assert (figures / "surface_2d_small_seed-42.png").stat().st_size > 1000
    assert (figures / "surface_3d_small_seed-42.png").stat().st_size > 1000
    again = patch_surface_loss(monkeypatch)
    capsys.readouterr()
    stage.landscape_stage(experiment, out, force=False)
    assert again == [] and capsys.readouterr().out.count("2D landscape already measured") == 2  # finished, NaN and all


def test_interpolations_and_surfaces_record_the_checkpoints_they_were_computed_from(landscaped):
    experiment, output = landscaped
    small, large = (run_dir(output, experiment, run) for run in experiment.runs)
    between = json.loads((experiment_dir(output, experiment) / "interpolation.json").read_text())
    assert between["pairs"][0]["checkpoints"] == [trained_with(small), trained_with(large)]
    for folder in (small, large):
        assert json.loads((folder / "interpolation.json").read_text())["checkpoint"] == trained_with(folder)
        with np.load(folder / "landscape_2d.npz") as data:
            assert str(data["checkpoint"]) == trained_with(folder)
            assert (float(data["range"]), int(data["resolution"]), int(data["eval_batches"])) == (0.5, 5, 2)


def test_a_retrained_run_gets_new_interpolations_and_figures(landscaped, tmp_path, capsys):
    experiment, output = landscaped
    out = tmp_path / "out"
    shutil.copytree(output, out)
    figures = experiment_dir(out, experiment) / "figures"
    index = json.loads((figures / "index.json").read_text())
    retrained = make_experiment(tmp_path, text=LANDSCAPE.replace("batch_size: 16}", "batch_size: 16, lr: 0.1}"))
    manifest = experiment_dir(out, experiment) / "experiment.json"  # the config edited where it lies: still its file's
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "config_path": str(retrained.source.resolve())}))
    train_stage(retrained, out, force=False)
    capsys.readouterr()
    stage.landscape_stage(retrained, out, force=False)
    printed = capsys.readouterr().out
    assert "small/seed-42: 2D landscape already measured" in printed
    assert "large/seed-42: 2D landscape already measured" not in printed and "small -> large, seed 42: barrier" in printed
    small, large = (run_dir(out, retrained, run) for run in retrained.runs)
    pair = json.loads((experiment_dir(out, retrained) / "interpolation.json").read_text())["pairs"][0]
    assert pair["checkpoints"] == [trained_with(small), trained_with(large)]
    assert pair["train_loss"][3] == evaluation_loss(large / "checkpoint.pt", retrained.runs[1])
    now = json.loads((figures / "index.json").read_text())
    assert now["surface_2d_small_seed-42"] == index["surface_2d_small_seed-42"]
    for stem in ("interpolation", "init_to_final_large_seed-42", "surface_2d_large_seed-42", "surface_3d_large_seed-42"):
        assert now[stem] != index[stem], stem


def test_a_figure_is_redrawn_when_its_data_changes_whatever_the_file_dates(tmp_path):
    source, stem, drawn = tmp_path / "data.json", tmp_path / "figures" / "curve", []

    def make_figure():
        drawn.append(json.loads(source.read_text()))
        return surface_contour_figure(Surface("t", np.linspace(-1, 1, 3), np.linspace(-1, 1, 3), np.eye(3)))

    source.write_text("[1]")
    stage.draw(stem, source, False, make_figure)
    stage.draw(stem, source, False, make_figure)
    source.write_text("[2]")  # other data, dated before the figure (as a copy or a restore may leave it)
    os.utime(source, ns=(0, 0))
    stage.draw(stem, source, False, make_figure)
    assert drawn == [[1], [2]]


def test_a_run_measured_as_is_has_no_init_to_final_line_and_says_why(tmp_path, capsys, figures_not_drawn):
    """train.epochs: 0: init.pt and checkpoint.pt hold the same weights, so the line between them is flat: it is
    not measured nor drawn nor reported missing; the console and the report say why, once."""
    from pipeline import run_experiment

    text = """
stages: [train, landscape, report]
landscape: {resolution: 3, points: 3, eval_batches: 1, eval_batch_size: 4}
runs:
  trained: {train: {epochs: 1}}
  as-is: {train: {epochs: 0}}
"""
    experiment, out = make_experiment(tmp_path, text=text), tmp_path / "out"
    run_experiment(experiment, ["train", "landscape", "report"], out)
    folders = {run.name: run_dir(out, experiment, run) for run in experiment.runs}
    assert (folders["trained"] / "interpolation.json").is_file()
    assert not (folders["as-is"] / "interpolation.json").exists() and (folders["as-is"] / "landscape_2d.npz").is_file()
    figures = experiment_dir(out, experiment) / "figures"
    assert (figures / "init_to_final_trained_seed-42.png").is_file()
    assert not list(figures.glob("init_to_final_as-is*"))
    said = "measured as is: no training path"
    assert capsys.readouterr().out.count(said) == 1
    report = (experiment_dir(out, experiment) / "report.md").read_text()
    assert "## Missing" not in report
    assert report.count("Measured as is (train.epochs: 0), so no training path and no init → final line: as-is.") == 1
