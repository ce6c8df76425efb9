"""The `correlate` stage: does flatness predict generalization, over all runs of an experiment?

Every trained (run, seed) is one point (report.summary.correlation_points): its generalization gap (test
loss − training loss, both at the final weights in eval mode), its test loss, and each measure it has
(λ_max, trace, ε-sharpness, worst-case sharpness per ε, ‖H‖₁,₁/d, the final training loss, ‖θ‖,
‖θ − θ₀‖). For each measure: Kendall's τ and Spearman's ρ with the gap and with the test loss, each with
a bootstrap interval over the points, and, where the points form a full grid of the varied settings, Jiang
et al.'s (2020) granulated Kendall coefficient per setting. Writes <experiment>/correlation.json; the
report draws it (one scatter per measure, coloured by a varied setting: correlate.color_by).

A damaged input (metrics.json, sharpness.json, geometry.json) stops the stage with the command that makes it
again; a listed (run, seed) that is not trained as listed is left out, named on the console and in
correlation.json's `left_out`, with why.
"""

from __future__ import annotations

from pathlib import Path

from sharpness.correlation import granulated_kendall, is_grid, rank_correlations
from config.schema import Experiment
from utils.errors import UserError
from models.runs import experiment_dir, stage_command
from utils.io import write_json
from report.reader import load_results, redo_stages
from report.summary import CORRELATION_FILE, correlation_points, points_fingerprint

POINT_STAGES = ("train", "sharpness", "geometry")  # the stages whose files the points are read from


def correlate(points: dict, resamples: int, confidence: float, seed: int) -> dict:
    """correlation.json's statistics from correlation_points' output."""
    axes = points["axes"]
    grid = bool(axes) and is_grid({axis: [p["axes"][axis] for p in points["points"]] for axis in axes})
    # Jiang et al. average ψ over hyper-parameter axes only: the seed is held fixed within a group, not an axis
    hyper, held = [a for a in axes if a != "seed"], [a for a in axes if a == "seed"]
    measures = {}
    for name in points["measures"]:
        values = [p["measures"][name] for p in points["points"]]
        measures[name] = {
            "vs_gap": rank_correlations(values, [p["gap"] for p in points["points"]], resamples, confidence, seed),
            "vs_test_loss": rank_correlations(values, [p["test_loss"] for p in points["points"]], resamples,
                                              confidence, seed),
            "granulated": granulated_kendall(values, [p["gap"] for p in points["points"]],
                                             {a: [p["axes"][a] for p in points["points"]] for a in hyper},
                                             {a: [p["axes"][a] for p in points["points"]] for a in held})
            if grid and hyper else None,
        }
    return {"axes": axes, "grid": grid, "measures": measures}


def correlate_stage(experiment: Experiment, output: Path, force: bool) -> None:
    results = load_results(output, experiment.name)
    damaged = [(err, stage) for err, stage in results.corrupt if stage in POINT_STAGES]
    if damaged:  # a point without its numbers would silently change every statistic
        stages = redo_stages([stage for _, stage in damaged], results.stages)
        raise damaged[0][0].needing(f"regenerate it with: {stage_command(experiment, output, stages)}")
    points = correlation_points(results)
    for point in points["left_out"]:
        print(f"{experiment.name}: note: {point['run']}/seed-{point['seed']} left out ({point['why']})")
    if len(points["points"]) < 3:
        raise UserError(f"{experiment.name}: correlate needs at least 3 trained runs (or seeds), found "
                        f"{len(points['points'])}; train more (a `sweep:` makes many)")
    if not points["measures"]:
        raise UserError(f"{experiment.name}: no measure was found on 3 or more runs; run the sharpness stage first")
    settings = experiment.runs[0].correlate if experiment.runs else experiment.jobs()[0].correlate
    color_by = settings.color_by or (points["axes"][0] if points["axes"] else "")
    if settings.color_by and settings.color_by not in points["axes"]:
        raise UserError(f"correlate.color_by: {settings.color_by} does not vary between the runs "
                        f"(varied: {', '.join(points['axes']) or 'nothing'})")
    missing_gap = [f"{p['run']}/seed-{p['seed']}" for p in points["points"] if p["gap"] is None]
    if missing_gap:
        print(f"{experiment.name}: note: no generalization gap for {', '.join(missing_gap[:5])} (trained by an "
              "older version, without final_train_loss); left out")
    print(f"{experiment.name}: correlating {len(points['measures'])} measures over {len(points['points'])} runs")
    stats = correlate(points, settings.resamples, settings.confidence, settings.seed)
    write_json(experiment_dir(output, experiment) / CORRELATION_FILE, {"experiment": experiment.name, "inputs": points_fingerprint(points),
                      "gap": "test loss − training loss, both at the final weights (metrics.json)",
                      "settings": {"resamples": settings.resamples, "confidence": settings.confidence,
                                   "seed": settings.seed, "color_by": color_by},
                      **stats, "points": points["points"], "left_out": points["left_out"]})
    strongest = sorted(stats["measures"].items(), key=lambda kv: -abs(kv[1]["vs_gap"]["kendall_tau"])
                       if kv[1]["vs_gap"]["kendall_tau"] == kv[1]["vs_gap"]["kendall_tau"] else 0)[:3]
    print(f"{experiment.name}: strongest with the gap: " + ", ".join(
        f"{name} τ={data['vs_gap']['kendall_tau']:.2f}" for name, data in strongest))
