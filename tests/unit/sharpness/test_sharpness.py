"""Sharpness math against exact answers: formed Hessians, quadratics with known spectra, Taylor."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from optimization.evaluation import summed_token_loss
from optimization.objective import Objective
from optimization.curvature import hutchinson_trace, lanczos, power_iteration
from sharpness.sharpness import (MEASURED, curvatures, eps_sharpness, loss_resolution_pct,
                                 random_unit_directions, relative_increase_pct, taylor_check, worst_case)
from sharpness.sharpness_stage import measure_sharpness
from config.schema import SharpnessConfig


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_hvp_equals_the_formed_hessian_times_v(tiny, mode):
    objective, hessian = tiny
    objective = Objective(objective.model, objective.batches, hvp_mode=mode)
    v = torch.randn(objective.dim, generator=torch.Generator().manual_seed(3))
    exact = hessian @ v.double()
    hv = objective.hvp(v).double()
    assert (hv - exact).norm() / exact.norm() < 1e-5
    assert objective.hvp_count == 1


def test_measurement_loss_weighs_batches_by_tokens(tiny):
    objective, _ = tiny
    sums = [summed_token_loss(objective.model, b) for b in objective.batches]
    counts = [n for _, n in sums]
    assert counts[0] != counts[1] and objective.n_tokens == sum(counts) == (12 - 1) + (5 - 1) + (9 - 1) + (3 - 1) + (16 - 1)
    token_weighted = sum(s.item() for s, _ in sums) / sum(counts)
    mean_of_means = sum(s.item() / n for s, n in sums) / len(sums)
    assert objective.loss() == pytest.approx(token_weighted, rel=1e-6)
    assert abs(token_weighted - mean_of_means) > 1e-4


def test_gradient_and_moves_are_exact(tiny):
    """In float64, where a central difference of the loss is accurate to ~h²."""
    objective, _ = tiny
    objective = Objective(copy.deepcopy(objective.model).double(), objective.batches)
    loss, grad = objective.loss_and_grad()
    assert loss == pytest.approx(objective.loss(), rel=1e-6)
    d = torch.randn(objective.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    d /= d.norm()
    h = 1e-5
    with objective.moved([h], [d]):
        up = objective.loss()
    with objective.moved([-h], [d]):
        down = objective.loss()
    assert (up - down) / (2 * h) == pytest.approx(float(grad @ d), rel=1e-6)
    assert torch.equal(objective.flatten(objective.params), objective.base)  # restored exactly


def _quadratic(spectrum, seed=0):
    n = len(spectrum)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    matrix = q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ q.T
    return matrix, q


def test_power_and_lanczos_recover_a_known_spectrum():
    spectrum = [10.0, 7.0, 5.5] + torch.linspace(-3.0, 4.0, 57).tolist()
    matrix, q = _quadratic(spectrum)
    kw = dict(device="cpu", dtype=torch.float64, seed=5)
    power = power_iteration(lambda v: matrix @ v, len(spectrum), max_iter=2000, tol=1e-13, **kw)
    assert power.converged and power.lambda_max == pytest.approx(10.0, rel=1e-6)
    assert abs(float(power.eigenvector @ q[:, 0])) == pytest.approx(1.0, abs=1e-6)
    result = lanczos(lambda v: matrix @ v, len(spectrum), k=3, max_iter=60, tol=1e-10, **kw)
    assert result.converged
    assert result.eigenvalues == pytest.approx([10.0, 7.0, 5.5], rel=1e-6)
    assert result.lambda_min == pytest.approx(-3.0, rel=1e-6)
    assert abs(float(result.eigenvector @ q[:, 0])) == pytest.approx(1.0, abs=1e-6)
    assert _first_within(result.history, 10.0, 1e-6) < _first_within(power.history, 10.0, 1e-6) / 2


def test_lanczos_finds_a_dominant_negative_eigenvalue_and_stops_in_an_invariant_subspace():
    matrix, _ = _quadratic([2.0, 1.0, -6.0, 0.5])
    result = lanczos(lambda v: matrix @ v, 4, k=2, max_iter=10, tol=1e-12, device="cpu", dtype=torch.float64)
    assert result.converged and result.matvecs <= 4
    assert result.eigenvalues == pytest.approx([2.0, 1.0], rel=1e-9) and result.lambda_min == pytest.approx(-6.0)


# λ_max 10, a bulk around zero and a cluster of negative eigenvalues whose members lie 0.017 to 0.05 apart,
# more than tol·λ_max = 0.01: Lanczos meets an inner member of the cluster first and settles on it.
CLUSTERED_NEGATIVE = {
    "four within 0.05": [10.0, 7.0, 5.5] + torch.linspace(-0.9, 3.0, 120).tolist() + torch.linspace(-1.85, -1.8, 4).tolist(),
    "six within 0.25": [10.0, 7.0, 5.5] + torch.linspace(-0.3, 1.0, 150).tolist() + torch.linspace(-1.85, -1.6, 6).tolist(),
}


@pytest.mark.parametrize("name", CLUSTERED_NEGATIVE)
def test_lanczos_reports_lambda_min_accurate_or_not_converged(name):
    spectrum = CLUSTERED_NEGATIVE[name]
    matrix, _ = _quadratic(spectrum)
    tol = 1e-3
    tolerance = tol * max(abs(x) for x in spectrum)
    fooled_residual = 0
    for seed in range(20):
        for max_iter in range(8, 41):  # every stopping point up to 40 steps
            result = lanczos(lambda v: matrix @ v, len(spectrum), k=3, max_iter=max_iter, tol=tol, seed=seed,
                             dtype=torch.float64)
            error = abs(result.lambda_min - min(spectrum))
            if result.bottom.converged:
                assert error <= tolerance, (seed, max_iter, result.lambda_min)
            fooled_residual += result.bottom.residual <= tolerance and error > tolerance
    assert fooled_residual > 0  # a small residual alone would have certified a wrong λ_min


def test_lanczos_flags_lambda_max_and_lambda_min_separately_with_their_residuals():
    """λ_max isolated (found fast), the negative end a spread of 40 eigenvalues (found slowly)."""
    spectrum = [10.0] + torch.linspace(-0.3, 1.0, 150).tolist() + torch.linspace(-1.85, -0.5, 40).tolist()
    matrix, _ = _quadratic(spectrum)
    result = lanczos(lambda v: matrix @ v, len(spectrum), k=1, max_iter=20, tol=1e-3, dtype=torch.float64)
    assert result.top[0].converged and result.lambda_max == pytest.approx(10.0, abs=1e-3 * 10)
    assert not result.bottom.converged and not result.converged
    assert result.lambda_min - (-1.85) > 1e-3 * 10 and result.bottom.residual > 1e-3 * 10
    x = result.eigenvector
    assert result.top[0].residual == pytest.approx(float((matrix @ x - result.lambda_max * x).norm()), rel=1e-3, abs=1e-12)
    # A residual r proves some eigenvalue within r of its Ritz value: checked against the exact spectrum.
    for estimate in (result.top[0], result.bottom):
        assert min(abs(estimate.value - s) for s in spectrum) <= estimate.residual * (1 + 1e-9) + 1e-12


def test_lanczos_records_the_true_residual_where_its_recurrence_falls_below_float32():
    """A float32 quadratic with a known spectrum: the recurrence's residual of a converged top pair falls far
    below what a float32 product can show; the recorded one is ‖Hx − θx‖ (one more product per estimate)."""
    spectrum = [10.0, 9.0, 7.0] + torch.linspace(-2.0, 3.0, 37).tolist()
    matrix, _ = _quadratic(spectrum)
    matrix32 = matrix.float()
    kw = dict(k=2, max_iter=40, tol=1e-6, seed=3, dtype=torch.float32)
    recurrence = lanczos(lambda v: matrix32 @ v, len(spectrum), **kw)
    products = {"n": 0}

    def counted(v):
        products["n"] += 1
        return matrix32 @ v

    measured = lanczos(counted, len(spectrum), true_residuals=True, **kw)
    assert products["n"] == measured.matvecs + 2 + 1  # the Lanczos steps, then one per top-k estimate and λ_min
    assert measured.eigenvalues == recurrence.eigenvalues and measured.lambda_min == recurrence.lambda_min
    assert [e.converged for e in measured.top] == [e.converged for e in recurrence.top]
    x = measured.eigenvector.double()
    exact_residual = float((matrix @ x - measured.lambda_max * x).norm())
    assert measured.top[0].residual == pytest.approx(exact_residual, rel=0.5, abs=1e-5)
    assert recurrence.top[0].residual < 1e-3 * measured.top[0].residual  # the recurrence's: no float32 HVP shows it
    for estimate in measured.top + [measured.bottom]:  # each residual proves an eigenvalue within it
        assert min(abs(estimate.value - s) for s in spectrum) <= estimate.residual + 1e-5


def test_power_iteration_converged_means_a_small_relative_residual():
    """Eigenvalues 1 and 0.99: the estimate creeps up by less than tol per step long before it is within tol."""
    spectrum = [1.0, 0.99] + torch.linspace(0.0, 0.9, 58).tolist()
    matrix, _ = _quadratic(spectrum)
    tol = 1e-3
    for seed in range(5):
        result = power_iteration(lambda v: matrix @ v, len(spectrum), max_iter=2000, tol=tol, seed=seed,
                                 dtype=torch.float64)
        assert result.converged and abs(result.lambda_max - 1.0) <= tol
        x = result.eigenvector
        residual = float((matrix @ x - result.lambda_max * x).norm())
        assert result.top[0].residual == pytest.approx(residual, rel=1e-9) and residual <= tol * result.lambda_max
        assert result.bottom is None and result.lambda_min is None


def _first_within(history, target, rel):
    return next(i + 1 for i, value in enumerate(history) if abs(value - target) <= rel * abs(target))


def test_lambda_max_of_a_tiny_gpt2_matches_the_formed_hessian(tiny):
    objective, hessian = tiny
    exact = torch.linalg.eigvalsh(hessian)
    kw = dict(device="cpu", seed=0)
    result = lanczos(objective.hvp, objective.dim, k=2, max_iter=80, tol=1e-6, **kw)
    assert result.lambda_max == pytest.approx(float(exact[-1]), rel=1e-4)
    assert result.eigenvalues[1] == pytest.approx(float(exact[-2]), rel=1e-3)
    assert result.lambda_min == pytest.approx(float(exact[0]), rel=1e-3)
    power = power_iteration(objective.hvp, objective.dim, max_iter=400, tol=1e-9, **kw)
    assert power.lambda_max == pytest.approx(float(exact[-1]), rel=1e-4)
    assert _first_within(result.history, float(exact[-1]), 1e-4) < _first_within(power.history, float(exact[-1]), 1e-4)


def test_eps_sharpness_matches_its_taylor_expansion(tiny):
    """In float64, so that the third-order remainder is visible down to small eps (fp32 rounding is not)."""
    objective, _ = tiny
    objective = Objective(copy.deepcopy(objective.model).double(), objective.batches)
    top = lanczos(objective.hvp, objective.dim, k=1, max_iter=100, tol=1e-10, dtype=torch.float64)
    v = top.eigenvector
    base_loss, grad = objective.loss_and_grad()
    curvature = float(v @ objective.hvp(v))
    assert curvature == pytest.approx(top.lambda_max, rel=1e-8)
    diffs = []
    for eps in (2.5e-3, 1.25e-3, 6.25e-4, 3.125e-4):
        sharp = eps_sharpness(objective, base_loss, eps, v, curvature)
        assert sharp["eigvec"] == max(relative_increase_pct(objective, base_loss, v, eps),
                                      relative_increase_pct(objective, base_loss, -v, eps))
        check = taylor_check(base_loss, grad, sharp["eigvec_sign"] * v, curvature, eps, sharp["eigvec"])
        second_order = 100 * (sharp["eigvec_sign"] * eps * float(grad @ v) + 0.5 * eps**2 * top.lambda_max) / base_loss
        assert check["predicted_pct"] == pytest.approx(second_order, rel=1e-8)
        assert check["abs_diff_pct"] < 0.01 * abs(check["predicted_pct"])
        diffs.append(check["abs_diff_pct"])
    ratios = [a / b for a, b in zip(diffs, diffs[1:])]
    assert min(ratios) > 4.5 and ratios[-1] > 6  # halving eps divides the remainder by ~8: third order


def test_worst_case_is_at_least_the_eigenvector_value_and_respects_the_ball(tiny):
    objective, hessian = tiny
    v = torch.linalg.eigh(hessian)[1][:, -1].float()
    base_loss = objective.loss()
    eps = 5e-2
    sharp = eps_sharpness(objective, base_loss, eps, v, float(v.double() @ hessian @ v.double()))
    start = sharp["eigvec_sign"] * v
    result = worst_case(objective, base_loss, start, eps, steps=8, ball="l2")
    assert result["value_pct"] >= sharp["eigvec"]
    assert torch.equal(objective.flatten(objective.params), objective.base)
    adaptive = worst_case(objective, base_loss, start, eps, steps=8, ball="adaptive")
    assert adaptive["ball"] == "adaptive" and math.isfinite(adaptive["value_pct"])


def test_hutchinson_trace_is_within_three_standard_errors(tiny):
    objective, hessian = tiny
    result = hutchinson_trace(objective, samples=64, seed=0)
    assert abs(result["mean"] - float(hessian.trace())) < 3 * result["stderr"]
    assert result["samples"] == 64 and result["stderr"] > 0


def test_sharpness_stage_writes_its_files_on_shared_texts_and_skips_when_done(tiny_experiment, tmp_path, capsys):
    from pipeline import run_experiment
    from models.runs import run_dir
    from optimization.measured_run import measured_runs
    from report.reader import load_results
    from report.summary import summarize
    from report.tables import curvature_columns, eps_columns, quantities_table

    exp = tiny_experiment("""
        train: {epochs: 1}
        sharpness: {max_iter: 8, epsilons: [1e-3, 1e-2], random_directions: 2, worst_case_steps: 2, trace_samples: 3}
        runs:
          a: {train: {batch_size: 4}}
          b: {train: {batch_size: 16}}
    """)
    capsys.readouterr()
    run_experiment(exp, ["train", "sharpness"], tmp_path)
    printed = capsys.readouterr().out
    sets = []
    for run in exp.runs:
        folder = run_dir(tmp_path, exp, run)
        result = json.loads((folder / "sharpness.json").read_text())
        for key in ("lambda_max", "lambda_max_converged", "lambda_max_residual", "lambda_min", "lambda_min_converged",
                    "lambda_min_residual", "eigenvalues", "eigenvalue_residuals", "eigenvalues_converged", "method",
                    "hvp_count", "converged", "base_loss", "loss_resolution_pct", "eps_sharpness", "taylor_check",
                    "worst_case", "trace", "timings"):
            assert key in result
        assert set(result["eps_sharpness"]) == set(result["taylor_check"]) == set(result["worst_case"]) == {"0.001", "0.01"}
        assert set(result["eps_sharpness"]["0.01"]) == {
            "eigvec", "eigvec_sign", "random_max", "random_mean", "eigvec_symmetric_pct", "eigvec_symmetric_predicted_pct",
            "random_symmetric_mean_pct", "random_symmetric_mean_predicted_pct", "random_symmetric_max_pct",
            "random_symmetric_max_predicted_pct", "below_resolution"}
        assert set(result["taylor_check"]["0.01"]) == {"measured_pct", "predicted_pct", "abs_diff_pct", "below_resolution"}
        assert result["worst_case"]["0.01"]["value_pct"] >= result["eps_sharpness"]["0.01"]["eigvec"]
        assert len(result["eigenvalues"]) == len(result["eigenvalue_residuals"]) == len(result["eigenvalues_converged"]) == 3
        assert result["lambda_max"] == result["eigenvalues"][0] and result["lambda_max_residual"] == result["eigenvalue_residuals"][0]
        assert result["converged"] == (all(result["eigenvalues_converged"]) and result["lambda_min_converged"])
        assert result["hvp_count"] == len(result["eigen_history"]) <= 8
        # the solver, ‖Hx − θx‖ of its 3 + 1 estimates, vᵀHv, 2 random dᵀHd, the trace
        assert result["hvp_total"] == result["hvp_count"] + 4 + 1 + 2 + 3
        status = {True: "converged", False: "NOT converged"}
        assert (f"{run.name}/seed-42: lambda_max {result['lambda_max']:.4g} ({status[result['lambda_max_converged']]}), "
                f"lambda_min {result['lambda_min']:.4g} ({status[result['lambda_min_converged']]})") in printed
        assert not (folder / "measurement.pt").exists()  # the set is rebuilt from the texts, never read back
        trained_run = next(job for job in measured_runs(exp, tmp_path) if job.run.name == run.name)
        trained = trained_run.load()
        measurement = trained_run.measurement_set(trained)
        assert len(measurement.batches) == 3 and measurement.indices == result["measurement_indices"]
        assert len(result["measurement_indices"]) == 12
        batch = measurement.batches[0]
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
        base = Objective(trained.model, measurement.batches).loss()
        assert base == pytest.approx(result["base_loss"], rel=1e-6)  # the same set, the same loss
        sets.append(result["measurement_indices"])
    assert sets[0] == sets[1]
    summary = summarize(load_results(tmp_path, exp.name))
    table = quantities_table(summary, eps_columns("0.01") + curvature_columns())
    assert "symmetric, eigenvector %" in table and "½ε²vᵀHv %" in table and "λ_min converged" in table
    quantities = summary["runs"]["a"]["quantities"]
    assert quantities["eps_sharpness_eigvec_symmetric_predicted@0.01"]["mean"] == pytest.approx(
        json.loads((run_dir(tmp_path, exp, exp.runs[0]) / "sharpness.json").read_text())
        ["eps_sharpness"]["0.01"]["eigvec_symmetric_predicted_pct"])
    capsys.readouterr()
    run_experiment(exp, ["sharpness"], tmp_path)
    assert capsys.readouterr().out.count("already measured with these settings; skipping") == 2


def test_random_directions_are_unit_and_summarized_by_max_and_mean(tiny):
    objective, _ = tiny
    directions = random_unit_directions(objective.base, 3, seed=7)
    assert all(abs(float(d.norm()) - 1.0) < 1e-6 and d.dtype == objective.base.dtype for d in directions)
    assert not torch.equal(directions[0], directions[1])
    base_loss = objective.loss()
    v = directions[2]
    result = eps_sharpness(objective, base_loss, 0.05, v, 0.0, directions[:2], curvatures(objective, directions[:2]))
    each = [relative_increase_pct(objective, base_loss, d, 0.05) for d in directions[:2]]
    assert result["random_max"] == max(each) and result["random_mean"] == pytest.approx(sum(each) / 2, rel=1e-12)


def test_worst_case_starts_on_the_boundary_of_its_ball_along_the_eigenvector(tiny, monkeypatch):
    """The start is u = ε·v: δ = ε·v in the ℓ2 ball; δ = |θ|⊙u in the adaptive ball, with u = ε·v on the
    weights that can move (zero weights stay zero), so ‖δ/|θ|‖ = ε and δ/|θ| points along v. Every
    point of the ascent stays in the ball."""
    objective, hessian = tiny
    v = torch.linalg.eigh(hessian)[1][:, -1].float()
    base_loss = objective.loss()
    eps = 0.05
    l2 = worst_case(objective, base_loss, v, eps, steps=0, ball="l2")
    assert l2["value_pct"] == pytest.approx(relative_increase_pct(objective, base_loss, v, eps), rel=1e-6)

    scale = objective.base.abs()
    movable = scale > 0
    assert not movable.all()  # GPT-2 starts its biases at zero
    perturbations = []
    move_to = objective.move_to

    def recording_move_to(coefficients=(), directions=(), base_scale=1.0):
        perturbations.extend(c * d.clone() for c, d in zip(coefficients, directions))
        move_to(coefficients, directions, base_scale)

    monkeypatch.setattr(objective, "move_to", recording_move_to)
    adaptive = worst_case(objective, base_loss, v, eps, steps=3, ball="adaptive")
    monkeypatch.undo()
    first = perturbations[0]
    u = first[movable] / scale[movable]
    assert float(u.norm()) == pytest.approx(eps, rel=1e-5)
    assert float(u @ v[movable]) / float(u.norm() * v[movable].norm()) == pytest.approx(1.0, abs=1e-6)
    assert len(perturbations) == 4  # three ascent steps and the last point
    for delta in perturbations:
        assert torch.all(delta[~movable] == 0) and float((delta[movable] / scale[movable]).norm()) <= eps * (1 + 1e-5)
    start = worst_case(objective, base_loss, v, eps, steps=0, ball="adaptive")
    assert start["value_pct"] == pytest.approx(relative_increase_pct(objective, base_loss, first, 1.0), rel=1e-6)
    assert adaptive["value_pct"] >= start["value_pct"]  # the best point visited, the start included


def test_symmetric_difference_measures_curvature_while_the_one_sided_carries_the_gradient(tiny):
    """In float64: (L(θ+εd) + L(θ−εd))/2 − L(θ) = ½ε²dᵀHd + O(ε⁴), while the one-sided difference adds ε·gᵀd."""
    objective, hessian = tiny
    objective = Objective(copy.deepcopy(objective.model).double(), objective.batches)
    base_loss, grad = objective.loss_and_grad()
    v = torch.linalg.eigh(hessian)[1][:, -1]
    randoms = random_unit_directions(objective.base, 3, seed=5)
    random_curvatures = curvatures(objective, randoms)
    assert random_curvatures == pytest.approx([float(d @ hessian @ d) for d in randoms], rel=1e-4, abs=1e-6)
    curvature = curvatures(objective, [v])[0]
    remainders = []
    for eps in (2.5e-3, 1.25e-3, 6.25e-4, 3.125e-4):
        result = eps_sharpness(objective, base_loss, eps, v, curvature, randoms, random_curvatures)
        assert result["below_resolution"] == []
        predicted = [100 * 0.5 * eps**2 * c / base_loss for c in random_curvatures]
        assert result["eigvec_symmetric_predicted_pct"] == pytest.approx(100 * 0.5 * eps**2 * curvature / base_loss)
        assert result["random_symmetric_mean_predicted_pct"] == pytest.approx(sum(predicted) / 3)
        symmetric = [(relative_increase_pct(objective, base_loss, d, eps) + relative_increase_pct(objective, base_loss, d, -eps)) / 2
                     for d in randoms]
        at_max = symmetric.index(max(symmetric))
        assert result["random_symmetric_max_pct"] == pytest.approx(symmetric[at_max], rel=1e-12)
        assert result["random_symmetric_max_predicted_pct"] == pytest.approx(predicted[at_max])
        assert abs(result["random_symmetric_mean_pct"] - sum(predicted) / 3) < 0.2 * abs(sum(predicted) / 3)
        remainder = abs(result["eigvec_symmetric_pct"] - result["eigvec_symmetric_predicted_pct"])
        assert remainder < 0.03 * result["eigvec_symmetric_predicted_pct"]
        one_sided_gap = result["eigvec"] - result["eigvec_symmetric_predicted_pct"]
        gradient_term = 100 * eps * abs(float(grad @ v)) / base_loss
        assert one_sided_gap == pytest.approx(gradient_term, rel=0.05) and one_sided_gap > 100 * remainder
        remainders.append(remainder)
    ratios = [a / b for a, b in zip(remainders, remainders[1:])]
    assert min(ratios) > 12  # halving ε divides the remainder by ~16: fourth order


def test_differences_below_the_loss_resolution_are_flagged_not_reported(tiny):
    """In fp32, against the same differences in float64: below the resolution they are null and named;
    above it the fp32 value is within the resolution of the float64 one."""
    objective, hessian = tiny
    exact = Objective(copy.deepcopy(objective.model).double(), objective.batches)
    resolution = loss_resolution_pct(torch.float32)
    assert resolution == 100 * 8 * torch.finfo(torch.float32).eps
    v = torch.linalg.eigh(hessian)[1][:, -1]
    randoms = random_unit_directions(exact.base, 3, seed=5)
    random_curvatures = curvatures(exact, randoms)
    curvature = curvatures(exact, [v])[0]
    base32, base64 = objective.loss(), exact.loss()

    def both(eps):
        fp32 = eps_sharpness(objective, base32, eps, v.float(), curvature, [d.float() for d in randoms], random_curvatures)
        return fp32, eps_sharpness(exact, base64, eps, v, curvature, randoms, random_curvatures)

    small, small_exact = both(1e-4)
    for key in ("eigvec_symmetric_pct", "random_symmetric_mean_pct", "random_symmetric_max_pct"):
        assert small[key] is None and key in small["below_resolution"]
        assert abs(small_exact[key]) < resolution  # what fp32 would have printed is rounding
    assert small["eigvec_symmetric_predicted_pct"] == pytest.approx(small_exact["eigvec_symmetric_predicted_pct"])
    large, large_exact = both(1e-1)
    assert large["below_resolution"] == [] and large_exact["below_resolution"] == []
    for key in MEASURED:
        assert abs(large[key] - large_exact[key]) <= resolution, key
    tiny_step = worst_case(objective, base32, v.float(), 1e-7, steps=0, ball="l2")
    assert tiny_step["value_pct"] is None and tiny_step["below_resolution"] == ["value_pct"]
    gradient = objective.loss_and_grad()[1]
    check = taylor_check(base32, gradient, v.float(), curvature, 1e-7, tiny_step["value_pct"])
    assert check["abs_diff_pct"] is None and check["predicted_pct"] is not None
    predicted = taylor_check(base32, gradient, v.float(), curvature, 1e-3, 0.0)["predicted_pct"]
    agreeing = taylor_check(base32, gradient, v.float(), curvature, 1e-3, predicted + 0.5 * resolution)
    assert agreeing["abs_diff_pct"] is None and agreeing["below_resolution"] == ["abs_diff_pct"]


def test_power_iteration_writes_no_lambda_min(tiny):
    objective, _ = tiny
    objective = Objective(objective.model, objective.batches)
    cfg = SharpnessConfig(method="power", max_iter=4, epsilons=[1e-2], random_directions=1, worst_case_steps=0,
                          trace_samples=0)
    result = measure_sharpness(objective, cfg)
    assert result["lambda_min"] is None and result["lambda_min_converged"] is None and result["lambda_min_residual"] is None
    assert result["converged"] == result["lambda_max_converged"] and result["eigenvalues_converged"] == [result["converged"]]
    assert result["eigenvalue_residuals"] == [result["lambda_max_residual"]] and result["lambda_max_residual"] > 0
    assert result["hvp_total"] == result["hvp_count"] + 1 + 1  # the solver, vᵀHv, the random direction's dᵀHd
