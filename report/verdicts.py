"""Verdict forms for docs/results.md (report.results_doc): each judges one claim from saved numbers (a summary.json's
quantities, or a measure's own files copied beside it) and returns what is claimed with its two sides, which
verdict() compares by the report's findings' rule (report.findings.separated: mean ± 2 s.e. apart or not).

A Measure compares two runs' mean ± 2 standard errors over seeds (or, `paired`, each seed's difference against 0);
a pruning claim (PrunedMeasure) reads each seed's prune.json, a tracked λ_max against its threshold (EdgeMeasure)
each seed's track.json, a sameness claim (SameMeasure) each seed's |difference| against a tolerance; a rank
correlation (CorrelationMeasure: the correlate stage's correlation.json) is judged by its bootstrap interval against 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from report.findings import SPREAD, separated
from report.summary import mean_and_stderr
from report.tables import RESULTS_PAGE, format_number, format_value
from utils.io import read_json

SEED_BY_SEED = ", seed by seed (the difference against 0)"


@dataclass(frozen=True)
class Measure:
    """The claim that `quantity` (a summary.json quantity) is lower in run `lower` than in run `higher`; `paired`: each
    seed's lower - higher against 0, for runs a seed pairs beyond training (exp6: each seed's own base model)."""
    quantity: str
    lower: str
    higher: str
    paired: bool = False

    @property
    def runs(self) -> tuple[str, ...]:
        return self.lower, self.higher

    def judged(self, runs: dict, saved: Path) -> tuple[str, dict, dict]:
        """What is claimed, and the lower and the higher side's numbers (summary.json's)."""
        lower, higher = (runs[name]["quantities"].get(self.quantity, {}) for name in self.runs)
        claimed = f"{self.quantity} lower in {self.lower} than in {self.higher}"
        if self.paired:
            return claimed + SEED_BY_SEED, paired(lower.get("per_seed", {}), higher.get("per_seed", {})), fixed(0.0)
        return claimed, lower, higher


@dataclass(frozen=True)
class PrunedMeasure:
    """The claim that zeroing the fraction `fraction` of LoRA run `run`'s adapter weights by smallest magnitude leaves
    a lower validation perplexity than zeroing as many at random: each seed's prune.json (the prune stage's, copied
    to docs/results/<experiment>/<run>/seed-<s>/) gives one value of each, the random side its masks' mean; `paired`:
    each seed's magnitude - random (the same adapter) against 0."""
    run: str
    fraction: float
    paired: bool = False
    FILES = "*/seed-*/prune.json"  # what collect copies for it

    @property
    def runs(self) -> tuple[str, ...]:
        return (self.run,)

    def judged(self, runs: dict, saved: Path) -> tuple[str, dict, dict]:
        magnitude, random = {}, {}
        for path in sorted((saved / self.run).glob("seed-*/prune.json")):
            pruned, seed = read_json(path), path.parent.name
            magnitude |= {seed: row["val_perplexity"] for row in pruned["magnitude"] if row["fraction"] == self.fraction}
            random |= {seed: mean_and_stderr([mask["val_perplexity"] for mask in row["seeds"]])["mean"]
                       for row in pruned["random"] if row["fraction"] == self.fraction}
        claimed = (f"val_perplexity of {self.run} with {self.fraction:.0%} of its adapter zeroed lower by magnitude than "
                   "at random")
        if self.paired:
            return claimed + SEED_BY_SEED, paired(magnitude, random), fixed(0.0)
        return claimed, mean_and_stderr(list(magnitude.values())), mean_and_stderr(list(random.values()))


@dataclass(frozen=True)
class SameMeasure:
    """The claim that `quantity` is the same in runs `first` and `second`: each seed's |difference| between the two
    (a seed pairs them: the same texts, order and initial weights) lies below `tolerance`, judged by the same rule
    against that fixed value (the mean |difference| + 2 s.e. below it: seen; - 2 s.e. above it: not seen)."""
    quantity: str
    first: str
    second: str
    tolerance: float

    @property
    def runs(self) -> tuple[str, ...]:
        return self.first, self.second

    def judged(self, runs: dict, saved: Path) -> tuple[str, dict, dict]:
        first, second = (runs[name]["quantities"].get(self.quantity, {}).get("per_seed", {}) for name in self.runs)
        differences = [abs(first[seed] - second[seed]) for seed in first
                       if first[seed] is not None and second.get(seed) is not None]
        return (f"{self.quantity} the same in {self.first} and {self.second} (each seed's |difference| below "
                f"{self.tolerance:g})", mean_and_stderr(differences), fixed(self.tolerance))


def paired(lower: dict, higher: dict) -> dict:
    """Mean ± s.e. of each seed's lower - higher, over the seeds both measured as numbers."""
    return mean_and_stderr([lower[seed] - higher[seed] for seed in lower
                            if isinstance(lower[seed], float | int) and isinstance(higher.get(seed), float | int)])


def fixed(value: float) -> dict:
    """A fixed value as verdict() and number() take a measured one: no spread, no seeds."""
    return {"mean": value, "stderr": 0.0, "fixed": True}


@dataclass(frozen=True)
class EdgeMeasure:
    """The claim that run `run`'s tracked λ_max over its edge-of-stability threshold (train.track: λ_max over 2/η, or
    with `preconditioned` Adam's preconditioned λ_max over (2 + 2β₁)/((1 − β₁)η)) is lower at `lower` than at
    `higher`, each 'first' or 'highest' (of the tracked points with a value: Adam's preconditioned λ_max has none at
    step 0) or a fixed ratio (1: the threshold itself). Each seed's track.json (the train stage's, copied to
    docs/results/<experiment>/<run>/seed-<s>/) gives one ratio per side."""
    run: str
    lower: str | float
    higher: str | float
    preconditioned: bool = False
    FILES = "*/seed-*/track.json"  # what collect copies for it
    AT = {"first": lambda ratios: ratios[0], "highest": max}

    @property
    def runs(self) -> tuple[str, ...]:
        return (self.run,)

    def judged(self, runs: dict, saved: Path) -> tuple[str, dict, dict]:
        value, limit = (("preconditioned_lambda_max", "preconditioned_threshold") if self.preconditioned
                        else ("lambda_max", "threshold"))
        ratios = [[p[value] / p[limit] for p in read_json(path)["points"] if p.get(value) is not None and p.get(limit)]
                  for path in sorted((saved / self.run).glob("seed-*/track.json"))]

        def side(at: str | float) -> tuple[str, dict]:
            if isinstance(at, str):
                return f"its {at} point", mean_and_stderr([self.AT[at](r) for r in ratios if r])
            return f"{at:g}", fixed(at)

        (low_text, low), (high_text, high) = side(self.lower), side(self.higher)
        return f"{value} / {limit} of {self.run}: {low_text} below {high_text}", low, high


@dataclass(frozen=True)
class CorrelationMeasure:
    """The claim that `measure` rises with the generalization gap over every run and seed: Kendall's τ with the gap
    (the correlate stage's correlation.json, copied to docs/results/<experiment>/) has its bootstrap interval above 0
    (seen), below 0 (not seen) or around 0 (not resolvable)."""
    measure: str
    FILES = "correlation.json"  # what collect copies for it
    runs = ()  # the points are every run and seed of the experiment

    def judged(self, runs: dict, saved: Path) -> tuple[str, dict, dict]:
        tau = read_json(saved / self.FILES)["measures"].get(self.measure, {}).get("vs_gap", {})
        return f"Kendall τ of {self.measure} with the generalization gap above 0", fixed(0.0), interval(tau)


def interval(correlation: dict) -> dict:
    """A rank correlation and its bootstrap interval as verdict() and number() take a mean over seeds: the interval's
    middle ± SPREAD "standard errors" is exactly the interval, so separated() compares its bounds."""
    bounds = correlation.get("kendall_interval") or [None, None]
    if any(b is None or math.isnan(b) for b in bounds):  # an undefined τ (a constant measure; JSON null): no verdict
        return {"mean": None, "n": correlation.get("n", 0)}
    low, high = bounds
    return {"mean": (low + high) / 2, "stderr": (high - low) / (2 * SPREAD), "n": correlation["n"],
            "estimate": correlation["kendall_tau"], "interval": bounds}


AnyMeasure = Measure | PrunedMeasure | SameMeasure | EdgeMeasure | CorrelationMeasure


def verdict(lower: dict, higher: dict) -> str:
    """'seen', 'not seen' or 'not resolvable': whether `lower`'s mean ± 2 s.e. lies below `higher`'s (the report's
    findings' rule, report.findings.separated; see the module doc)."""
    if lower.get("mean") is None or higher.get("mean") is None:
        return "not resolvable"
    if separated(lower, higher):
        return "seen"
    if separated(higher, lower):
        return "not seen"
    return "not resolvable"


def number(stat: dict) -> str:
    """mean ± s.e. (n), with what was left out of the mean said (report.tables.format_value in the results page's
    words); a fixed value, or a rank correlation with its interval."""
    if stat.get("fixed"):
        return f"{format_number(stat['mean'])} (fixed)"
    if stat.get("interval"):
        low, high = (format_number(bound, 3) for bound in stat["interval"])
        return f"{format_number(stat['estimate'], 3)}, interval [{low}, {high}] (n = {stat['n']})"
    return format_value(stat, wording=RESULTS_PAGE)


def measure_sentence(measure: AnyMeasure, runs: dict, saved: Path) -> str:
    """'<claimed>: <verdict> (<one side> against <the other>)'."""
    claimed, lower, higher = measure.judged(runs, saved)
    return f"{claimed}: {verdict(lower, higher)} ({number(lower)} against {number(higher)})"
