"""Reading saved results back: what the report stage and results.ipynb both show.

Nothing here trains or measures. It reads the files the stages wrote under <output>/<experiment>/ for
exactly the (run, seed) pairs that experiment.json lists, each only while its folder holds the
training of that run's config in the manifest (same training fingerprint), and only results and
figures computed from those checkpoints. It says what is missing and which folders on disk it
ignores; report.summary aggregates the numbers over seeds and report.tables formats them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from config.loading import run_config_from_dict
from models.runs import MANIFEST, trained_with, training_fingerprint
from report.experiment_results import UNRECORDED_STAGES, ExperimentResults
from report.summary import CORRELATION_FILE, correlation_points, points_fingerprint
from utils.errors import CorruptFileError
from utils.io import load_npz, read_json
from visualization.figure_index import drawn_from


def redo_stages(stages: list[str], experiment_stages: list[str]) -> str:
    """--stages for a command that makes what `stages` make and leaves every result current: a retraining replaces
    the run's later results (so all of the experiment's stages run), and the correlation and the report read every
    result. Each stage redoes only what is missing or not current."""
    needed = {*stages, "report"} | (set(experiment_stages) if "train" in stages else set()) | \
        ({"correlate"} & set(experiment_stages))
    return ",".join(dict.fromkeys(s for s in [*experiment_stages, *stages, "report"] if s in needed))


def find_experiments(output: str | Path) -> list[str]:
    """Names of the experiments under `output` (folders with an experiment.json), sorted."""
    output = Path(output)
    if not output.is_dir():
        return []
    return sorted(p.parent.name for p in output.glob(f"*/{MANIFEST}"))


# ----------------------------------------------------------------------------------------------
# Loading: the manifest's (run, seed) pairs, their files, and whatever else lies in the folder.

def load_results(output: str | Path, experiment: str) -> ExperimentResults:
    """Everything the report shows. A corrupt experiment.json raises CorruptFileError; any other corrupt
    file is listed in `missing` and `corrupt` (the report stage stops on it, the notebook shows it)."""
    folder = Path(output) / experiment
    try:
        manifest = read_json(folder / MANIFEST)
    except CorruptFileError as err:
        raise err.needing("run the train stage again (--stages train): it writes the file anew") from None
    results = ExperimentResults(name=experiment, folder=folder, runs=list(manifest["runs"]), seeds={},
                                configs=manifest["configs"], listed_seeds=list(manifest["seeds"]),
                                stages=manifest.get("stages") or list(UNRECORDED_STAGES))
    expected = {run: {seed: training_fingerprint(replace(run_config_from_dict(results.configs[run]), seed=seed))
                      for seed in manifest["seeds"]} for run in results.runs}
    results.ignored += _unlisted_folders(folder, expected)
    sources = {}  # figure stem -> the current file it should be drawn from
    for run in results.runs:
        results.seeds[run] = []
        for seed, fingerprint in expected[run].items():
            seed_dir, label = folder / run / f"seed-{seed}", f"{run}/seed-{seed}"
            absent = [name for name in ("metrics.json", "checkpoint.pt") if not (seed_dir / name).is_file()]
            if absent:
                results.left_out.append({"run": run, "seed": seed, "why": f"not trained (no {' or '.join(absent)})"})
                results.lack(f"training of {label} (no {' or '.join(absent)}; run the train stage)", "train")
                continue
            metrics = results.read(seed_dir / "metrics.json", "train")
            if metrics is None:
                results.left_out.append({"run": run, "seed": seed, "why": "its metrics.json is corrupt"})
                continue
            if metrics.get("fingerprint") != fingerprint:
                results.left_out.append({"run": run, "seed": seed, "why": "trained with other settings than "
                                                                          "experiment.json lists"})
                results.ignored.append(f"{label} (trained with other settings than experiment.json lists)")
                results.lack(f"training of {label} with the settings of experiment.json (run the train stage)", "train")
                continue
            if not (seed_dir / "init.pt").is_file():  # its results stand, but no later stage can load the run
                results.lack(f"init.pt of {label}, the weights before training that later stages load (run the "
                             "train stage)", "train")
            results.seeds[run].append(seed)
            results.trained_with.setdefault(run, {})[seed] = trained_with(seed_dir)
            results.metrics.setdefault(run, {})[seed] = metrics
            sources.update(_load_run_files(results, run, seed, seed_dir))
        if not results.seeds[run]:
            results.lack(f"training of run {run} (no finished seed; run the train stage)", "train")
    sources.update(_load_pairs(results))
    search = folder / "search.json"
    results.search = results.read(search, "search") if search.is_file() else None
    sources.update(_load_correlation(results))
    for stem, source in sources.items():
        if drawn_from(folder / "figures", stem, source):
            results.figures[stem] = folder / "figures" / f"{stem}.png"
        else:
            results.lack(f"figure {stem} (not drawn from the current {source.name}; run the landscape stage)",
                         "landscape")
    return results


def _unlisted_folders(folder: Path, expected: dict[str, dict[int, str]]) -> list[str]:
    """Run and seed folders that the manifest does not list (other runs, other seeds)."""
    unlisted = []
    for run_folder in sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("seed-*"))):
        if run_folder.name not in expected:
            unlisted.append(f"{run_folder.name}/ (run not in experiment.json)")
            continue
        listed = {f"seed-{seed}" for seed in expected[run_folder.name]}
        unlisted += [f"{run_folder.name}/{p.name} (seed not in experiment.json)"
                     for p in sorted(run_folder.glob("seed-*")) if p.name not in listed]
    return unlisted


def _load_run_files(results: ExperimentResults, run: str, seed: int, seed_dir: Path) -> dict[str, Path]:
    """Read one trained (run, seed)'s measurements; return the figures they should be drawn in."""
    label, name, fingerprint = f"{run}/seed-{seed}", f"{run}_seed-{seed}", results.trained_with[run][seed]
    config = results.configs[run]
    sources = {}
    measured = [("sharpness", "sharpness", results.sharpness), ("geometry", "geometry", results.geometry)]
    if config["sharpness"].get("density", {}).get("probes"):
        measured.append(("sharpness", "density", results.density))
    if config["model"].get("adapter", {}).get("type", "none") != "none":
        measured.append(("prune", "prune", results.prune))
        if config["sharpness"].get("merged"):
            measured.append(("sharpness", "sharpness_merged", results.sharpness_merged))
    for stage, what, store in measured:
        path = seed_dir / f"{what}.json"
        data = results.read(path, stage) if path.is_file() else None
        if data is None:
            results.absent(stage, f"{what} of {label} (no {path.name})")
        elif data.get("checkpoint") != fingerprint:
            results.lack(f"{what} of {label} (measured on other weights; run the {stage} stage)", stage)
        else:
            store.setdefault(run, {})[seed] = data
    if config["train"].get("track", {}).get("every"):
        path = seed_dir / "track.json"
        data = results.read(path, "train") if path.is_file() else None
        if data is None or data.get("fingerprint") != results.metrics[run][seed]["fingerprint"]:
            results.lack(f"sharpness along training of {label} (no current track.json; run the train stage)", "train")
        else:
            results.track.setdefault(run, {})[seed] = data

    if config["train"].get("epochs") != 0:  # a run measured as is has no training path, so no init -> final line
        sources.update(_load_init_to_final(results, run, seed, seed_dir))

    surface = seed_dir / "landscape_2d.npz"
    if not surface.is_file():
        results.absent("landscape", f"2D surface of {label} (no landscape_2d.npz)")
        return sources
    data = results.read(surface, "landscape", load_npz)
    if data is None:
        return sources
    if "done" not in data or str(data.get("checkpoint")) != fingerprint:
        results.lack(f"2D surface of {label} (computed from other weights or by an older version; run the "
                     "landscape stage)", "landscape")
    elif not data["done"].all():
        results.lack(f"2D surface of {label} (unfinished: {int(data['done'].sum())} of {data['done'].size} "
                     "points; run the landscape stage)", "landscape")
    else:
        results.surfaces.setdefault(run, {})[seed] = data
        sources.update({f"surface_2d_{name}": surface, f"surface_3d_{name}": surface})
    return sources


def _load_init_to_final(results: ExperimentResults, run: str, seed: int, seed_dir: Path) -> dict[str, Path]:
    """A trained (run, seed)'s init -> final interpolation while computed from its current weights; its figure."""
    label, line = f"{run}/seed-{seed}", seed_dir / "interpolation.json"
    data = results.read(line, "landscape") if line.is_file() else None
    if data is None:
        results.absent("landscape", f"init-to-final interpolation of {label} (no interpolation.json)")
    elif data.get("checkpoint") != results.trained_with[run][seed]:
        results.lack(f"init-to-final interpolation of {label} (computed from other weights; run the landscape "
                     "stage)", "landscape")
    else:
        results.init_to_final.setdefault(run, {})[seed] = data
        return {f"init_to_final_{run}_seed-{seed}": line}
    return {}


def _load_pairs(results: ExperimentResults) -> dict[str, Path]:
    """Keep the interpolations between runs whose two checkpoints are the current ones; name the others
    and the pairs of trained runs that have none. Return the figure drawn from the file if all of it is current."""
    path = results.folder / "interpolation.json"
    data = (results.read(path, "landscape") if path.is_file() else None) or {"pairs": []}
    current = []
    for pair in data["pairs"]:
        (a, b), seed = pair["runs"], pair["seed"]
        if [results.trained_with.get(run, {}).get(seed) for run in (a, b)] == pair.get("checkpoints"):
            current.append(pair)
        else:
            results.lack(f"interpolation {a} → {b}, seed {seed} (computed from other weights than the current "
                         "checkpoints)", "landscape")
    found = {(tuple(pair["runs"]), pair["seed"]) for pair in data["pairs"] + data.get("incomparable", [])}
    results.incomparable = [f"{pair['runs'][0]} → {pair['runs'][1]}, seed {pair['seed']}"
                            for pair in data.get("incomparable", [])]
    for seed in results.listed_seeds:
        trained = [run for run in results.runs if seed in results.seeds[run]]
        for i, a in enumerate(trained):
            for b in trained[i + 1:]:
                if ((a, b), seed) not in found:
                    results.absent("landscape", f"interpolation {a} → {b}, seed {seed} (not computed; "
                                                "run the landscape stage)")
    if current:
        results.interpolation = {"alphas": data["alphas"], "pairs": current}
    return {"interpolation": path} if current and len(current) == len(data["pairs"]) else {}



def _load_correlation(results: ExperimentResults) -> dict[str, Path]:
    """correlation.json while it was computed from the current results (the report draws its figure)."""
    path = results.folder / CORRELATION_FILE
    data = results.read(path, "correlate") if path.is_file() else None
    if data is None:
        results.absent("correlate", f"the correlation of the measures with generalization (no {CORRELATION_FILE})")
        return {}
    if data.get("inputs") != points_fingerprint(correlation_points(results)):
        results.lack(f"{CORRELATION_FILE} (computed from other results than the current ones; run the correlate "
                     "stage)", "correlate")
        return {}
    results.correlation = data
    return {}
