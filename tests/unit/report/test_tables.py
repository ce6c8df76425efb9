"""report.tables: one md_table draws every table; the cells are formatted the same way everywhere."""

from __future__ import annotations

import math

from report.summary import mean_and_stderr
from report.tables import correlation_table, md_table, quantities_table, search_table


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
