"""report.tables: one md_table draws every table; the cells are formatted the same way everywhere."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from report.experiment_results import ExperimentResults
from report.summary import mean_and_stderr
from report.tables import (correlation_table, geometry_table, landscape_settings_table, md_table, quantities_table, runs_table,
                           search_table)


def test_md_table_writes_a_header_its_rule_and_one_line_per_row():
    assert md_table(["run", "λ_max"], [["a", "1.5"], ["b", "–"]]) == \
        "| run | λ_max |\n|---|---|\n| a | 1.5 |\n| b | – |"
    assert md_table(["run"], []) == "| run |\n|---|"


def test_a_quantities_table_shows_each_runs_mean_and_standard_error_and_a_dash_for_an_unknown_quantity():
    summary = {"runs": {"a": {"quantities": {"trace": mean_and_stderr([1.0, 3.0])}},
                        "b": {"quantities": {"trace": mean_and_stderr([2.0, math.nan])}}}}
    assert quantities_table(summary, [("trace", "trace of H"), ("other", "not measured")]) == (
        "| run | trace of H | not measured |\n|---|---|---|\n"
        "| a | 2 ± 1 (n=2) | – |\n"
        "| b | 2 (n=1, 1 diverged) | – |")


def _stats(tau: float, n: int = 4) -> dict:
    return {"n": n, "kendall_tau": tau, "kendall_interval": [tau - 0.1, tau + 0.1], "spearman_rho": tau,
            "spearman_interval": [tau - 0.2, tau + 0.2]}


def test_the_correlation_table_puts_the_strongest_measure_first_with_the_granulated_coefficients():
    granulated = {"per_axis": {"train.lr": {"psi": 0.5}}, "overall": 0.5}
    correlation = {"measures": {
        "weak": {"vs_gap": _stats(0.1), "vs_test_loss": _stats(0.0), "granulated": granulated},
        "undefined": {"vs_gap": _stats(math.nan), "vs_test_loss": _stats(0.0), "granulated": granulated},
        "strong": {"vs_gap": _stats(-0.8), "vs_test_loss": _stats(0.5), "granulated": granulated}}}
    assert correlation_table(correlation).splitlines() == [
        "| measure | n | τ with gap | ρ with gap | τ with test loss | ψ train.lr | Ψ |",
        "|---|---|---|---|---|---|---|",
        "| strong | 4 | -0.8 [-0.9, -0.7] | -0.8 [-1, -0.6] | 0.5 [0.4, 0.6] | 0.5 | 0.5 |",
        "| weak | 4 | 0.1 [0, 0.2] | 0.1 [-0.1, 0.3] | 0 [-0.1, 0.1] | 0.5 | 0.5 |",
        "| undefined | 4 | nan [nan, nan] | nan [nan, nan] | 0 [-0.1, 0.1] | 0.5 | 0.5 |"]


def test_the_search_table_counts_only_the_counted_trials():
    trials = [{"counted": True, "state": "complete", "seconds": 1.25, "value": 3.0},
              {"counted": True, "state": "pruned", "seconds": 0.5, "value": None},
              {"counted": False, "state": "complete", "seconds": 9.0, "value": 1.0}]  # a surplus draw
    search = {"studies": {"tpe-0": {"sampler": "tpe", "seed": 0, "trials": trials, "best": {"value": 3.0, "run": "t0"}}}}
    assert search_table(search).splitlines()[2] == "| tpe-0 | tpe | 0 | 2 | 1 | 1 | 0 | 3 | t0 | 1.8 |"


def test_whether_lambda_converged_reads_yes_no_or_how_many_seeds():
    summary = {"runs": {run: {"quantities": {"lambda_max_converged": mean_and_stderr(values)}}
                        for run, values in (("a", [True, True]), ("b", [False]), ("c", [True, False, True]),
                                            ("d", [None]))}}
    assert quantities_table(summary, [("lambda_max_converged", "λ_max converged")]).splitlines()[2:] == [
        "| a | yes |", "| b | no |", "| c | 2 of 3 |", "| d | – |"]


def _surface(**settings) -> dict:
    """One seed's landscape_2d.npz, as report.reader reads it."""
    return {"alphas": np.linspace(-1, 1, 3), "betas": np.linspace(-1, 1, 3), "norm": "layer", "seed": 0, "ignore": "",
            "eval_batches": 1, "eval_batch_size": 4, "eval_tokens": 50, "eval_seed": 0,
            "train_loss": np.ones((3, 3)), **settings}


def test_each_landscape_names_its_weight_space_directions_and_grid():
    lora = {"model": {"adapter": {"type": "lora"}}, "landscape": {"space": "merged"}}
    results = ExperimentResults(name="exp", folder=Path("."), runs=["full", "lora"], seeds={}, configs={
        "full": {"model": {"adapter": {"type": "none"}}}, "lora": lora}, surfaces={
        "full": {1: _surface()},
        "lora": {1: _surface(directions="pca", explained_variance=np.array([0.912, 0.051]),
                             alphas=np.linspace(-18, 18, 5), betas=np.linspace(-6, 6, 3))}})
    assert landscape_settings_table(results).splitlines() == [
        "| run | weight space | directions | grid | evaluation set | diverged points |", "|---|---|---|---|---|---|",
        "| full | full model | random, layer-normalised, landscape.seed 0 | 3 × 3 over [−1, 1]² | 1 × 4 texts, 50 "
        "tokens (eval_seed 0) | 0 |",
        "| lora | LoRA merged | PCA of the training path (PC1 91%, PC2 5% of its variance) | 5 × 3 over α ∈ [−18, 18], "
        "β ∈ [−6, 6] | 1 × 4 texts, 50 tokens (eval_seed 0) | 0 |"]


def test_the_runs_table_gives_searched_values_to_four_significant_digits():
    config = {"train": {"optimizer": "adamw", "lr": 0.000316227766, "batch_size": 8, "weight_decay": 0.0123456789,
                        "epochs": 1}, "data": {"order": "random"}}
    results = ExperimentResults(name="exp", folder=Path("."), runs=["t3"], seeds={"t3": [1]}, configs={"t3": config})
    assert runs_table(results).splitlines()[2] == "| t3 | adamw | 0.0003162 | 8 | 0.01235 | none | random | 1 | 1 |"


def test_the_geometry_intervals_stand_next_to_their_values():
    frame = {"l11": {"median": {"total": 100.0, "ci": [80.0, 120.0]}}, "spectral": {"value": 5.0},
             "frobenius": {"value": 7.0, "ci": [6.0, 8.0]}}
    results = ExperimentResults(name="exp", folder=Path("."), runs=["a"], seeds={"a": [1]}, configs={},
                                geometry={"a": {1: {"dim": 10, "frames": {"original": frame}}}})
    values = {"train_loss": 3.0, "original_l11_per_coordinate": 10.0, "original_l11_ratio": 2.0, "original_frobenius": 7.0}
    summary = {"runs": {"a": {"quantities": {name: mean_and_stderr([v]) for name, v in values.items()}}}}
    header, _, row = geometry_table(results, summary).splitlines()
    cells = dict(zip(header.split(" | "), row.split(" | ")))
    assert cells["‖H‖₁,₁/d [CI]"] == "10 [8, 12]" and cells["‖H‖₁,₁/(d‖H‖₂) [CI]"] == "2 [1.6, 2.4]"
    assert cells["‖H‖_F [CI]"] == "7 [6, 8]" and cells["‖H‖₂"] == "–" and cells["| run"] == "| a"
    assert cells["‖RᵀHR‖₁,₁/d"] == "–"  # no rotated frame measured: no interval
