"""The report's findings, in words: what differs between the runs on the experiment's headline quantities (with n
and the seed spread, claiming a difference only where the spreads do not overlap), and the differences in training
that confound a comparison of sharpness (optimizer steps, final training loss).
"""

from __future__ import annotations

from report.experiment_results import ExperimentResults
from report.summary import mean_and_stderr
from report.tables import format_number

# The quantities a finding is about, in the report's order: {name in summary.json: what the report calls it}.
HEADLINE = {"val_loss": "val loss", "test_loss": "test loss", "generalization_gap": "generalization gap (test − train)",
            "lambda_max": "λ_max", "trace": "trace of H", "original_l11_ratio": "‖H‖₁,₁/(d‖H‖₂)",
            "best_val_perplexity": "best val perplexity"}
SPREAD = 2  # two standard errors each side: about a 95% interval of a mean
UNKNOWN_SPREAD = 0.1  # with one seed, a training loss differing by more than this share counts as a difference


def _stated(name: str, stats: dict) -> str:
    """"large 1.52 ± 0.03": a group's mean with its standard error, where it has one."""
    spread = "" if stats["stderr"] is None else f" ± {stats['stderr']:.2g}"
    return f"{name} {format_number(stats['mean'], 3)}{spread}"


def _counts(groups: list[dict]) -> str:
    ns = {stats["n"] for stats in groups}
    return f"n={ns.pop()} each" if len(ns) == 1 else "n=" + "/".join(str(stats["n"]) for stats in groups)


def separated(low: dict, high: dict) -> bool | None:
    """Whether the lowest and highest means lie apart by more than their spreads (None: a spread is unknown)."""
    if low["stderr"] is None or high["stderr"] is None:
        return None
    return low["mean"] + SPREAD * low["stderr"] < high["mean"] - SPREAD * high["stderr"]


def _verdict(low: dict, high: dict) -> str:
    apart = separated(low, high)
    if apart is None:
        return "one seed: the seed spread is unknown, so no difference is claimed"
    return ("a difference beyond the seed spread (mean ± 2 s.e. do not overlap)" if apart
            else "within the seed spread (mean ± 2 s.e. overlap)")


def comparison(title: str, groups: dict[str, dict], unit: str = "runs") -> str | None:
    """One finding over groups {name: mean_and_stderr stats}: the two for two groups, else the lowest and the
    highest of them; None where fewer than two groups have a value."""
    measured = sorted(((name, stats) for name, stats in groups.items() if stats["n"]), key=lambda item: item[1]["mean"])
    if len(measured) < 2:
        return None
    (low_name, low), (high_name, high) = measured[0], measured[-1]
    if len(measured) == 2:
        values = f"{_stated(low_name, low)} vs {_stated(high_name, high)}"
    else:
        values = f"lowest {_stated(low_name, low)}, highest {_stated(high_name, high)} of {len(measured)} {unit}"
    return f"{title}: {values} ({_counts([low, high])}): {_verdict(low, high)}."


def findings(results: ExperimentResults, summary: dict) -> list[str]:
    """The headline comparisons between the runs (and between the search methods), one line each."""
    lines = [comparison(title, {run: data["quantities"][name] for run, data in summary["runs"].items()
                                if name in data["quantities"]})
             for name, title in HEADLINE.items()]
    if results.search:
        best: dict[str, list] = {}
        for study in results.search["studies"].values():
            best.setdefault(study["sampler"], []).append((study["best"] or {}).get("value"))
        lines.append(comparison("search, best value found (over the studies of each method)",
                                {sampler: mean_and_stderr(values) for sampler, values in best.items()}, "methods"))
    return [f"- {line}" for line in lines if line]


def _range(title: str, groups: dict[str, dict], digits: int) -> str:
    measured = sorted(((name, stats) for name, stats in groups.items() if stats["n"]), key=lambda item: item[1]["mean"])
    (low_name, low), (high_name, high) = measured[0], measured[-1]
    return (f"{title} from {format_number(low['mean'], digits)} ({low_name}) to "
            f"{format_number(high['mean'], digits)} ({high_name})")


def confounds(summary: dict) -> str | None:
    """A note where the runs differ in optimizer steps, or in final training loss beyond the seed spread (by over
    10% where a run has one seed): their
    sharpness then differs also because they trained for different lengths or to different losses."""
    def by_run(name: str) -> dict[str, dict]:
        return {run: data["quantities"][name] for run, data in summary["runs"].items()
                if data["quantities"].get(name, {}).get("n")}

    differences = []
    steps = by_run("optimizer_steps")
    if len(steps) > 1 and len({stats["mean"] for stats in steps.values()}) > 1:
        differences.append(_range("optimizer steps", steps, 4))
    losses = by_run("final_train_loss") or by_run("train_loss")
    if len(losses) > 1:
        low, high = sorted(losses.values(), key=lambda stats: stats["mean"])[::len(losses) - 1]
        apart = separated(low, high)
        if apart or (apart is None and high["mean"] - low["mean"] > UNKNOWN_SPREAD * abs(high["mean"])):
            differences.append(_range("final training loss", losses, 3))
    if not differences:
        return None
    return ("Confound: the runs differ in " + " and in ".join(differences) + ". Their sharpness differs also because "
            "they trained for different lengths or to different losses, not only because of the setting varied; "
            "compare runs at equal steps or equal loss (e.g. with train.budget) to tell these apart.")
