"""ℓ∞ geometry against exact answers: the (1,1)-, ∞-, Frobenius and spectral norms of formed Hessians, the
rotation's invariances, an interrupted sketch, and the geometry stage end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from optimization.rotation import build_rotation
from sharpness.geometry import cauchy_sketch, frobenius_norm, measure_frame, row_norm_statistics, spectral_norm
from config.schema import GeometryConfig, SharpnessConfig


def l11_estimates(matvec, like, k, tmp_path, bootstrap=0, segments=None):
    sketch = cauchy_sketch(matvec, like, k, seed=0, path=tmp_path / "sketch.npy", stamp="test")
    return row_norm_statistics(sketch, segments or [like.numel()], bootstrap, 0.95, seed=0)


def formed_rotation(kind, objective):
    rotation = build_rotation(kind, list(objective.names), [p.numel() for p in objective.params], seed=3,
                              dtype=torch.float64)
    return rotation, torch.stack([rotation.apply(e) for e in torch.eye(objective.dim, dtype=torch.float64)], dim=1)


def test_l11_and_linf_by_cauchy_sketches_match_the_formed_hessian(tiny, tmp_path):
    objective, hessian = tiny
    stats = l11_estimates(objective.hvp, objective.base, 400, tmp_path, bootstrap=200)
    exact = float(hessian.abs().sum())
    largest_row = float(hessian.abs().sum(dim=1).max())
    for estimator in ("median", "half_iqr"):
        assert stats[estimator]["total"] == pytest.approx(exact, rel=0.05)
        low, high = stats[estimator]["ci"]
        assert low <= exact <= high and high - low < 0.3 * exact
        # the largest of 412 row estimates, each with a relative error of about π/(2√k) = 8% at k = 400
        assert stats[estimator]["largest_row"] == pytest.approx(largest_row, rel=0.25)


def test_frobenius_by_hutchpp_is_exact_at_full_rank_and_unbiased_with_few_probes(tiny):
    objective, hessian = tiny
    exact = float(torch.linalg.matrix_norm(hessian))
    full = frobenius_norm(lambda v: hessian @ v, objective.base.double(), 3 * objective.dim, seed=0)
    assert full["value"] == pytest.approx(exact, rel=1e-3)
    few = frobenius_norm(objective.hvp, objective.base, 30, seed=1)
    assert abs(few["value"] - exact) < 4 * few["stderr"] and few["stderr"] < 0.2 * exact


def test_spectral_norm_is_the_largest_eigenvalue_in_magnitude(tiny):
    objective, hessian = tiny
    eigenvalues = torch.linalg.eigvalsh(hessian)
    exact = float(eigenvalues.abs().max())
    result = spectral_norm(lambda v: hessian @ v, objective.base.double(), max_iter=200, tol=1e-8, seed=0)
    assert result["value"] == pytest.approx(exact, rel=1e-3) and result["converged"]
    assert result["lambda_min"] == pytest.approx(float(eigenvalues[0]), rel=1e-3)


@pytest.mark.parametrize("kind", ["global", "per-layer"])
def test_a_rotation_keeps_the_l2_and_frobenius_norms_and_the_estimators_see_r_t_h_r(tiny, tmp_path, kind):
    objective, hessian = tiny
    rotation, r = formed_rotation(kind, objective)
    rotated = r.T @ hessian @ r
    like = objective.base.double()
    for norm in (2, "fro"):  # exact invariance: R is orthogonal
        assert float(torch.linalg.matrix_norm(rotated, ord=norm)) == pytest.approx(
            float(torch.linalg.matrix_norm(hessian, ord=norm)), rel=1e-4)

    def matvec(v):  # what the geometry stage does: Rᵀ·H·(R·v) without forming R
        return rotation.transpose(hessian @ rotation.apply(v))

    assert torch.allclose(matvec(like), rotated @ like, rtol=1e-10, atol=1e-12)
    spectral = [spectral_norm(m, like, max_iter=300, tol=1e-9, seed=0)["value"] for m in (lambda v: hessian @ v, matvec)]
    assert spectral[1] == pytest.approx(spectral[0], rel=1e-4)
    frobenius = [frobenius_norm(m, like, 3 * objective.dim, seed=0)["value"] for m in (lambda v: hessian @ v, matvec)]
    assert frobenius[1] == pytest.approx(frobenius[0], rel=1e-4)
    # RᵀHR is dense: its rows are alike and share the k vectors, so their errors hardly average out and the
    # total is about as uncertain as one row (π/(2√k) ≈ 8% at k = 400); the interval says so
    stats = l11_estimates(matvec, like, 400, tmp_path, bootstrap=200)
    exact = float(rotated.abs().sum())
    assert stats["median"]["total"] == pytest.approx(exact, rel=0.2)
    low, high = stats["median"]["ci"]
    assert low <= exact <= high


def test_a_rotation_destroys_a_diagonal_dominant_hessians_l_infinity_geometry(tmp_path):
    """The paper's effect in its simplest form: nearly diagonal H (ratio ≪ 1) becomes dense under R."""
    d = 600
    generator = torch.Generator().manual_seed(0)
    diagonal = torch.logspace(-2, 1, d, dtype=torch.float64)
    hessian = torch.diag(diagonal) + 1e-4 * torch.randn(d, d, generator=generator, dtype=torch.float64)
    hessian = (hessian + hessian.T) / 2
    rotation = build_rotation("global", ["w"], [d], seed=0, dtype=torch.float64)
    like = torch.zeros(d, dtype=torch.float64)
    cfg = GeometryConfig(cauchy_vectors=200, bootstrap=0, frobenius_probes=3 * d)
    eigen = SharpnessConfig(max_iter=200, tol=1e-8)

    def frame(matvec, name):
        return measure_frame(matvec, like, ["w"], [d], cfg, eigen, tmp_path / f"{name}.npy", name,
                             lambda total, desc: _NoBar())

    original = frame(lambda v: hessian @ v, "original")
    rotated = frame(lambda v: rotation.transpose(hessian @ rotation.apply(v)), "rotated")
    exact = [float(hessian.abs().sum()), float(torch.linalg.matrix_norm(hessian, ord=2))]
    assert original["l11"]["median"]["total"] == pytest.approx(exact[0], rel=0.1)
    assert original["ratio"]["median"] < 0.2 and rotated["ratio"]["median"] > 3 * original["ratio"]["median"]
    assert rotated["spectral"]["value"] == pytest.approx(original["spectral"]["value"], rel=1e-6)
    assert rotated["frobenius"]["value"] == pytest.approx(original["frobenius"]["value"], rel=1e-6)
    assert not list(tmp_path.iterdir())  # each sketch file is removed once its statistics are taken


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_block_sums_add_up_to_the_total_and_name_every_layer_and_kind(tiny, tmp_path):
    objective, _ = tiny
    numels = [p.numel() for p in objective.params]
    result = measure_frame(objective.hvp, objective.base, list(objective.names), numels,
                           GeometryConfig(cauchy_vectors=20, bootstrap=10, frobenius_probes=0), SharpnessConfig(max_iter=20),
                           tmp_path / "s.npy", "stamp", lambda total, desc: _NoBar())
    total = result["l11"]["median"]["total"]
    for grouping in ("layer", "kind"):
        blocks = result["blocks"][grouping]
        assert sum(b["dim"] for b in blocks.values()) == objective.dim
        assert sum(b["median"]["total"] for b in blocks.values()) == pytest.approx(total, rel=1e-9)
    assert set(result["blocks"]["layer"]) == {"embeddings", "layer 0", "ln_f"}
    assert set(result["blocks"]["kind"]) == {"embeddings", "attention", "mlp", "layer_norm"}
    assert result["frobenius"] is None and result["hvps"] == 20 + result["spectral"]["hvps"]


def test_an_interrupted_sketch_continues_from_its_last_row(tiny, tmp_path):
    objective, _ = tiny
    calls = []

    def dies_after_five(v):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(1)
        return objective.hvp(v)

    path = tmp_path / "sketch.npy"
    with pytest.raises(KeyboardInterrupt):
        cauchy_sketch(dies_after_five, objective.base, 12, seed=0, path=path, stamp="s")
    assert json.loads(path.with_name("sketch.npy.json").read_text())["done"] == 5
    before = objective.hvp_count
    resumed = np.array(cauchy_sketch(objective.hvp, objective.base, 12, seed=0, path=path, stamp="s"))
    assert objective.hvp_count - before == 7  # only the rows that were missing
    fresh = np.array(cauchy_sketch(objective.hvp, objective.base, 12, seed=0, path=tmp_path / "fresh.npy", stamp="s"))
    assert np.array_equal(resumed, fresh)
    other = cauchy_sketch(objective.hvp, objective.base, 12, seed=0, path=path, stamp="other settings")
    assert objective.hvp_count - before == 7 + 12 + 12  # other settings start over


def test_geometry_stage_end_to_end_skips_and_redoes(tiny_experiment, tmp_path, capsys):
    from pipeline import run_experiment

    experiment = tiny_experiment("stages: [train, geometry]\n", ["geometry.cauchy_vectors=8", "geometry.bootstrap=5",
                                                               "geometry.frobenius_probes=6", "sharpness.max_iter=12"])
    out = tmp_path / "out"
    run_experiment(experiment, ["train", "geometry"], out)
    folder = out / experiment.name / "default" / "seed-42"
    data = json.loads((folder / "geometry.json").read_text())
    assert set(data) >= {"run", "seed", "fingerprint", "checkpoint", "settings", "device", "dim", "n_tokens", "texts",
                         "measurement_indices", "frames", "hvp_total", "timings"}
    for frame in ("original", "rotated"):
        values = data["frames"][frame]
        assert set(values) >= {"l11", "linf", "frobenius", "spectral", "ratio", "blocks", "cauchy_vectors", "hvps",
                               "time_s"}
        assert values["ratio"]["median"] == pytest.approx(
            values["l11"]["median"]["total"] / (data["dim"] * values["spectral"]["value"]))
    assert data["frames"]["rotated"]["rotation"] == "global"
    assert data["frames"]["rotated"]["spectral"]["value"] == pytest.approx(data["frames"]["original"]["spectral"]["value"],
                                                                           rel=1e-2)
    measured = json.loads((folder / "geometry.json").read_text())
    assert not list(folder.glob("geometry_sketch*"))
    assert measured["frames"]["original"]["spectral_norm_from"] == "own lanczos: no sharpness.json"
    # the same measurement set as the sharpness stage, whose λ_max and λ_min are the original frame's ‖H‖₂ from now on
    run_experiment(experiment, ["sharpness"], out)
    sharpness = json.loads((folder / "sharpness.json").read_text())
    assert sharpness["measurement_indices"] == data["measurement_indices"]
    capsys.readouterr()
    run_experiment(experiment, ["geometry"], out)
    assert "geometry already measured" in capsys.readouterr().out
    run_experiment(experiment, ["geometry"], out, force=True)
    assert "exp/default/seed-42: ‖H‖₂ from sharpness.json\n" in capsys.readouterr().out
    redone = json.loads((folder / "geometry.json").read_text())["frames"]
    for frame in ("original", "rotated"):  # deterministic: the same vectors, the same numbers
        for key in ("l11", "linf", "frobenius", "blocks") + (("spectral",) if frame == "rotated" else ()):
            assert redone[frame][key] == measured["frames"][frame][key]
    spectral, own = redone["original"]["spectral"], measured["frames"]["original"]["spectral"]
    assert redone["original"]["spectral_norm_from"] == "sharpness.json"
    assert (spectral["lambda_max"], spectral["lambda_min"]) == (sharpness["lambda_max"], sharpness["lambda_min"])
    assert spectral["value"] == max(abs(sharpness["lambda_max"]), abs(sharpness["lambda_min"]))
    assert spectral["value"] == pytest.approx(own["value"], rel=1e-2)
    # no Lanczos of its own: before, it took ‖H‖₂'s products again
    assert redone["original"]["hvps"] == measured["frames"]["original"]["hvps"] - own["hvps"]
    turned = tiny_experiment("stages: [train, geometry]\n", ["geometry.cauchy_vectors=8", "geometry.bootstrap=5",
                                                           "geometry.frobenius_probes=6", "sharpness.max_iter=12",
                                                           "geometry.rotation=per-layer"])
    capsys.readouterr()
    run_experiment(turned, ["geometry"], out)  # another rotation: only the rotated frame is measured again
    assert "original frame already measured with these settings; kept" in capsys.readouterr().out
    data = json.loads((folder / "geometry.json").read_text())
    assert data["frames"]["rotated"]["rotation"] == "per-layer" and data["frames"]["original"] == redone["original"]
    changed = tiny_experiment("stages: [train, geometry]\n", ["geometry.cauchy_vectors=9", "geometry.bootstrap=5",
                                                            "geometry.frobenius_probes=6", "sharpness.max_iter=12",
                                                            "geometry.rotation=none"])
    run_experiment(changed, ["geometry"], out)
    data = json.loads((folder / "geometry.json").read_text())
    assert data["frames"]["original"]["cauchy_vectors"] == 9 and "rotated" not in data["frames"]


def test_the_block_sampled_standard_error_estimates_that_of_all_rows(monkeypatch):
    """On a sketch of 100,000 correlated rows, 64 drawn blocks of 1,024 give the standard error of all of them
    (the same halves of the vectors in both, so only the sampling of blocks differs)."""
    import sharpness.geometry as geometry

    generator = np.random.default_rng(0)
    k, dim = 20, 100_000
    scale = generator.uniform(0.1, 10.0, dim)
    shared = generator.standard_cauchy(k)[:, None]  # every row sees the same draws: correlated errors
    sketch = (scale * (0.5 * shared + generator.standard_cauchy((k, dim)))).astype(np.float32)
    sampled = geometry.half_sample_standard_errors(sketch, 100, seed=2)
    monkeypatch.setattr(geometry, "BOOTSTRAP_BLOCKS", 10**6)  # every block: every row
    full = geometry.half_sample_standard_errors(sketch, 100, seed=2)
    total = geometry.row_estimates(sketch.astype(np.float64))["median"].sum()
    assert full["median"] > 0.05 * total  # the shared draws make the total uncertain
    assert sampled["median"] == pytest.approx(full["median"], rel=0.05)
    assert sampled["half_iqr"] == pytest.approx(full["half_iqr"], rel=0.25)  # heavier-tailed: noisier


def test_a_stage_killed_in_the_rotated_frame_keeps_the_original_one(tiny_experiment, tmp_path, monkeypatch, capsys):
    import sharpness.geometry_stage as stage
    from pipeline import run_experiment

    experiment = tiny_experiment("", ["geometry.cauchy_vectors=6", "geometry.bootstrap=0",
                                      "geometry.frobenius_probes=0", "sharpness.max_iter=8"])
    out = tmp_path / "out"
    run_experiment(experiment, ["train"], out)
    real = stage.measure_frame

    def killed_in_the_rotated_frame(matvec, like, names, numels, cfg, eigen_cfg, sketch_path, *rest):
        if "rotated" in sketch_path.name:
            raise KeyboardInterrupt
        return real(matvec, like, names, numels, cfg, eigen_cfg, sketch_path, *rest)

    monkeypatch.setattr(stage, "measure_frame", killed_in_the_rotated_frame)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(experiment, ["geometry"], out)
    folder = out / experiment.name / "default" / "seed-42"
    assert not (folder / "geometry.json").exists() and (folder / "geometry.partial.json").is_file()
    monkeypatch.setattr(stage, "measure_frame", real)
    capsys.readouterr()
    run_experiment(experiment, ["geometry"], out)
    assert "original frame already measured with these settings; kept" in capsys.readouterr().out
    data = json.loads((folder / "geometry.json").read_text())
    assert set(data["frames"]) == {"original", "rotated"}
    assert not (folder / "geometry.partial.json").exists()
    # the kept frame's work counts too: each frame's k sketch rows, Lanczos and Hutch++ products
    assert data["hvp_total"] == sum(frame["hvps"] for frame in data["frames"].values())
    assert data["frames"]["original"]["hvps"] == 6 + data["frames"]["original"]["spectral"]["hvps"]


@pytest.mark.parametrize("k, names", [(5, ["median"]), (10, ["median", "half_iqr"]), (50, ["median", "half_iqr"])])
def test_the_row_estimators_are_unbiased_for_unit_rows(k, names):
    """Divided by estimator_means (exact integrals), the mean over many unit rows is 1 (raw: +31% at k = 5).
    Below k = 10 the inter-quartile range has an infinite variance, so a sample mean cannot check it."""
    from sharpness.geometry import row_estimates

    draws = np.random.default_rng(k).standard_cauchy((k, 100_000))
    estimates = row_estimates(draws)
    for name in names:
        assert estimates[name].mean() == pytest.approx(1.0, abs=0.01), name


def test_hutchpp_with_more_probes_than_dimensions_is_exact():
    hessian = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    result = frobenius_norm(lambda v: hessian @ v, torch.zeros(10, dtype=torch.float64), 33, seed=0)
    assert result["value"] == pytest.approx(float(torch.linalg.matrix_norm(hessian)), rel=1e-9)


def test_a_sketch_that_does_not_fit_on_the_disk_is_one_clear_error(tmp_path, monkeypatch):
    """The sketch's space is claimed when it is created (a memory map of a sparse file would die of SIGBUS)."""
    import errno
    import os

    from utils.errors import OutputError

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    path = tmp_path / "sketch.npy"
    with pytest.raises(OutputError, match="sketch.npy: the disk is full"):
        cauchy_sketch(lambda v: v, torch.zeros(100), 5, seed=0, path=path, stamp="s")
    assert not path.exists()


# ----------------------------------------------------------------------------------------------
# Intervals: coverage of a nominal 95 % by simulation (200 draws each), and the standard error against the truth.

def test_the_l11_standard_error_of_independent_rows_is_that_of_their_sum():
    """H = I: the d rows' errors are independent, so the total's standard error is √d times one unit row's. The
    bootstrap with replacement read it 3.5× too high at d = 16,384 (its repeated draws shift every row alike)."""
    from sharpness.geometry import half_sample_standard_errors, row_estimates

    k, d = 50, 16_384
    generator = np.random.default_rng(0)
    unit = row_estimates(generator.standard_cauchy((k, 50_000)))
    sketch = generator.standard_cauchy((k, d)).astype(np.float32)  # H·c = c
    errors = half_sample_standard_errors(sketch, 100, seed=0)
    for name in ("median", "half_iqr"):
        assert errors[name] == pytest.approx(np.sqrt(d) * unit[name].std(), rel=0.3), name


def _l11_coverage(sketch_of, dim, exact, k=50, draws=200, resamples=50):
    generator = np.random.default_rng(1)
    hits = {"median": 0, "half_iqr": 0}
    for draw in range(draws):
        sketch = sketch_of(generator.standard_cauchy((k, dim))).astype(np.float32)  # row j: H·cⱼ (H symmetric)
        stats = row_norm_statistics(sketch, [dim], resamples, 0.95, seed=draw)
        for name in hits:
            low, high = stats[name]["ci"]
            hits[name] += low <= exact <= high
    return {name: count / draws for name, count in hits.items()}


@pytest.mark.parametrize("case", ["independent rows", "identical rows", "diagonal plus rank one"])
def test_l11_intervals_cover_95_percent(case):
    generator = np.random.default_rng(2)
    if case == "independent rows":
        hessian = np.eye(512)
    elif case == "identical rows":  # every row a multiple of one: the total is as uncertain as one row
        u = generator.normal(size=300)
        hessian = np.outer(u, u)
    else:
        v = generator.normal(size=400) / 20
        hessian = np.diag(generator.uniform(0.5, 2.0, 400)) + 3 * np.outer(v, v)
    coverage = _l11_coverage(lambda c: c @ hessian, len(hessian), float(np.abs(hessian).sum()))
    for name, value in coverage.items():
        assert 0.90 <= value <= 0.99, (name, value)


def _spectrum_matrix(kind: str, d: int = 200) -> torch.Tensor:
    generator = np.random.default_rng(3)
    if kind == "power law":  # |λᵢ| = 1/i, a third negative
        eigenvalues = np.arange(1, d + 1) ** -1.0 * np.where(generator.random(d) < 0.3, -1, 1)
    else:  # five outliers and a bulk around 0
        eigenvalues = np.concatenate([np.full(5, 10.0), generator.normal(0, 0.3, d - 5)])
    basis, _ = np.linalg.qr(generator.normal(size=(d, d)))
    return torch.tensor((basis * eigenvalues) @ basis.T)


@pytest.mark.parametrize("kind", ["power law", "outliers and bulk"])
@pytest.mark.parametrize("probes", [12, 30])
def test_the_frobenius_interval_covers_95_percent(kind, probes):
    """±1.96·se covered 80-91 % here: 4 or 10 Hutchinson samples, right-skewed. 1,000 draws (cheap at d = 200):
    the coverage is 91-95 %, and 200 draws alone would vary by ±3 %."""
    hessian = _spectrum_matrix(kind)
    exact = float(torch.linalg.matrix_norm(hessian))
    like = torch.zeros(len(hessian), dtype=torch.float64)
    hits = 0
    for draw in range(1000):
        low, high = frobenius_norm(lambda v: hessian @ v, like, probes, seed=draw, confidence=0.95)["ci"]
        hits += low <= exact <= high
    assert 0.90 <= hits / 1000 <= 0.99


# ----------------------------------------------------------------------------------------------
# A damaged sketch on resuming: recomputed where it changed, started over where it cannot be trusted.

def _symmetric(d: int = 40) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(0))
    return a + a.T


def _finished_and_fresh(tmp_path, k=12):
    hessian = _symmetric()
    like = torch.zeros(len(hessian))
    fresh = np.array(cauchy_sketch(lambda v: hessian @ v, like, k, seed=0, path=tmp_path / "fresh.npy", stamp="s"))
    path = tmp_path / "sketch.npy"
    cauchy_sketch(lambda v: hessian @ v, like, k, seed=0, path=path, stamp="s")
    calls = []

    def resume():
        def matvec(v):
            calls.append(1)
            return hessian @ v
        return np.array(cauchy_sketch(matvec, like, k, seed=0, path=path, stamp="s"))
    return path, fresh, resume, calls


def test_bad_bytes_in_a_finished_row_are_found_and_that_row_computed_again(tmp_path, capsys):
    path, fresh, resume, calls = _finished_and_fresh(tmp_path)
    row_bytes = fresh.shape[1] * 4
    with open(path, "r+b") as handle:  # inside row 7 of 12
        handle.seek(path.stat().st_size - 5 * row_bytes + 9)
        handle.write(b"\x7f\x7f")
    assert np.array_equal(resume(), fresh) and len(calls) == 1
    assert "row 7 of the sketch" in capsys.readouterr().out


def test_a_truncated_sketch_is_started_over(tmp_path, capsys):
    path, fresh, resume, calls = _finished_and_fresh(tmp_path)
    os.truncate(path, path.stat().st_size - 100)  # numpy would fill the missing bytes with zeros
    assert np.array_equal(resume(), fresh) and len(calls) == 12
    assert "(truncated?); starting it over" in capsys.readouterr().out


def test_a_done_count_too_high_is_not_trusted(tmp_path, capsys):
    path, fresh, resume, calls = _finished_and_fresh(tmp_path)
    state_path = path.with_name(path.name + ".json")
    state = json.loads(state_path.read_text())
    state["rows"][4:] = [None] * 8  # rows 4.. never written (zeros) ...
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size - 8 * fresh.shape[1] * 4)
        handle.write(bytes(8 * fresh.shape[1] * 4))
    state_path.write_text(json.dumps({**state, "done": 12}))  # ... but counted as done
    assert np.array_equal(resume(), fresh) and len(calls) == 8
    assert "counts 12 finished rows but has checksums of 4" in capsys.readouterr().out


def test_a_frame_resumed_mid_sketch_counts_every_product_behind_it(tmp_path):
    hessian = _symmetric().double()
    like = torch.zeros(len(hessian), dtype=torch.float64)
    cfg, eigen = GeometryConfig(cauchy_vectors=10, bootstrap=0, frobenius_probes=6), SharpnessConfig(max_iter=15)

    def frame(matvec, name):
        return measure_frame(matvec, like, ["w"], [len(hessian)], cfg, eigen, tmp_path / f"{name}.npy", "s",
                             lambda total, desc: _NoBar())

    whole = frame(lambda v: hessian @ v, "whole")
    calls = []

    def dies_after_four(v):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return hessian @ v

    with pytest.raises(KeyboardInterrupt):
        frame(dies_after_four, "resumed")
    resumed = frame(lambda v: hessian @ v, "resumed")
    assert resumed["hvps"] == whole["hvps"] == 10 + whole["spectral"]["hvps"] + 6
    assert resumed["l11"] == whole["l11"]


def test_sharpness_json_gives_the_spectral_norm_only_from_a_lanczos_as_strict_on_the_same_weights_and_set(tmp_path):
    import dataclasses

    from config.schema import RunConfig
    from optimization.measured_run import TrainedRun, sharpness_settings
    from sharpness.geometry_stage import spectral_from_sharpness

    run = RunConfig()
    trained = TrainedRun(run, tmp_path, "exp/run/seed-42", "weights-0", "python run.py --stages train")

    def written(checkpoint="weights-0", **changes):
        sharpness = dataclasses.replace(run.sharpness, **changes)
        body = {"checkpoint": checkpoint, "settings": sharpness_settings(dataclasses.replace(run, sharpness=sharpness)),
                "lambda_max": 2.5, "lambda_max_residual": 1e-4, "lambda_max_converged": True, "lambda_min": -3.0,
                "lambda_min_residual": 2e-3, "lambda_min_converged": False, "hvp_count": 17}
        (tmp_path / "sharpness.json").write_text(json.dumps(body))
        return spectral_from_sharpness(trained)

    assert spectral_from_sharpness(trained) == (None, "own lanczos: no sharpness.json")
    reused = {"value": 3.0, "lambda_max": 2.5, "lambda_min": -3.0, "converged": False, "residual": 2e-3, "hvps": 17}
    assert written() == (reused, "sharpness.json")
    assert written(tol=1e-4, max_iter=60, top_k=5) == (reused, "sharpness.json")  # stricter: still the same operator
    for why, changes in (("other weights", {"checkpoint": "weights-1"}), ("another measurement set", {"batches": 4}),
                         ("another measurement set", {"seed": 1}), ("another HVP", {"hvp": "forward"}),
                         ("power iteration", {"method": "power"}), ("looser tolerance", {"tol": 1e-2}),
                         ("fewer steps", {"max_iter": 20})):
        spectral, reason = written(**changes)
        assert spectral is None and reason.startswith("own lanczos: ") and why in reason, (changes, reason)
    (tmp_path / "sharpness.json").write_text("{")
    assert spectral_from_sharpness(trained) == (None, "own lanczos: sharpness.json does not parse")
    (tmp_path / "sharpness.json").write_text(json.dumps({"checkpoint": "weights-0", "settings": sharpness_settings(run),
                                                         "lambda_max": 2.5, "lambda_min": -3.0}))
    assert "an older version's" in spectral_from_sharpness(trained)[1]
