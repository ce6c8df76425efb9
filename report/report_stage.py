"""The `report` stage: <output>/<experiment>/report.md and summary.json, from saved results only.

Both show exactly the (run, seed) pairs that experiment.json lists, with results computed from their
current checkpoints (report.results decides, and names what it leaves out). report.md holds the
study's tables (generalization, sharpness), the settings each run was measured with, the barriers,
the cost of every run and links to the figures; summary.json holds the numbers behind them (per run:
per-seed values, mean, standard error, n and the values left out). Two figures that need every run at
once are drawn here, on every call: figures/learning_curves and figures/surfaces_2d (all 2D surfaces
on one colour scale).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from optimization.cost import PEAK_FLOPS, PRICES_FILE, Prices, extrapolated_seconds, load_prices, price_for_device, usd
from optimization.estimate import estimate
from optimization.experiment_log import open_log
from config.loading import run_config_from_dict
from config.schema import Experiment
from utils.errors import CorruptFileError, UserError
from utils.io import save_figure, write_json, write_text
from models.runs import experiment_dir, stage_command
from report.results import (NOTATION, ExperimentResults, cost_columns, curvature_columns, density_columns, density_runs,
                           format_value, mean_and_stderr,
                           dynamics_section_applies, eps_columns, epsilons, generalization_columns, geometry_columns,
                           geometry_detail_table, geometry_norms, geometry_section_applies, geometry_settings_table,
                           landscape_settings_table, load_results, markdown_table, pairs_table, pca_surfaces, redo_stages,
                           budget_curves, correlation_table, prune_runs, prune_table, search_curves, search_seconds,
                           search_table, sharpness_settings_table, space_columns, step_loss_curves, summarize,
                           track_columns, track_curves)
from visualization.plots import (budget_curves_figure, correlation_figure, geometry_norms_figure, learning_curves_figure,
                                 pruning_figure, search_convergence_figure, spectral_density_figure, step_losses_figure,
                                 surfaces_figure, tracked_sharpness_figure)


def report_figures(results: ExperimentResults, summary: dict) -> dict[str, Path]:
    """Draw the experiment-wide figures that the data allow; {name: png path}."""
    figures = {}
    curves = {run: [results.metrics[run][s] for s in results.seeds[run]] for run in results.runs if results.seeds[run]}
    if curves:
        figures["learning_curves"] = learning_curves_figure(curves, f"{results.name}: learning curves")
    if geometry_section_applies(results):
        steps = step_loss_curves(results)
        if steps:
            figures["loss_per_step"] = step_losses_figure(steps, f"{results.name}: training loss per step")
        norms = geometry_norms(summary)
        if norms:
            figures["geometry_norms"] = geometry_norms_figure(norms, f"{results.name}: Hessian norms")
    if results.track:
        figures["sharpness_along_training"] = tracked_sharpness_figure(
            track_curves(results), f"{results.name}: sharpness along training (measurement set)")
    if results.density:
        figures["spectral_density"] = spectral_density_figure(
            density_runs(results), f"{results.name}: Hessian spectral density at the final weights")
    if peft_section_applies(results):
        curves = budget_curves(results)
        if curves:
            figures["perplexity_vs_budget"] = budget_curves_figure(curves, f"{results.name}: validation perplexity "
                                                                           "against what training spent")
        if results.prune:
            figures["perplexity_vs_pruned"] = pruning_figure(prune_runs(results), f"{results.name}: pruning the "
                                                                                  "LoRA adapter")
    if results.search:
        objectives = {study["objective"] for study in results.search["studies"].values()}
        figures["search_convergence"] = search_convergence_figure(
            search_curves(results.search), search_seconds(results.search), f"{results.name}: search methods",
            objectives.pop() if len(objectives) == 1 else "value")
    if results.correlation:
        figures["correlation"] = correlation_figure(results.correlation, f"{results.name}: measures against the "
                                                                         "generalization gap")
    panels = [(f"{run}, seed {seed}", data["alphas"], data["betas"], data["train_loss"])
              for run in results.runs for seed, data in sorted(results.surfaces.get(run, {}).items())]
    if panels:
        figures["surfaces_2d"] = surfaces_figure(panels)
    paths = {}
    for name, figure in figures.items():
        for ext in ("png", "pdf"):
            save_figure(results.folder / "figures" / f"{name}.{ext}", figure)
        paths[name] = results.folder / "figures" / f"{name}.png"
    return paths


def _settings_table(results: ExperimentResults) -> str:
    lines = ["| run | optimizer | lr | batch size | weight decay | rotation | order | epochs | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in results.runs:
        cfg = results.configs.get(run, {})
        train, data = cfg.get("train", {}), cfg.get("data", {})
        seeds = ", ".join(str(s) for s in results.seeds.get(run, [])) or "–"
        lines.append(f"| {run} | {train.get('optimizer')} | {train.get('lr'):g} | {train.get('batch_size')} | "
                     f"{train.get('weight_decay'):g} | {train.get('rotation', 'none')} | {data.get('order')} | "
                     f"{train.get('epochs')} | {seeds} |")
    return "\n".join(lines)


def _image(path: Path | None, alt: str) -> str:
    """A link to a figure drawn from the current results, or why there is none."""
    return f"![{alt}](figures/{path.name})" if path else f"({alt}: no figure of the current results; see Missing)"


def dollar_table(results: ExperimentResults, summary: dict, prices: Prices) -> str:
    """What each run cost where it ran (on all its devices: a torchrun job's world_size of them) and what its FLOPs
    would cost on each priced GPU (means over seeds)."""
    gpus = {name: price for name, price in prices.devices.items() if price.peak}
    lines = ["| run | ran on | train stage $ | $ to best val ppl | " + " | ".join(f"on {name}" for name in gpus) + " |",
             "|" + "---|" * (4 + len(gpus))]
    for run in results.runs:
        seeds = [results.metrics[run][seed] for seed in results.seeds.get(run, [])]
        if not seeds:
            continue
        quantities = summary["runs"][run]["quantities"]
        device = seeds[0]["device"] if seeds[0]["device"] == "cpu" else seeds[0].get("device_name", "")
        match = price_for_device(prices, device)

        def dollars(name: str, usd_per_hour: float) -> str:
            per_seed = quantities[name]["per_seed"]
            spent = mean_and_stderr([None if per_seed.get(str(seed)) is None else
                                     usd(per_seed[str(seed)], usd_per_hour, results.metrics[run][seed].get("world_size", 1))
                                     for seed in results.seeds[run]])["mean"]
            return "–" if spent is None else f"${spent:.3g}"

        here = ["–", "–"] if match is None else [dollars("wall_time_s", match[1].usd_per_hour),
                                                 dollars("seconds_to_best", match[1].usd_per_hour)]
        precision = results.configs[run]["train"].get("precision", "fp32")
        flops = quantities["train_flops"]["mean"]
        elsewhere = []
        for price in gpus.values():
            peak = PEAK_FLOPS[price.peak].get(precision)
            if flops is None or not peak:
                elsewhere.append("–")
                continue
            seconds = extrapolated_seconds(flops, peak, prices.assumed_mfu)
            elsewhere.append(f"${usd(seconds, price.usd_per_hour):.3g} ({seconds:.3g} s)")
        ranks = sorted({m.get("world_size", 1) for m in seeds})
        where = seeds[0].get("device_name", seeds[0]["device"]) + ("" if ranks == [1] else f" × {'/'.join(map(str, ranks))}") \
            + ("" if match is None else f" ({match[0]}, ${match[1].usd_per_hour:g}/h each)")
        lines.append(f"| {run} | {where} | " + " | ".join(here + elsewhere) + " |")
    return "\n".join(lines)


def estimate_table(results: ExperimentResults) -> str:
    """The estimate that `python -m optimization.estimate` gives before a run, beside what the run measured (means
    over seeds): it counts every step at batch_size × data.max_length, so measured / estimate is what padding only
    to the longest text saved (1 when every text fills max_length and no budget stops the run early)."""
    lines = ["| run | steps estimated | steps taken | FLOPs at most | FLOPs measured | measured / estimate |",
             "|---|---|---|---|---|---|"]
    for run in results.runs:
        seeds = [results.metrics[run][seed] for seed in results.seeds.get(run, [])]
        if not seeds:
            continue
        try:
            predicted = estimate(run_config_from_dict(results.configs[run]))
        except UserError as err:
            lines.append(f"| {run} | – | – | – | – | no estimate: {str(err).split(': ', 1)[-1]} |")
            continue
        steps = sum(m["optimizer_steps"] for m in seeds) / len(seeds)
        counted = [m["train_flops"] for m in seeds if m.get("train_flops") is not None]
        measured = sum(counted) / len(counted) if counted else None
        ratio = "–" if measured is None else f"{measured / predicted['flops']:.3f}"
        lines.append(f"| {run} | {predicted['steps']} | {steps:g} | {predicted['flops']:.3g} | "
                     f"{'–' if measured is None else format(measured, '.3g')} | {ratio} |")
    return "\n".join(lines)


def render_report(results: ExperimentResults, summary: dict, figures: dict, prices: Prices | None = None,
                  redo: str = "") -> str:
    """report.md; `redo`: the command that makes what is missing."""
    sections = [
        f"# Experiment `{results.name}`",
        "Generated by `python run.py --stages report` from the files in this folder, for the runs and seeds "
        f"that experiment.json lists. {NOTATION}",
        _settings_table(results),
        "## Learning curves",
        _image(figures.get("learning_curves"), "learning curves"),
        "## Generalization (the study's Table II)",
        markdown_table(summary, generalization_columns()),
    ]
    if "sharpness" in results.stages or results.sharpness:
        sections += _sharpness_sections(results, summary)
    if geometry_section_applies(results):
        sections += _geometry_sections(results, summary, figures)
    if dynamics_section_applies(results):
        sections += _dynamics_sections(results, summary, figures)
    if "landscape" in results.stages or results.interpolation or results.init_to_final or results.surfaces:
        sections += _landscape_sections(results, summary, figures)
    if peft_section_applies(results):
        sections += _peft_sections(results, summary, figures)
    if results.search:
        sections += _search_sections(results, figures)
    if results.correlation:
        sections += _correlation_sections(results, figures)
    singles = [f"[{stem}](figures/{path.name})" for stem, path in results.figures.items() if stem != "interpolation"]
    if singles:
        sections.append("Each run: " + ", ".join(singles))
    sections += ["## Cost", "Training time covers the optimizer steps (not validation, tracking or checkpoints); the "
                 "train stage's wall time all of it, in the invocation that finished the run; tokens/s counts "
                 "non-padding input tokens; FLOPs are the analytic count of optimization.cost (padded positions "
                 "included) and MFU their rate over the peak of the devices that trained (one device's peak × a "
                 "torchrun job's ranks; a datasheet's for GPUs, a matmul probe's for the CPU); peak memory is GPU "
                 "memory allocated on CUDA, the process's largest resident set on CPU.",
                 markdown_table(summary, cost_columns(summary)),
                 "Before a run, `python -m optimization.estimate --config FILE` prices it from its config alone (every "
                 "step at batch_size × data.max_length tokens, so at most what it will spend); against what the runs "
                 "measured:",
                 estimate_table(results)]
    if prices is not None:
        sections += [f"In dollars, from {PRICES_FILE.name} (each price's date and source are in the file; prices "
                     "change, check them): the train stage's wall time and the training time until the best "
                     "validation perplexity, at the price of the device the run used times the devices it used (a "
                     "torchrun job's ranks, “× N”; – where it is not priced), and the run's training FLOPs on each "
                     "priced GPU at the run's precision (seconds on one GPU; N GPUs take 1/N of them for the same "
                     "dollars), at its peak × "
                     f"assumed_mfu = {prices.assumed_mfu:g}. A run's own config sets its scale: the paper-scale "
                     "configs (e.g. config/exp6-peft.yaml) give paper-scale dollars.",
                     dollar_table(results, summary, prices)]
    if results.missing:
        sections += ["## Missing", "\n".join(f"- {item}" for item in results.missing)]
        if redo:
            sections.append(f"To make them: `{redo}`")
    if results.ignored:
        sections += ["## Ignored", "Folders on disk that experiment.json does not list with their current settings:",
                     "\n".join(f"- {item}" for item in results.ignored)]
    return "\n\n".join(sections) + "\n"


def peft_section_applies(results: ExperimentResults) -> bool:
    """Whether the experiment has LoRA runs or runs under a training budget."""
    return any(cfg.get("model", {}).get("adapter", {}).get("type", "none") != "none"
               or any(cfg.get("train", {}).get("budget", {}).values()) for cfg in results.configs.values())


def _adapter_table(results: ExperimentResults, summary: dict) -> str:
    lines = ["| run | adapter | trainable parameters | budget | stopped at |", "|---|---|---|---|---|"]
    for run in results.runs:
        cfg = results.configs[run]
        adapter, budget = cfg["model"].get("adapter", {"type": "none"}), cfg["train"].get("budget", {})
        kind = "full fine-tuning" if adapter["type"] == "none" else (
            f"LoRA r={adapter['r']}, α={adapter['alpha']:g}, on {', '.join(adapter['target_modules'])}")
        if cfg["model"].get("base_run"):
            kind += f", from run {cfg['model']['base_run']}'s weights"
        elif adapter["type"] == "none" and cfg["model"].get("init") == "scratch":
            kind = "full training from random weights"
        limit = ", ".join(f"{value:.3g} {key}" for key, value in budget.items() if value) or "–"
        stops = [results.metrics[run][seed].get("budget") for seed in results.seeds.get(run, [])]
        stopped = ", ".join(f"step {b['step']} of {b['of_steps']}" if b.get("stopped_by") else "not reached"
                            for b in stops if b) or "–"
        lines.append(f"| {run} | {kind} | {format_value(summary['runs'][run]['quantities']['trainable_parameters'])} | "
                     f"{limit} | {stopped} |")
    return "\n".join(lines)


def _peft_sections(results: ExperimentResults, summary: dict, figures: dict) -> list[str]:
    """LoRA against full fine-tuning: what each trains, perplexity against FLOPs and seconds spent, the
    curvature in both weight spaces, and pruning the adapter."""
    sections = [
        "## Parameter-efficient fine-tuning",
        "What each run trains, and where a training budget (train.budget) stopped it:",
        _adapter_table(results, summary),
        "Validation perplexity against the training FLOPs (analytic: optimization.cost) and seconds spent when it "
        "was measured. Under an equal budget, the lower curve at the budget's end is the better method:",
        _image(figures.get("perplexity_vs_budget"), "perplexity against budget"),
        markdown_table(summary, [("best_val_perplexity", "best val perplexity"), ("flops_to_best", "FLOPs to it"),
                                 ("seconds_to_best", "seconds to it"), ("train_flops", "FLOPs in all")]),
    ]
    if results.sharpness_merged:
        sections += [
            "Curvature of LoRA runs in two weight spaces, on the sharpness measurement set: the adapter's A and B "
            "(what the optimizer moves; d counts them) and the merged model W + (α/r)·BA, comparable with full "
            "fine-tuning (a full run has one space: its values stand in the adapter columns). The two Hessians "
            "differ: the adapter's is JᵀHJ plus a gradient term, with J the map from (A, B) to W.",
            markdown_table(summary, space_columns())]
    if results.prune:
        sections += [
            "Pruning the adapter (lottery tickets on LoRA): validation perplexity with the fraction of LoRA weights "
            "set to zero by smallest magnitude or at random (mean ± standard error over the random masks), the "
            "magnitude masks rewound to the adapter's initial values and retrained (prune.rewind), and λ_max of "
            "the magnitude-pruned adapter:",
            _image(figures.get("perplexity_vs_pruned"), "perplexity against fraction pruned"),
            prune_table(results)]
    return sections


def _search_sections(results: ExperimentResults, figures: dict) -> list[str]:
    return [
        "## Hyper-parameter search",
        "Each study (search.json) is one search method with one seed; its trials are runs of this experiment. Left: "
        "the best value found after each trial (mean ± standard error over the studies of a method); right: the "
        "seconds its trials trained. Pruned trials count as trials but find no value; surplus draws of parallel "
        "workers beyond search.n_trials are not counted.",
        _image(figures.get("search_convergence"), "search convergence"),
        search_table(results.search)]


def _correlation_sections(results: ExperimentResults, figures: dict) -> list[str]:
    correlation = results.correlation
    varied = ", ".join(correlation["axes"]) or "nothing"
    grid = ("The runs form a full grid of the varied settings, so each ψ is Jiang et al.'s (2020) granulated "
            "Kendall coefficient: the mean τ over groups of runs that differ in that setting alone; Ψ is their mean."
            if correlation["grid"] else "The runs do not form a full grid of the varied settings: no granulated "
            "coefficient.")
    return [
        "## Flatness and generalization",
        f"Over {len(correlation['points'])} trained runs × seeds (varied: {varied}): each measure's rank correlation "
        "with the generalization gap (test loss − training loss at the final weights) and with the test loss, "
        f"with {correlation['settings']['confidence']:.0%} bootstrap intervals over the runs "
        f"({correlation['settings']['resamples']} resamples). τ > 0: a larger measure goes with a larger gap. "
        + grid,
        correlation_table(correlation),
        *(["Left out of the correlation: " + "; ".join(f"{p['run']}/seed-{p['seed']} ({p['why']})"
                                                        for p in correlation["left_out"])]
          if correlation.get("left_out") else []),
        _image(figures.get("correlation"), "measures against the generalization gap")]


def _sharpness_sections(results: ExperimentResults, summary: dict) -> list[str]:
    sections = ["## Sharpness (the study's Table I)"]
    if results.sharpness:
        sections += [
            "On each run's measurement set (the same training texts for every run with the same settings). "
            "ε-sharpness: % increase of the loss along ± the top Hessian eigenvector; Taylor check: the absolute "
            "difference between it and its second-order prediction, in percentage points; worst case: the largest "
            "% increase found in the ball of radius ε; random directions: the largest % increase over random unit "
            "directions. Each run's settings:",
            sharpness_settings_table(results)]
    for eps in epsilons(summary):
        sections += [f"ε = {eps}:", markdown_table(summary, eps_columns(eps))]
    return sections + ["Curvature (λ by the eigenvalue method above, trace by Hutchinson):",
                       markdown_table(summary, curvature_columns())]


def _landscape_sections(results: ExperimentResults, summary: dict, figures: dict) -> list[str]:
    sections = ["## Loss along the line between runs", _image(results.figures.get("interpolation"), "interpolation")]
    if summary["pairs"]:
        sections.append(pairs_table(summary))
    if results.incomparable:
        sections.append("No line between runs that see different texts (their data settings differ), as no one loss "
                        f"is defined along it: {'; '.join(results.incomparable)}.")
    sections += ["From initialization to the final weights of each run (barrier of the training loss):",
                 markdown_table(summary, [("init_to_final_barrier", "init → final barrier")]),
                 "## 2D loss surfaces (one colour scale)",
                 _image(figures.get("surfaces_2d"), "2D loss surfaces")]
    if results.surfaces:
        sections += ["Each run's directions, grid and evaluation set, and its points where the loss diverged "
                     "(NaN or inf; grey with × in the figures):", landscape_settings_table(results)]
    return sections


def _geometry_sections(results: ExperimentResults, summary: dict, figures: dict) -> list[str]:
    """The ℓ∞-geometry section: loss per step by optimizer and rotation, the norms in both frames, the details."""
    sections = [
        "## ℓ∞ geometry (Xie, Mohamadi & Li, ICLR 2025)",
        "Training loss per optimizer step (solid: the loss's own coordinates; dashed: the rotated loss L(Rθ̃)):",
        _image(figures.get("loss_per_step"), "training loss per step"),
        "On each run's sharpness measurement set: the Hessian's (1,1)-norm per coordinate ‖H‖₁,₁/d (Cauchy sketches, "
        "median estimator), its spectral norm and the paper's ratio ‖H‖₁,₁/(d‖H‖₂). For ‖x‖∞ ≤ 1, xᵀHx is at most "
        "‖H‖₁,₁ and at most d‖H‖₂ (what ℓ2 smoothness gives), so a ratio well below 1 means a loss much smoother in "
        "ℓ∞ than ℓ2 predicts, which coordinate-wise methods (Adam, SignSGD) can exploit and SGD cannot. Both frames: "
        "the loss's own coordinates, and after a random rotation R, which leaves ‖H‖₂ and ‖H‖_F unchanged (their "
        "estimates differ by the estimators' noise: ‖H‖_F's interval is in the per-seed table below). The "
        "intervals of ‖H‖₁,₁ are wide at the paper's k = 50 when the rows are alike: every row shares the same k "
        "vectors, so the errors of alike rows do not average out.",
        markdown_table(summary, geometry_columns()),
        _image(figures.get("geometry_norms"), "Hessian norms"),
    ]
    if results.geometry:
        sections += ["Each seed and frame, with the intervals over the Cauchy sketches (random halves of them) and Hutch++'s:",
                     geometry_detail_table(results), "Settings:", geometry_settings_table(results)]
    return sections


def _dynamics_sections(results: ExperimentResults, summary: dict, figures: dict) -> list[str]:
    """Along training: tracked sharpness with its stability thresholds, the spectral density, the PCA path."""
    sections = ["## Along training"]
    if results.track:
        sections += [
            "Sharpness measured during training on the run's measurement set (train.track), with the learning curve "
            "on the same steps. Gradient descent with step η is stable on a quadratic only while λ_max(H) < 2/η, "
            "(2+2β)/η with momentum β (dashed; Cohen et al. 2021 find full-batch GD sharpening up to it and hovering there); for the Adam "
            "family the line is (2+2β₁)/((1−β₁)η) for the preconditioned Hessian P⁻¹ᐟ²HP⁻¹ᐟ² (Cohen et al. 2022). "
            "Mini-batch training usually stays below these lines.",
            _image(figures.get("sharpness_along_training"), "sharpness along training"),
            markdown_table(summary, track_columns())]
    if results.density:
        sections += [
            "Spectral density of the Hessian at the final weights (stochastic Lanczos quadrature, Gaussian-smoothed, "
            "log scale; sharpness.density): a bulk near zero and a few outliers is the usual shape. The mass below −τ "
            "counts the quadrature weight on nodes below −τ, τ = σ the smoothing width (in the legend): curvature "
            "clearly negative at the figure's resolution (at 0 itself one node of a cluster of eigenvalues near 0 "
            "can hold half the weight, on either side).",
            _image(figures.get("spectral_density"), "spectral density"),
            markdown_table(summary, density_columns())]
    pca = pca_surfaces(results)
    if pca:
        sections += ["The 2D loss surface on the top two PCA directions of each run's training path (Li et al. 2018 "
                     "§7), the path projected on it (from the circle to the star, the final weights); the axes give "
                     "the share of the path's variance each direction explains."]
        sections += [f"![{stem}](figures/{path.name})" for stem, path in pca.items()]
    return sections


def report_stage(experiment: Experiment, output: Path, force: bool) -> None:
    """Regenerated on every call: it only reads files, in seconds."""
    folder = experiment_dir(output, experiment)  # pipeline.run_experiment made sure its manifest exists
    try:
        results = load_results(output, experiment.name)
    except CorruptFileError as err:
        raise err.needing(f"regenerate it with: {stage_command(experiment, output, 'train')}") from None
    if results.corrupt:
        stages = redo_stages([stage for _, stage in results.corrupt], results.stages)  # every damaged file's
        raise results.corrupt[0][0].needing(f"regenerate it with: {stage_command(experiment, output, stages)}")
    for run in experiment.runs:
        listed = results.configs.get(run.name)
        if listed is not None and {**listed, "device": None} != {**run.to_dict(), "device": None}:
            print(f"{experiment.name}: warning: run {run.name}'s settings differ from those in experiment.json, with "
                  "which its results were made; the report shows those (run the stages again for the new ones)")
    for item in results.ignored:
        print(f"{experiment.name}: warning: ignoring {item}")
    summary = summarize(results)
    figures = report_figures(results, summary)
    write_json(folder / "summary.json", summary)
    redo = stage_command(experiment, output, redo_stages(results.redo, results.stages)) if results.redo else ""
    write_text(folder / "report.md", render_report(results, summary, figures, load_prices(), redo))
    missing = f"; missing: {len(results.missing)} item(s), listed at the end, made by: {redo}" if results.missing else ""
    print(f"{experiment.name}: wrote {folder / 'report.md'} and summary.json{missing}")
    log_figures(experiment, folder)


def log_figures(experiment: Experiment, folder: Path) -> None:
    """Every figure of the experiment, to the trackers its runs log to (logging.backend): an experiment-level
    TensorBoard log (<experiment>/tensorboard/, written anew each time) or wandb run."""
    for backend in dict.fromkeys(run.logging.backend for run in experiment.runs if run.logging.backend != "none"):
        project = next(run.logging.project for run in experiment.runs if run.logging.backend == backend)
        if backend == "tensorboard":
            shutil.rmtree(folder / "tensorboard", ignore_errors=True)  # the figures of this report only
        with open_log(backend, folder, f"{experiment.name}: figures", project, {"experiment": experiment.name}) as log:
            for png in sorted((folder / "figures").glob("*.png")):
                log.image(f"figures/{png.stem}", png)
