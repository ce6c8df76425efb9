"""docs/results.md: what the lab finds at laptop scale, one section per config/laptop/*.yaml, each set against the
claim it tests, with a verdict computed from the saved numbers (never typed by hand).

    python -m report.results_doc [--collect results/laptop]

--collect first copies each finished experiment's summary.json to docs/results/<experiment>/ and its headline figure
to docs/figures/ (make results does this after running the configs); then, and without it, docs/results.md is
written from docs/results/ alone, so a test can regenerate it and compare. A config without saved results is listed
as not run yet, with the command that runs it.

Each claim's verdicts are computed by the forms of report.verdicts (seen, not seen or not resolvable at this scale, by
mean ± 2 standard errors over seeds); the files some of them read besides summary.json (each seed's prune.json or
track.json, the correlate stage's correlation.json) are copied by --collect to docs/results/<experiment>/ too.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from config.loading import load_experiment
from report.tables import md_table
from report.verdicts import (AnyMeasure, CorrelationMeasure, EdgeMeasure, Measure, PrunedMeasure, SameMeasure,
                             measure_sentence, number)
from utils.errors import UserError
from utils.io import make_dir, read_json, write_bytes, write_text

LAPTOP_CONFIGS = Path("config/laptop")
SAVED = Path("docs/results")
FIGURES = Path("docs/figures")
DOC = Path("docs/results.md")
FIGURE_WIDTH = 1200  # pixels: a page's width, a fraction of the report's print resolution
STUDY = "the study's report (Boscariol, De Novellis, Diallo, EPFL CS-439)"


@dataclass(frozen=True)
class Claim:
    text: str                      # the paper's claim and its numbers, with the source
    measures: tuple[AnyMeasure, ...]  # each judged on its own (report.verdicts)
    figure: str                    # the headline figure: results/<experiment>/figures/<figure>.png
    design: str = ""               # what else differs between the runs by design, to read the verdict with
    shown: tuple[str, ...] = ()    # summary.json quantities shown besides SHOWN and the measures' (e.g. what was spent)


CLAIMS = {
    "exp1": Claim(f"{STUDY}, Table I(a): SGD with batch 24 and weight decay 5e-4 reaches a flatter minimum than batch 4 "
                  "without it (ε-sharpness 15.74% against 21.88% at ε = 1e-3), though its λ_max is higher "
                  "(8943 against 5043).",
                  (Measure("eps_sharpness_eigvec@0.001", "bs24-wd", "bs4"), Measure("lambda_max", "bs24-wd", "bs4")),
                  "surfaces_2d", "at equal epochs and learning rate, batch 24 takes 6 times fewer steps than batch 4, "
                  "so it is also less trained (compare test_perplexity)."),
    "exp2": Claim(f"{STUDY}, Table I(b) and II: AdamW at batch 1 is unstable and lands in a flat, non-informative "
                  "minimum (λ_max 17.3 against 2353.7) that generalizes worse (perplexity 889.5 against 78.3) than "
                  "batch 32.",
                  (Measure("lambda_max", "bs1", "bs32"), Measure("test_perplexity", "bs32", "bs1")), "surfaces_2d",
                  "at equal epochs and learning rate, batch 1 takes 32 times more steps than batch 32."),
    "exp3": Claim(f"{STUDY}, Table I(c): the short-to-long curriculum reaches a flatter minimum than random order "
                  "(ε-sharpness 15.38% against 19.65%, λ_max 4029 against 4793) at a similar perplexity.",
                  (Measure("eps_sharpness_eigvec@0.001", "sorted", "random"), Measure("lambda_max", "sorted", "random")),
                  "surfaces_2d"),
    "exp6": Claim("Hu et al. 2021 (LoRA, ICLR 2022), Table 3: on GPT-2 medium, LoRA (r = 4, 0.35M trainable weights) "
                  "matches or beats full fine-tuning (354.92M) on E2E NLG (BLEU 70.4 against 68.2); and the LoRA-pruning "
                  "finding (docs/experiments/exp6-peft.md, no numbers given) that zeroing LoRA weights by smallest "
                  "magnitude degrades perplexity far more gracefully than zeroing as many at random.",
                  (Measure("test_perplexity", "lora-r8", "full"), Measure("test_perplexity", "lora-r8", "full", paired=True),
                   PrunedMeasure("lora-r8", 0.9), PrunedMeasure("lora-r8", 0.9, paired=True)),
                  "perplexity_vs_pruned",
                  "no pretrained model is available offline, so the run base is a GPT-2 trained from scratch on 800 texts "
                  "(one epoch: a weak model), and full and lora-r8 continue it on the first 600 of them, each stopped at "
                  "5e11 training FLOPs: LoRA adapts the model to more of its own data, not to a new task, in more steps "
                  "(optimizer_steps). Learning rates are untuned (LoRA's 10 times full's). Each seed's full and lora-r8 "
                  "start from that seed's base, and its masks prune one adapter, so both comparisons are also judged seed "
                  "by seed: the spread of the three bases (base's test_perplexity) is not the runs' own. The seed-by-seed "
                  "form was added after the runs were seen; the form over the runs' intervals was set before.",
                  ("train_flops", "optimizer_steps", "trainable_parameters", "best_val_perplexity")),
    "exp7": Claim(f"{STUDY}, Table II: its AdamW runs (Experiment 2) use learning rate 1e-4 and weight decay 5e-4, and "
                  "the better of its two batch sizes, 32, reaches test perplexity 78.34 ± 0.19; its README says the "
                  "learning rate and weight decay were tuned by hand ('different magnitudes tested'), and no search is "
                  "reported. The question: does the best of a small search (6 TPE trials over learning rate, weight "
                  "decay and batch size) beat those settings beyond seed spread?",
                  (Measure("test_perplexity", "best", "study"),), "learning_curves",
                  "the search (config/laptop/search/exp7-search.yaml) chose best by its validation loss at seed 42 "
                  "alone, so best's seed 42 is that trial retrained and seeds 43 and 44 are fresh draws; the test texts "
                  "played no part in the choice. The study's settings were chosen for fine-tuning pretrained DistilGPT2 "
                  "for 60 epochs; here a model trained from scratch for one epoch of 400 texts, where batch 32 takes 4 "
                  "times fewer steps than best's batch 8 (compare optimizer_steps): a win says the search fits this "
                  "scale, not that the study tuned badly for its own.",
                  ("optimizer_steps", "best_val_perplexity")),
    "exp4": Claim("Xie, Mohamadi & Li (ICLR 2025), GPT-2 (124M) trained from scratch on OpenWebText: Adam reaches a "
                  "clearly lower training loss than Adam on the randomly rotated loss θ̃ ↦ L(Rθ̃), whose ℓ∞ geometry "
                  "the rotation destroys (its ‖H‖₁,₁/(d‖H‖₂) rises toward 1), while SGD provably does not change (its "
                  "updates rotate with R); Adam beats SGD. (Its numbers are not quoted: they could not be checked "
                  "offline.)",
                  (Measure("final_train_loss", "adam", "adam-rotated"), Measure("final_train_loss", "adam", "sgd"),
                   Measure("final_train_loss", "adam-width32", "adam-width32-rotated"),
                   Measure("final_train_loss", "adam-width128", "adam-width128-rotated"),
                   SameMeasure("final_train_loss", "sgd", "sgd-rotated", 0.01)),
                  "loss_per_step",
                  "a 2-layer GPT-2 (64 wide; 32 and 128 wide for the trend with width) trained from scratch for 75 "
                  "steps of 8 texts, not 124M weights for thousands of steps: the scale is a point of the paper's "
                  "curves early in training, where the tied 50,257-word embedding holds 97% (width 64) of the weights. "
                  "In one epoch each step's batch is new, so the figure's per-step loss is the analog of the paper's "
                  "training curve, while final_train_loss measures the texts already trained on, after training "
                  "(test_loss shows the new texts). Learning rates are untuned, the same for a run and its rotated twin"
                  " (at width 128, 3e-3 is too large for the rotated loss: its loss first rises, then recovers). No "
                  "geometry stage: at an affordable number of Cauchy sketches its ‖H‖₁,₁ intervals span a factor of 2-4"
                  " (exp4-geometry-small), so the budget went to seeds.",
                  ("test_loss", "n_parameters")),
    "exp5": Claim("Cohen et al. 2021 (ICLR; a Transformer on WikiText-2 among their networks): under full-batch gradient "
                  "descent λ_max rises (progressive sharpening) until it reaches 2/η, then hovers just above it while "
                  "the loss keeps falling, non-monotonically (the edge of stability); Cohen et al. 2022: full-batch "
                  "Adam's preconditioned λ_max likewise rises to its own threshold 38/η (β₁ = 0.9) and hovers there.",
                  (EdgeMeasure("gd-lr0.1", "first", 1.0), EdgeMeasure("gd-lr0.1", 1.0, "highest"),
                   EdgeMeasure("gd-lr0.2", "first", 1.0), EdgeMeasure("gd-lr0.2", 1.0, "highest"),
                   EdgeMeasure("adam", "first", 1.0, preconditioned=True),
                   EdgeMeasure("adam", 1.0, "highest", preconditioned=True)),
                  "sharpness_along_training",
                  "a 2-layer, 64-wide GPT-2 from scratch (a 1,024-token BPE vocabulary) takes 150 full-batch steps on "
                  "32 texts of 32 tokens, far from convergence; λ_max is tracked every 5 steps, so its highest point "
                  "is the highest of 31 and the oscillation between points is not seen. 'first below 1' asks whether "
                  "λ_max started below its threshold, '1 below highest' whether it reached it: both, that it rose to "
                  "it; whether it then hovers there is read from the figure and track_edge_ratio (the last point's "
                  "ratio), not judged.",
                  ("track_edge_ratio", "track_preconditioned_edge_ratio", "final_train_loss")),
    "exp8": Claim("Jiang et al. 2020 (ICLR; over 10,000 CNNs on CIFAR-10 and SVHN, more than 40 measures): sharpness-based "
                  "measures are among those that best predict the generalization gap (Kendall τ with it above 0), "
                  "though less well than earlier, smaller studies suggested; Andriushchenko et al. 2023 (ICML) found "
                  "sharpness, adaptive worst-case included, weakly or even negatively correlated with generalization in "
                  "transformers. (Their per-measure τ values are not quoted here: they could not be checked offline.)",
                  (CorrelationMeasure("lambda_max"), CorrelationMeasure("trace"),
                   CorrelationMeasure("worst_case@0.001")),
                  "correlation",
                  "40 points (2 optimizers x 2 learning rates x 2 batch sizes x 5 seeds) of a 2-layer, 64-wide GPT-2 "
                  "from scratch, 30 epochs over 64 texts of 32 tokens: the gaps mostly say how far each run overfit, "
                  "and the learning rate and batch size change both that (through the number and size of the steps) "
                  "and the sharpness, so a correlation may come through training length rather than flatness "
                  "(correlation.json's granulated ψ per setting holds the others fixed). The sweep's runs are the "
                  "points; the table shows each setting's mean over seeds."),
}

# The numbers shown for every experiment (those its summary has), then each claim's own.
SHOWN = ("test_perplexity", "generalization_gap", "lambda_max", "eps_sharpness_eigvec@0.001",
         "eps_sharpness_eigvec@0.01", "init_to_final_barrier")
PERCENT = ("eps_sharpness", "worst_case")  # relative loss increases, in percent (sharpness.sharpness)
STAGE_TIMES = ("train_time_s", "track_time_s", "sharpness_time_s", "landscape_time_s",  # tracking: not in train_time_s
               "prune_time_s")


def stage_minutes(summary: dict) -> dict[str, float]:
    """Each stage's seconds summed over every run and seed, in minutes."""
    minutes = {}
    for key in STAGE_TIMES:
        seconds = [value for run in summary["runs"].values()
                   for value in run["quantities"].get(key, {}).get("per_seed", {}).values() if value is not None]
        if seconds:
            minutes[key.removesuffix("_time_s")] = sum(seconds) / 60
    return minutes


def experiment_section(name: str, config: Path, claim: Claim, summary: dict | None, saved: Path = SAVED) -> list[str]:
    lines = [f"## {name}", "", f"Config: [{config}](../{config}). Claim: {claim.text}"
             + (f" By design: {claim.design}" if claim.design else ""), ""]
    command = f"python run.py --config {config} --output results/laptop"
    if summary is None:
        return lines + [f"**Not run yet.** Run it with `{command}` (or `make results`).", ""]
    runs = summary["runs"]
    minutes = stage_minutes(summary)
    jobs = sum(len(run["seeds"]) for run in runs.values())
    lines += [f"Time: {sum(minutes.values()):.1f} min, the stages' seconds summed over {jobs} runs and seeds ("
              + ", ".join(f"{stage} {m:.1f}" for stage, m in minutes.items()) + "). Command: `" + command + "`.", "",
              f"![{claim.figure}](figures/{name}-{claim.figure}.png)", "",
              "**Verdict:** " + "; ".join(measure_sentence(m, runs, saved / name) for m in claim.measures) + ".", ""]
    measured = [m.quantity for m in claim.measures if isinstance(m, Measure)]
    shown = list(dict.fromkeys([*SHOWN, *measured, *claim.shown]))
    rows = [[quantity + (" (%)" if quantity.startswith(PERCENT) else "")]
            + [number(run["quantities"].get(quantity, {})) for run in runs.values()]
            for quantity in shown if any(run["quantities"].get(quantity, {}).get("n") for run in runs.values())]
    return lines + [md_table(["quantity", *runs], rows), ""]


HEADER = """# Results at laptop scale

What the lab finds when each experiment runs on real WikiText-2 at a scale chosen to finish within 30 minutes on 2 CPU
cores, with 3 seeds: each config in config/laptop/ (why that scale: the comment at its top), the paper's claim it
tests, and a verdict computed from the saved numbers. Numbers are mean ± standard error over seeds (n seeds); a
verdict compares two runs' mean ± 2 standard errors (or one run's against a fixed value, such as a threshold; or a rank
correlation's bootstrap interval against 0): **seen** when the intervals are apart in the claimed direction, **not
seen** when they are apart the other way, **not resolvable** when they overlap. Times are the stages' own seconds
where they ran (summary.json), longer on a machine shared with other work.

Generated by `python -m report.results_doc` from docs/results/<experiment>/summary.json (copies of the runs'
summaries); `make results` runs what is missing and regenerates this page. Do not edit it by hand.
"""


def configs(root: Path = LAPTOP_CONFIGS) -> list[tuple[str, Path]]:
    """(experiment name, config path) of every laptop config, in file order."""
    found = [(load_experiment(path).name, path) for path in sorted(root.glob("*.yaml"))]
    unclaimed = [f"{path} ({name})" for name, path in found if name not in CLAIMS]
    if unclaimed:
        raise UserError(f"{', '.join(unclaimed)}: no claim in report.results_doc.CLAIMS to set the results against")
    return found


def render(saved: Path = SAVED, root: Path = LAPTOP_CONFIGS) -> str:
    """docs/results.md's text from the saved summaries."""
    lines = [HEADER]
    for name, config in configs(root):
        path = saved / name / "summary.json"
        lines += experiment_section(name, config, CLAIMS[name], read_json(path) if path.is_file() else None, saved)
    return "\n".join(lines).rstrip() + "\n"


def shrink_png(source: Path, target: Path, width: int = FIGURE_WIDTH) -> None:
    """A copy of a PNG figure at most `width` pixels wide (the same aspect), small enough to commit."""
    from PIL import Image

    with Image.open(source) as image:
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    write_bytes(target, buffer.getvalue())


def collect(results: Path, saved: Path = SAVED, figures: Path = FIGURES, root: Path = LAPTOP_CONFIGS) -> dict[str, str]:
    """Copy each finished experiment's summary and headline figure (every run and seed reported): {name: what was done}."""
    done = {}
    for name, _ in configs(root):
        summary = results / name / "summary.json"
        figure = results / name / "figures" / f"{CLAIMS[name].figure}.png"
        if not summary.is_file() or not figure.is_file():
            done[name] = f"not finished ({summary if not summary.is_file() else figure} is missing)"
        elif missing := read_json(summary).get("missing"):
            done[name] = f"not finished ({len(missing)} results missing, e.g. {missing[0]})"
        else:
            shutil.copyfile(summary, make_dir(saved / name) / "summary.json")
            for pattern in {m.FILES for m in CLAIMS[name].measures if hasattr(m, "FILES")}:
                for path in (results / name).glob(pattern):  # the measures' own files, at the same relative paths
                    shutil.copyfile(path, make_dir(saved / name / path.parent.relative_to(results / name)) / path.name)
            shrink_png(figure, make_dir(figures) / f"{name}-{CLAIMS[name].figure}.png")
            done[name] = "copied"
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", type=Path, metavar="RESULTS",
                        help="first copy finished summaries and figures from this results folder (results/laptop)")
    args = parser.parse_args(argv)
    try:
        if args.collect:
            for name, done in collect(args.collect).items():
                print(f"{name}: {done}")
        write_text(DOC, render())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
