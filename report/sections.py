"""The one list of the report's sections: report.md (the report stage) and results.ipynb show exactly these.

A section has a title (its `##` heading; None for the experiment's header and the line of per-run figure links),
whether it applies to an experiment's results, and its blocks: Markdown text (paragraphs and tables of
report.tables) and figures. A figure is either drawn here from the results (the experiment-wide ones: the report
stage saves it under figures/, the notebook shows it) or was drawn by a stage from the current data (its PNG), or
neither, and then the report says there is no figure of the current results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optimization.cost import PRICES_FILE, Prices
from report.cost_tables import cost_columns, dollar_table, estimate_table
from report.experiment_results import ExperimentResults
from report.findings import SPREAD, confounds, findings
from report.summary import (budget_curves, density_runs, geometry_norms, pca_surfaces, prune_runs, search_curves,
                            search_seconds, step_loss_curves, track_curves)
from report.tables import (NOTATION, adapter_table, budget_columns, correlation_table, curvature_columns,
                           density_columns, eps_columns, epsilons, generalization_columns,
                           geometry_detail_table, geometry_table, geometry_settings_table, landscape_settings_table,
                           pairs_table, prune_table, quantities_table, runs_table, search_table,
                           sharpness_settings_table, space_columns, track_columns, weight_space)
from visualization.plots import (budget_curves_figure, correlation_figure, geometry_norms_figure, learning_curves_figure,
                                 pruning_figure, search_convergence_figure, spectral_density_figure, step_losses_figure,
                                 tracked_sharpness_figure)
from visualization.surface_plots import Surface, surfaces_figure


@dataclass(frozen=True)
class Figure:
    """figures/<stem>.png: drawn from the results by `draw`, or drawn by a stage (`path`), or not there (neither)."""
    stem: str
    alt: str
    draw: Callable | None = None  # () -> matplotlib Figure
    path: Path | None = None

    def markdown(self) -> str:
        """report.md's image of the figure, or why there is none."""
        if self.draw is None and self.path is None:
            return f"({self.alt}: no figure of the current results; see Missing)"
        return f"![{self.alt}](figures/{self.stem}.png)"


LONG_TABLE_ROWS = 12  # a table of more rows (one per run, trial or seed) goes to report_appendix.md
APPENDIX = "report_appendix.md"


@dataclass(frozen=True)
class LongTable:
    """A table of more than LONG_TABLE_ROWS rows: report.md links to it, report_appendix.md holds it under the title
    of its section and its caption (the text before it in report.md)."""
    section: str
    caption: str
    table: str

    def rows(self) -> int:
        return self.table.count("\n") - 1  # after the header and its rule

    def markdown(self) -> str:
        """report.md's pointer to the table."""
        return f"{self.rows()} rows: see [{APPENDIX}]({APPENDIX}), {self.section}."


@dataclass(frozen=True)
class Shown:
    """What a section is made from: the results, their summary (report.summary.summarize), the price table (no
    dollars without one) and the command that makes what is missing ("" where none is known)."""
    results: ExperimentResults
    summary: dict
    prices: Prices | None = None
    redo: str = ""


@dataclass(frozen=True)
class Section:
    title: str | None
    applies: Callable[[ExperimentResults], bool]
    blocks: Callable[[Shown], list[str | Figure]]


def drawn(stem: str, alt: str, data, draw: Callable) -> Figure:
    """The figure `draw(data)`, drawn from the results only where they hold its data."""
    return Figure(stem, alt, draw=(lambda: draw(data)) if data else None)


# ----------------------------------------------------------------------------------------------
# Which sections an experiment's results call for.

def geometry_section_applies(results: ExperimentResults) -> bool:
    """Whether the experiment asks for, or has, ℓ∞-geometry results or rotated training."""
    return bool(results.geometry) or "geometry" in results.stages or any(
        cfg.get("train", {}).get("rotation", "none") != "none" for cfg in results.configs.values())


def dynamics_section_applies(results: ExperimentResults) -> bool:
    return bool(results.track or results.density or pca_surfaces(results))


def landscape_section_applies(results: ExperimentResults) -> bool:
    return "landscape" in results.stages or bool(results.interpolation or results.init_to_final or results.surfaces)


def peft_section_applies(results: ExperimentResults) -> bool:
    """Whether the experiment has LoRA runs or runs under a training budget."""
    return any(cfg.get("model", {}).get("adapter", {}).get("type", "none") != "none"
               or any(cfg.get("train", {}).get("budget", {}).values()) for cfg in results.configs.values())


def dollars_asked(results: ExperimentResults) -> bool:
    """Whether the Cost section prices the runs in dollars: a run trained on a GPU, or asks for it (report.prices)."""
    return any(cfg.get("report", {}).get("prices", False) for cfg in results.configs.values()) or any(
        metrics.get("device", "cpu") != "cpu" for by_seed in results.metrics.values() for metrics in by_seed.values())


def single_figures(results: ExperimentResults) -> list[str]:
    """Links to each run's own figures (drawn by the landscape stage)."""
    return [f"[{stem}](figures/{path.name})" for stem, path in results.figures.items() if stem != "interpolation"]


# ----------------------------------------------------------------------------------------------
# The sections' blocks, in the report's order.

def _header(shown: Shown) -> list[str | Figure]:
    return [f"# Experiment `{shown.results.name}`",
            "Generated by `python run.py --stages report` from the files in this folder, for the runs and seeds "
            "that experiment.json lists: first what differs between the runs, then the tables and figures."]


def _findings(shown: Shown) -> list[str | Figure]:
    lines = findings(shown.results, shown.summary)
    return [f"Mean ± standard error over seeds, with n, of the lowest and the highest run: a difference is claimed "
            f"only where their intervals mean ± {SPREAD} s.e. (about 95%) do not overlap; otherwise the values are "
            "within the seed spread. The tables below hold every value.",
            "\n".join(lines) if lines else "No headline quantity has values for two runs yet (see Missing)."]


def _runs(shown: Shown) -> list[str | Figure]:
    return [NOTATION, runs_table(shown.results)]


def _learning_curves(shown: Shown) -> list[str | Figure]:
    results = shown.results
    curves = {run: [results.metrics[run][s] for s in results.seeds[run]] for run in results.runs if results.seeds[run]}
    methods = {t["run"]: study["sampler"] for study in (results.search or {}).get("studies", {}).values()
               for t in study["trials"]}  # a search's trials: one group per search method
    return [drawn("learning_curves", "learning curves", curves,
                  lambda data: learning_curves_figure(data, f"{results.name}: learning curves", methods))]


def _generalization(shown: Shown) -> list[str | Figure]:
    return [quantities_table(shown.summary, generalization_columns())]


def _sharpness(shown: Shown) -> list[str | Figure]:
    results, summary = shown.results, shown.summary
    confound = confounds(summary)
    blocks = [confound] if confound else []  # beside the tables it qualifies
    if results.sharpness:
        blocks += [
            "On each run's measurement set (the same training texts for every run with the same settings). "
            "ε-sharpness: % increase of the loss along ± the top Hessian eigenvector; Taylor check: the absolute "
            "difference between it and its second-order prediction, in percentage points; worst case: the largest "
            "% increase found in the ball of radius ε; random directions: the largest % increase over random unit "
            "directions. Each run's settings:",
            sharpness_settings_table(results)]
    for eps in epsilons(summary):
        blocks += [f"ε = {eps}:", quantities_table(summary, eps_columns(eps))]
    return blocks + ["Curvature (λ by the eigenvalue method above, trace by Hutchinson):",
                     quantities_table(summary, curvature_columns())]


def _geometry(shown: Shown) -> list[str | Figure]:
    """Loss per step by optimizer and rotation, the norms in both frames, the details."""
    results, summary = shown.results, shown.summary
    blocks = [
        "Training loss per optimizer step (solid: the loss's own coordinates; dashed: the rotated loss L(Rθ̃)):",
        drawn("loss_per_step", "training loss per step", step_loss_curves(results),
              lambda data: step_losses_figure(data, f"{results.name}: training loss per step")),
        "On each run's sharpness measurement set: the Hessian's (1,1)-norm per coordinate ‖H‖₁,₁/d (Cauchy sketches, "
        "median estimator), its spectral norm and the paper's ratio ‖H‖₁,₁/(d‖H‖₂). For ‖x‖∞ ≤ 1, xᵀHx is at most "
        "‖H‖₁,₁ and at most d‖H‖₂ (what ℓ2 smoothness gives), so a ratio well below 1 means a loss much smoother in "
        "ℓ∞ than ℓ2 predicts, which coordinate-wise methods (Adam, SignSGD) can exploit and SGD cannot. Both frames: "
        "the loss's own coordinates, and after a random rotation R, which leaves ‖H‖₂ and ‖H‖_F unchanged (their "
        "estimates differ by the estimators' noise: ‖H‖_F's interval is in the per-seed table below). The "
        "intervals of ‖H‖₁,₁ are wide at the paper's k = 50 when the rows are alike: every row shares the same k "
        "vectors, so the errors of alike rows do not average out.",
        geometry_table(results, summary),
        drawn("geometry_norms", "Hessian norms", geometry_norms(summary),
              lambda data: geometry_norms_figure(data, f"{results.name}: Hessian norms", results.geometry)),
    ]
    if results.geometry:
        blocks += ["Each seed and frame, with the intervals over the Cauchy sketches (random halves of them) and Hutch++'s:",
                   geometry_detail_table(results), "Settings:", geometry_settings_table(results)]
    return blocks


def _dynamics(shown: Shown) -> list[str | Figure]:
    """Tracked sharpness with its stability thresholds, the spectral density, the PCA path."""
    results, summary, blocks = shown.results, shown.summary, []
    if results.track:
        blocks += [
            "Sharpness measured during training on the run's measurement set (train.track), with the learning curve "
            "on the same steps. Gradient descent with step η is stable on a quadratic only while λ_max(H) < 2/η, "
            "(2+2β)/η with momentum β (dashed; Cohen et al. 2021 find full-batch GD sharpening up to it and hovering there); for the Adam "
            "family the line is (2+2β₁)/((1−β₁)η) for the preconditioned Hessian P⁻¹ᐟ²HP⁻¹ᐟ² (Cohen et al. 2022). "
            "Mini-batch training usually stays below these lines.",
            drawn("sharpness_along_training", "sharpness along training", track_curves(results),
                  lambda data: tracked_sharpness_figure(data, f"{results.name}: sharpness along training "
                                                              "(measurement set)")),
            quantities_table(summary, track_columns())]
    if results.density:
        blocks += [
            "Spectral density of the Hessian at the final weights (stochastic Lanczos quadrature, Gaussian-smoothed, "
            "log scale; sharpness.density): a bulk near zero and a few outliers is the usual shape. The mass below −τ "
            "counts the quadrature weight on nodes below −τ, τ = σ the smoothing width (in the legend): curvature "
            "clearly negative at the figure's resolution (at 0 itself one node of a cluster of eigenvalues near 0 "
            "can hold half the weight, on either side).",
            drawn("spectral_density", "spectral density", density_runs(results),
                  lambda data: spectral_density_figure(data, f"{results.name}: Hessian spectral density at the final "
                                                             "weights")),
            quantities_table(summary, density_columns())]
    pca = pca_surfaces(results)
    if pca:
        blocks += ["The 2D loss surface on the top two PCA directions of each run's training path (Li et al. 2018 "
                   "§7), the path projected on it (from the circle to the star, the final weights); the axes give "
                   "the share of the path's variance each direction explains."]
        blocks += [Figure(stem, stem, path=path) for stem, path in pca.items()]
    return blocks


def _interpolation(shown: Shown) -> list[str | Figure]:
    results, summary = shown.results, shown.summary
    blocks = [Figure("interpolation", "interpolation", path=results.figures.get("interpolation"))]
    if summary["pairs"]:
        blocks.append(pairs_table(summary))
    if results.incomparable:
        blocks.append("No line between runs that see different texts (their data settings differ) or are different "
                      "architectures, as no one loss "
                      f"is defined along it: {'; '.join(results.incomparable)}.")
    as_is = [run for run in results.runs if results.configs[run]["train"].get("epochs") == 0]
    if as_is:
        blocks.append(f"Measured as is (train.epochs: 0), so no training path and no init → final line: "
                      f"{', '.join(as_is)}.")
    if len(as_is) == len(results.runs):
        return blocks
    return blocks + ["From initialization to the final weights of each run (barrier of the training loss):",
                     quantities_table(summary, [("init_to_final_barrier", "init → final barrier")])]


def _surfaces(shown: Shown) -> list[str | Figure]:
    results = shown.results
    panels = [Surface(f"{run}, seed {seed}", data["alphas"], data["betas"], data["train_loss"],
                      data.get("path_coordinates"), data.get("explained_variance"), weight_space(results, run))
              for run in results.runs for seed, data in sorted(results.surfaces.get(run, {}).items())]
    blocks = [drawn("surfaces_2d", "2D loss surfaces", panels, surfaces_figure)]
    if len({panel.space for panel in panels}) > 1:
        blocks.append("Each weight space has its own colour scale (the colour bars name them): a loss surface over "
                      "a LoRA adapter's factors and one over the full model's weights span different directions "
                      "and distances, so their colours do not compare.")
    if results.surfaces:
        blocks += ["Each run's directions, grid and evaluation set, and its points where the loss diverged "
                   "(NaN or inf; grey with × in the figures):", landscape_settings_table(results)]
    return blocks


def _peft(shown: Shown) -> list[str | Figure]:
    """LoRA against full fine-tuning: what each trains, perplexity against FLOPs and seconds spent, the curvature in
    both weight spaces, and pruning the adapter."""
    results, summary = shown.results, shown.summary
    blocks = [
        "What each run trains, and where a training budget (train.budget) stopped it:",
        adapter_table(results, summary),
        "Validation perplexity against the training FLOPs (analytic: optimization.cost) and seconds spent when it "
        "was measured. Under an equal budget, the lower curve at the budget's end is the better method:",
        drawn("perplexity_vs_budget", "perplexity against budget", budget_curves(results),
              lambda data: budget_curves_figure(data, f"{results.name}: validation perplexity against what training "
                                                      "spent", results.configs)),
        quantities_table(summary, budget_columns()),
    ]
    if results.sharpness_merged:
        blocks += [
            "Curvature of LoRA runs in two weight spaces, on the sharpness measurement set: the adapter's A and B "
            "(what the optimizer moves; d counts them) and the merged model W + (α/r)·BA, comparable with full "
            "fine-tuning (a full run has one space: its values stand in the adapter columns). The two Hessians "
            "differ: the adapter's is JᵀHJ plus a gradient term, with J the map from (A, B) to W.",
            quantities_table(summary, space_columns())]
    if results.prune:
        blocks += [
            "Pruning the adapter (lottery tickets on LoRA): validation perplexity with the fraction of LoRA weights "
            "set to zero by smallest magnitude or at random (mean ± standard error over the random masks), the "
            "magnitude masks rewound to the adapter's initial values and retrained (prune.rewind), and λ_max of "
            "the magnitude-pruned adapter:",
            drawn("perplexity_vs_pruned", "perplexity against fraction pruned", prune_runs(results),
                  lambda data: pruning_figure(data, f"{results.name}: pruning the LoRA adapter")),
            prune_table(results)]
    return blocks


def _search(shown: Shown) -> list[str | Figure]:
    results = shown.results
    objectives = {study["objective"] for study in results.search["studies"].values()}
    objective = objectives.pop() if len(objectives) == 1 else "value"
    return [
        "Each study (search.json) is one search method with one seed; its trials are runs of this experiment. Left: "
        "the best value found after each trial (mean ± standard error over the studies of a method); right: the "
        "seconds its trials trained. Pruned trials count as trials but find no value; surplus draws of parallel "
        "workers beyond search.n_trials are not counted.",
        Figure("search_convergence", "search convergence", draw=lambda: search_convergence_figure(
            search_curves(results.search), search_seconds(results.search), f"{results.name}: search methods",
            objective)),
        search_table(results.search)]


def _correlation(shown: Shown) -> list[str | Figure]:
    results = shown.results
    correlation = results.correlation
    varied = ", ".join(correlation["axes"]) or "nothing"
    grid = ("The runs form a full grid of the varied settings, so each ψ is Jiang et al.'s (2020) granulated "
            "Kendall coefficient: the mean τ over groups of runs that differ in that setting alone; Ψ is their mean."
            if correlation["grid"] else "The runs do not form a full grid of the varied settings: no granulated "
            "coefficient.")
    return [
        f"Over {len(correlation['points'])} trained runs × seeds (varied: {varied}): each measure's rank correlation "
        "with the generalization gap (test loss − training loss at the final weights) and with the test loss, "
        f"with {correlation['settings']['confidence']:.0%} bootstrap intervals over the runs "
        f"({correlation['settings']['resamples']} resamples). τ > 0: a larger measure goes with a larger gap. "
        + grid,
        correlation_table(correlation),
        *(["Left out of the correlation: " + "; ".join(f"{p['run']}/seed-{p['seed']} ({p['why']})"
                                                        for p in correlation["left_out"])]
          if correlation.get("left_out") else []),
        Figure("correlation", "measures against the generalization gap", draw=lambda: correlation_figure(
            correlation, f"{results.name}: measures against the generalization gap"))]


def _single_figures(shown: Shown) -> list[str | Figure]:
    return ["Each run: " + ", ".join(single_figures(shown.results))]


def _cost(shown: Shown) -> list[str | Figure]:
    results, summary, prices = shown.results, shown.summary, shown.prices
    blocks = ["Training time covers the optimizer steps (not validation, tracking or checkpoints); the "
              "train stage's wall time all of it, in the invocation that finished the run; tokens/s counts "
              "non-padding input tokens; FLOPs are the analytic count of optimization.cost (padded positions "
              "included) and MFU their rate over the peak of the devices that trained (one device's peak × a "
              "torchrun job's ranks; a datasheet's for GPUs, a matmul probe's for the CPU); peak memory is GPU "
              "memory allocated on CUDA, the process's largest resident set on CPU.",
              quantities_table(summary, cost_columns(summary)),
              "Before a run, `python -m optimization.estimate --config FILE` prices it from its config alone (every "
              "step at batch_size × data.max_length tokens, so at most what it will spend); against what the runs "
              "measured:",
              estimate_table(results)]
    if prices is not None and not dollars_asked(results):
        blocks.append("No dollars: every run trained on the CPU. Set `report.prices: true` in the config and run the "
                      "train and report stages (finished runs are not trained again) to price each run on the GPUs "
                      f"of {PRICES_FILE.name}.")
    elif prices is not None:
        blocks += [f"In dollars, from {PRICES_FILE.name} (each price's date and source are in the file; prices "
                   "change, check them): the train stage's wall time and the training time until the best "
                   "validation perplexity, at the price of the device the run used times the devices it used (a "
                   "torchrun job's ranks, “× N”; – where it is not priced), and the run's training FLOPs on each "
                   "priced GPU at the run's precision (seconds on one GPU; N GPUs take 1/N of them for the same "
                   "dollars), at its peak × "
                   f"assumed_mfu = {prices.assumed_mfu:g}. A run's own config sets its scale: the paper-scale "
                   "configs (e.g. config/exp6-peft.yaml) give paper-scale dollars.",
                   dollar_table(results, summary, prices)]
    return blocks


def _missing(shown: Shown) -> list[str | Figure]:
    return ["\n".join(f"- {item}" for item in shown.results.missing),
            *([f"To make them: `{shown.redo}`"] if shown.redo else [])]


def _ignored(shown: Shown) -> list[str | Figure]:
    return ["Folders on disk that experiment.json does not list with their current settings:",
            "\n".join(f"- {item}" for item in shown.results.ignored)]


def _always(results: ExperimentResults) -> bool:
    return True


SECTIONS = (
    Section(None, _always, _header),
    Section("Findings", _always, _findings),
    Section("Runs", _always, _runs),
    Section("Learning curves", _always, _learning_curves),
    Section("Generalization (the study's Table II)", _always, _generalization),
    Section("Sharpness (the study's Table I)", lambda r: "sharpness" in r.stages or bool(r.sharpness), _sharpness),
    Section("ℓ∞ geometry (Xie, Mohamadi & Li, ICLR 2025)", geometry_section_applies, _geometry),
    Section("Along training", dynamics_section_applies, _dynamics),
    Section("Loss along the line between runs", landscape_section_applies, _interpolation),
    Section("2D loss surfaces", landscape_section_applies, _surfaces),
    Section("Parameter-efficient fine-tuning", peft_section_applies, _peft),
    Section("Hyper-parameter search", lambda r: bool(r.search), _search),
    Section("Flatness and generalization", lambda r: bool(r.correlation), _correlation),
    Section(None, lambda r: bool(single_figures(r)), _single_figures),
    Section("Cost", _always, _cost),
    Section("Missing", lambda r: bool(r.missing), _missing),
    Section("Ignored", lambda r: bool(r.ignored), _ignored),
)


def report_blocks(shown: Shown) -> list[str | Figure | LongTable]:
    """Every block of the report, in order: each section that applies, under its heading, its tables of more than
    LONG_TABLE_ROWS rows as LongTable."""
    blocks = []
    for section in SECTIONS:
        if section.applies(shown.results):
            blocks += ([f"## {section.title}"] if section.title else []) + _long_tables_apart(section, section.blocks(shown))
    return blocks


def _long_tables_apart(section: Section, blocks: list[str | Figure]) -> list[str | Figure | LongTable]:
    apart = []
    for block in blocks:
        if isinstance(block, str) and block.startswith("|") and block.count("\n") - 1 > LONG_TABLE_ROWS:
            before = apart[-1] if apart and isinstance(apart[-1], str) and not apart[-1].startswith("|") else ""
            block = LongTable(section.title or "", before, block)
        apart.append(block)
    return apart


def appendix_markdown(name: str, blocks: list) -> str | None:
    """report_appendix.md: the long tables of `blocks`, under their sections' titles; None where there are none."""
    tables = [block for block in blocks if isinstance(block, LongTable)]
    if not tables:
        return None
    texts = [f"# Experiment `{name}`: appendix to report.md",
             f"The tables of report.md with more than {LONG_TABLE_ROWS} rows (one per run, trial or seed), under the "
             "section of report.md that refers to them, each after the text it follows there."]
    for table in tables:
        if f"## {table.section}" not in texts:
            texts.append(f"## {table.section}")
        texts += [table.caption, table.table] if table.caption else [table.table]
    return "\n\n".join(texts) + "\n"
