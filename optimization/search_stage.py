"""The `search` stage: one Optuna study per search run (search.n_trials > 0), whose trials are runs.

A trial draws the values of search.space, trains as the run <run>-t<NNN> (t<NNN> in a file without
`runs:`) in its own folder like any run, reports its validation loss after every epoch to the pruner, and
ends with the objective read from its metrics.json. The study lives in search.storage (by default the
SQLite file <experiment>/search.db), so N processes started with `--stages search`, on one machine or on
many that share an RDB, are N workers of one study: the storage numbers the trials, each trial is trained
by the worker that claimed it, and the workers stop at search.n_trials trials in all (a worker that draws
one more, racing a worker of another results folder, marks it `surplus` and trains nothing). A trial whose
loss diverges fails and counts.

A trial's worker holds its run folder's lock (utils.lock.run_lock) until the trial's result is in the
study, and the workers of one results folder create and claim trials only under the experiment's manifest
lock. So, under that lock, a running trial of this folder whose run lock is free has lost its worker
(killed, interrupted, stopped by an error): the next worker to look claims it and resumes it in its folder,
with the values it drew and under its number, so a search killed and rerun trains the same trials as one
never interrupted. A trial is seeded by its number, so with the same finished trials it draws the same
values whichever worker draws it. Trials of workers in another results folder (or on another host) are
theirs: rerunning there resumes them.

Writes <experiment>/search.json: each study's settings, trials (number, run, state, params, value,
seconds) and best trial. Trained trials join experiment.json, so later stages measure them (--runs
picks some).
"""

from __future__ import annotations

import dataclasses
import socket
import time
from contextlib import ExitStack
from pathlib import Path

from optimization.study_storage import damage_named, open_storage, redacted, storage_url
from optimization.train_stage import write_manifest
from optimization.training import train_run
from config.loading import search_axes, with_values
from config.schema import Experiment, RunConfig, SearchConfig
from utils.errors import ConfigError, DivergedError, OutputError
from utils.io import read_own_output, write_json
from models.runs import experiment_dir, run_dir, run_label, training_fingerprint
from utils.lock import manifest_lock, run_lock
from config.space import Axis

SEARCH_FILE = "search.json"
WORKER = "worker"  # a trial's system attribute: the host and experiment folder of the worker that trains it


def search_stage(experiment: Experiment, output: Path, force: bool) -> None:
    studies = experiment.studies()
    if not studies:
        raise ConfigError(f"{experiment.source}: " + ("--runs names no search run (the search stage works on whole "
                          "studies)" if experiment.requested else "no run searches (set search.n_trials and search.space)"))
    write_manifest(experiment, output)
    for template in studies:
        run_study(experiment, template, output, force)


def trial_name(template: RunConfig, number: int) -> str:
    return f"t{number:03d}" if template.name == "default" else f"{template.name}-t{number:03d}"


def run_study(experiment: Experiment, template: RunConfig, output: Path, force: bool = False) -> None:
    """Work on the study of `template` until it has search.n_trials trials, then write search.json."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    folder = experiment_dir(output, experiment)
    with damage_named(template, folder):
        study = _open_study(experiment, template, folder)
        while True:
            with ExitStack() as held:  # the trial's run lock, released once its result is in the study
                trial = _next_trial(study, template, folder, held)
                if trial is None:
                    break
                _train_trial(study, trial, experiment, template, output, force)
        summary = study_summary(study, template, folder)
    with manifest_lock(folder):
        path = folder / SEARCH_FILE
        earlier = read_own_output(path, label=experiment.name) or {"studies": {}}
        earlier["studies"][template.name] = summary
        write_json(path, earlier)
    best = summary["best"]
    running = [trial_name(template, t["number"]) for t in summary["trials"] if t["state"] == "running"]
    print(f"{experiment.name}/{template.name}: study {study.study_name} has {summary['counted']} trials; best "
          + (f"{template.search.objective} {best['value']:.4f} ({best['run']})" if best else "none finished")
          + (f"; still running in other workers: {', '.join(running)}" if running else ""))


def _next_trial(study, template: RunConfig, folder: Path, held: ExitStack):
    """The trial this worker trains next, its run folder locked until `held` closes: a trial of this folder whose
    worker is gone, resumed, else a new one while the study has fewer than search.n_trials; None once it has
    them all."""
    import optuna
    from optuna.trial import TrialState

    here, wanted = _whereabouts(folder), template.search.n_trials
    with manifest_lock(folder):  # every worker of this folder creates and claims trials under it
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.system_attrs.get(WORKER) != here:
                continue  # a trial of another results folder: a rerun there resumes it
            # A free run lock: its worker was killed, interrupted or stopped by an error (a held one is let go
            # with `held`).
            if held.enter_context(run_lock(_trial_dir(folder, template, frozen.number))):
                print(f"{folder.name}/{trial_name(template, frozen.number)}/seed-{template.seed}: "
                      f"trial {frozen.number} lost its worker; resuming it")
                return _seeded_trial(study, template, frozen._trial_id, frozen.number)
        if _counted(study) >= wanted:
            return None
        storage = study._storage  # a trial made with its whereabouts at once: never running without them
        trial_id = storage.create_new_trial(study._study_id, template_trial=optuna.trial.create_trial(
            state=TrialState.RUNNING, system_attrs={WORKER: here}))
        number = storage.get_trial_number_from_id(trial_id)
        if sum(1 for t in study.get_trials(deepcopy=False) if t.number < number and _counts(t)) >= wanted:
            storage.set_trial_user_attr(trial_id, "surplus", True)  # a worker of another folder took the last one
            storage.set_trial_state_values(trial_id, TrialState.PRUNED)
            return None
        if not held.enter_context(run_lock(_trial_dir(folder, template, number))):
            raise OutputError(f"{_trial_dir(folder, template, number)} is in use by another process (another study "
                              "with the same run names?); set search.study to a study of its own")
        return _seeded_trial(study, template, trial_id, number)


def _whereabouts(folder: Path) -> dict:
    return {"host": socket.gethostname(), "folder": str(folder.resolve())}


def _trial_dir(folder: Path, template: RunConfig, number: int) -> Path:
    return folder / trial_name(template, number) / f"seed-{template.seed}"


def _seeded_trial(study, template: RunConfig, trial_id: int, number: int):
    """The trial, its draws seeded by its number: the same values for the same finished trials, whichever
    worker draws them. A grid trial's point is its number (in the grid's order, which search.seed shuffles)."""
    import optuna

    if template.search.sampler != "grid":
        study.sampler = _sampler(template, template.search.seed * 1_000_003 + number)
    return optuna.Trial(study, trial_id)


def _train_trial(study, trial, experiment: Experiment, template: RunConfig, output: Path, force: bool) -> None:
    """Draw the trial's values (a resumed trial keeps those it drew), train its run and tell the study its result.
    Anything else that ends the training (Ctrl-C, a kill, a full disk) leaves the trial running, for a later
    worker to resume."""
    from optuna.trial import TrialState

    values = {axis.key: _suggest(trial, axis) for axis in search_axes(template)}
    base = dataclasses.replace(template, search=SearchConfig())  # a trial is a plain run
    run = with_values(base, values, trial_name(template, trial.number), f"{experiment.source}: {template.name} search")
    trial.set_user_attr("run", run.name)
    label = run_label(experiment, run)
    print(f"{label}: trial {trial.number} of study {study.study_name}: "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))
    reported = set(study._storage.get_trial(trial._trial_id).intermediate_values)  # by the worker it resumes

    def report(epoch: int, val_loss: float) -> bool:
        if epoch not in reported:  # a resumed trial trains again the epoch after its last.pt
            trial.report(val_loss, epoch)
        return template.search.pruner != "none" and trial.should_prune()

    start = time.perf_counter()
    try:
        metrics = train_run(run, run_dir(output, experiment, run), force=force, label=label, stop_after=report)
    except DivergedError as err:
        trial.set_user_attr("error", str(err))
        study.tell(trial, state=TrialState.FAIL)
        print(f"{label}: trial {trial.number} failed and counts as a trial: {err}")
        return
    trial.set_user_attr("seconds", time.perf_counter() - start)
    write_manifest(experiment, output, trial=(run, template.name))
    if "pruned" in metrics:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, objective_value(metrics, template.search.objective))


def objective_value(metrics: dict, objective: str) -> float:
    """A finished trial's value: its lowest validation loss, or its last one (at the budget, with train.budget)."""
    losses = [float(v) for v in metrics["val_loss"]]
    return min(losses) if objective == "best_val_loss" else losses[-1]


def _counts(trial) -> bool:
    """Whether a trial counts toward search.n_trials: all but surplus draws and trials failed without an error
    (by an older version, which failed a killed trial and drew another in its place)."""
    from optuna.trial import TrialState

    if trial.user_attrs.get("surplus"):
        return False
    return trial.state != TrialState.FAIL or "error" in trial.user_attrs


def _counted(study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if _counts(t))


def _suggest(trial, axis: Axis):
    if axis.kind == "int":
        return trial.suggest_int(axis.key, int(axis.low), int(axis.high))
    if axis.kind in ("uniform", "loguniform"):
        return trial.suggest_float(axis.key, axis.low, axis.high, log=axis.kind == "loguniform")
    labels = [v if v is None or isinstance(v, (bool, int, float, str)) else str(list(v)) for v in axis.values]
    return axis.values[labels.index(trial.suggest_categorical(axis.key, labels))]


def _sampler(template: RunConfig, seed: int):
    import optuna

    class _GridSampler(optuna.samplers.GridSampler):
        def after_trial(self, *args) -> None:
            """Nothing: run_study stops at search.n_trials itself (Optuna's grid would stop an optimize loop)."""

    cfg = template.search
    if cfg.sampler == "grid":
        space = {axis.key: [v if not isinstance(v, tuple) else str(list(v)) for v in axis.grid(cfg.grid_points)]
                 for axis in search_axes(template)}
        return _GridSampler(space, seed=seed)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=cfg.startup_trials, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.startup_trials)


def _pruner(template: RunConfig):
    import optuna

    cfg = template.search
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=template.train.epochs)
    return optuna.pruners.NopPruner()


def _settings(template: RunConfig) -> dict:
    """What a study was made with; a later worker or invocation must use the same (n_trials may grow)."""
    cfg = dataclasses.asdict(template.search)
    for key in ("n_trials", "storage", "study"):
        del cfg[key]
    return {"search": cfg, "template": training_fingerprint(template)}


def _open_study(experiment: Experiment, template: RunConfig, folder: Path):
    import optuna

    name = template.search.study or f"{experiment.name}.{template.name}"
    storage = open_storage(template, folder)
    with manifest_lock(folder):  # the workers of one machine create the study once
        study = optuna.create_study(storage=storage, study_name=name, direction=template.search.direction,
                                    sampler=_sampler(template, template.search.seed), pruner=_pruner(template),
                                    load_if_exists=True)
        settings = _settings(template)
        made_with = study.user_attrs.get("settings")
        if made_with is None:
            study.set_user_attr("settings", settings)
        elif made_with != settings:
            changed = sorted(k for k in set(made_with["search"]) | set(settings["search"])
                             if made_with["search"].get(k) != settings["search"].get(k))
            what = f"search.{', search.'.join(changed)}" if changed else "the run's training settings"
            raise ConfigError(f"study {name} in {redacted(storage_url(template, folder))} was made with other "
                            f"{what}; set search.study to start another study, or delete the old one")
    if study.direction.name.lower() != template.search.direction:
        raise ConfigError(f"study {name} in storage seeks to {study.direction.name.lower()}, not "
                        f"{template.search.direction}; set search.study to start another study")
    return study


def study_summary(study, template: RunConfig, folder: Path) -> dict:
    """search.json's entry for one study: settings, every trial in number order, and the best finished trial."""
    trials = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        pruned = t.state.name == "PRUNED" and not t.user_attrs.get("surplus") and t.last_step is not None
        trials.append({"number": t.number, "run": t.user_attrs.get("run"), "state": t.state.name.lower(),
                       "params": t.params, "value": t.value, "seconds": t.user_attrs.get("seconds"),
                       "counted": _counts(t), "pruned_at_epoch": t.last_step + 1 if pruned else None,
                       "error": t.user_attrs.get("error")})
    done = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    pick = max if template.search.direction == "maximize" else min
    best = pick(done, key=lambda t: t["value"]) if done else None
    return {"study": study.study_name, **dataclasses.asdict(template.search),
            "storage": redacted(storage_url(template, folder)), "counted": sum(t["counted"] for t in trials),
            "trials": trials, "best": None if best is None else {k: best[k] for k in ("number", "run", "value", "params")}}
