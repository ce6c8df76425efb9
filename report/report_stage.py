"""The `report` stage: <output>/<experiment>/report.md (with report_appendix.md for its long tables) and
summary.json, from saved results only.

Both show exactly the (run, seed) pairs that experiment.json lists, with results computed from their
current checkpoints (report.reader decides, and names what it leaves out). report.md shows the sections of
report.sections (results.ipynb shows the same): the study's tables (generalization, sharpness), the settings
each run was measured with, the barriers, the cost of every run and the figures; summary.json holds the
numbers behind them (per run: per-seed values, mean, standard error, n and the values left out). The figures
that need every run at once (learning curves, all 2D surfaces on one colour scale per weight space, ...) are drawn
here, on every call.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from config.loading import run_config_from_dict
from config.schema import Experiment
from models.runs import experiment_dir, stage_command
from optimization.cost import load_prices
from optimization.experiment_log import open_log
from report.reader import load_results, redo_stages
from report.sections import APPENDIX, Figure, Shown, appendix_markdown, report_blocks
from report.summary import summarize
from utils.errors import CorruptFileError, UserError
from utils.io import remove, save_figure, write_json, write_text


def render_report(shown: Shown) -> tuple[str, str | None]:
    """report.md and report_appendix.md (None: no table too long for report.md) from the sections' blocks, each
    figure drawn from the results saved (PNG and PDF) under figures/."""
    blocks = report_blocks(shown)
    texts = []
    for block in blocks:
        if isinstance(block, Figure) and block.draw is not None:
            figure = block.draw()
            save_figure(shown.results.folder / "figures" / block.stem, figure)
        texts.append(block if isinstance(block, str) else block.markdown())
    return "\n\n".join(texts) + "\n", appendix_markdown(shown.results.name, blocks)


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
        if listed is not None and {**with_defaults(listed), "device": None} != {**run.to_dict(), "device": None}:
            print(f"{experiment.name}: warning: run {run.name}'s settings differ from those in experiment.json, with "
                  "which its results were made; the report shows those (run the stages again for the new ones)")
    for item in results.ignored:
        print(f"{experiment.name}: warning: ignoring {item}")
    summary = summarize(results)
    redo = stage_command(experiment, output, redo_stages(results.redo, results.stages)) if results.redo else ""
    report, appendix = render_report(Shown(results, summary, load_prices(), redo))
    write_json(folder / "summary.json", summary)
    if appendix is None:
        remove(folder / APPENDIX)  # that of an earlier report, with more runs
    else:
        write_text(folder / APPENDIX, appendix)
    write_text(folder / "report.md", report)
    missing = f"; missing: {len(results.missing)} item(s), listed at the end, made by: {redo}" if results.missing else ""
    written = f"{folder / 'report.md'}{'' if appendix is None else ', ' + APPENDIX} and summary.json"
    print(f"{experiment.name}: wrote {written}{missing}")
    log_figures(experiment, folder)


def with_defaults(listed: dict) -> dict:
    """A run's settings as experiment.json lists them, with the default of every key added to the schema since
    (results made before a key existed were made as its default says); as listed where they no longer load."""
    try:
        return run_config_from_dict(listed).to_dict()
    except UserError:
        return listed


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
