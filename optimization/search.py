"""The `search` stage: one Optuna study per search run (search.n_trials > 0), whose trials are runs.

A trial draws the values of search.space, trains as the run <run>-t<NNN> (t<NNN> in a file without
`runs:`) in its own folder like any run, reports its validation loss after every epoch to the pruner, and
ends with the objective read from its metrics.json. The study lives in search.storage (by default the
SQLite file <experiment>/search.db), so N processes started with `--stages search`, on one machine or on
many that share an RDB, are N workers of one study: the storage numbers the trials, each trial is trained
by the worker that drew it, and the workers stop at search.n_trials trials in all (a worker that draws
one more marks it `surplus` and trains nothing). A trial whose loss diverges fails and counts; a worker
killed mid-trial stops its RDB heartbeat, and after GRACE_S the next trial started retries it under the
same run name, resuming from its last.pt. Optuna's journal file has no heartbeat: a killed trial stays
"running" there.

Writes <experiment>/search.json: each study's settings, trials (number, run, state, params, value,
seconds) and best trial. Trained trials join experiment.json, so later stages measure them (--runs
picks some).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

from optimization.experiments import write_manifest
from optimization.training import train_run
from utils.config import Experiment, RunConfig, SearchConfig, search_axes, with_values
from utils.errors import ConfigError, DivergedError, UserError
from utils.io import read_own_output, write_json
from utils.layout import experiment_dir, run_dir, run_label, training_fingerprint
from utils.lock import manifest_lock
from utils.space import Axis

SEARCH_FILE = "search.json"
HEARTBEAT_S, GRACE_S = 20, 60  # an RDB trial with no heartbeat for GRACE_S is failed and retried
OPEN_ATTEMPTS = 4  # opening a database that another worker is creating


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
    cfg, folder = template.search, experiment_dir(output, experiment)
    study = _open_study(experiment, template, folder)
    axes = search_axes(template)
    base = dataclasses.replace(template, search=SearchConfig())  # a trial is a plain run
    finished = False

    def objective(trial) -> float:
        nonlocal finished
        trials = study.get_trials(deepcopy=False)
        if sum(1 for t in trials if t.number < trial.number and _counts(t)) >= cfg.n_trials:  # another worker took the last
            trial.set_user_attr("surplus", True)
            finished = True
            raise optuna.TrialPruned()
        retried = next(t for t in trials if t.number == trial.number).system_attrs.get("failed_trial")
        number = trial.number if retried is None else retried  # a retry resumes the killed trial's folder
        values = {axis.key: _suggest(trial, axis) for axis in axes}
        run = with_values(base, values, trial_name(template, number), f"{experiment.source}: {template.name} search")
        trial.set_user_attr("run", run.name)
        label = run_label(experiment, run)
        print(f"{label}: trial {trial.number} of study {study.study_name}: "
              + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))

        def report(epoch: int, val_loss: float) -> bool:
            trial.report(val_loss, epoch)
            return cfg.pruner != "none" and trial.should_prune()

        start = time.perf_counter()
        try:
            metrics = train_run(run, run_dir(output, experiment, run), force=force, label=label, stop_after=report)
        except DivergedError as err:
            trial.set_user_attr("error", str(err))
            raise
        trial.set_user_attr("seconds", time.perf_counter() - start)
        write_manifest(experiment, output, trial=(run, template.name))
        if "pruned" in metrics:
            raise optuna.TrialPruned()
        return objective_value(metrics, cfg.objective)

    while not finished and _counted(study) < cfg.n_trials:
        if cfg.sampler != "grid":  # each trial's draws seeded by its place in the study (one worker: reproducible)
            study.sampler = _sampler(template, cfg.seed * 1_000_003 + len(study.get_trials(deepcopy=False)))
        study.optimize(objective, n_trials=1, catch=(DivergedError,), gc_after_trial=False)
    summary = study_summary(study, template, folder)
    with manifest_lock(folder):
        path = folder / SEARCH_FILE
        earlier = read_own_output(path, label=experiment.name) or {"studies": {}}
        earlier["studies"][template.name] = summary
        write_json(path, earlier)
    best = summary["best"]
    print(f"{experiment.name}/{template.name}: study {study.study_name} has {summary['counted']} trials; best "
          + (f"{cfg.objective} {best['value']:.4f} ({best['run']})" if best else "none finished"))


def objective_value(metrics: dict, objective: str) -> float:
    """A finished trial's value: its lowest validation loss, or its last one (at the budget, with train.budget)."""
    losses = [float(v) for v in metrics["val_loss"]]
    return min(losses) if objective == "best_val_loss" else losses[-1]


def _counts(trial) -> bool:
    """Whether a trial counts toward search.n_trials: all but surplus draws and killed trials (which are retried)."""
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

    cfg = template.search
    if cfg.sampler == "grid":
        space = {axis.key: [v if not isinstance(v, tuple) else str(list(v)) for v in axis.grid(cfg.grid_points)]
                 for axis in search_axes(template)}
        return optuna.samplers.GridSampler(space, seed=seed)
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


def storage_url(template: RunConfig, folder: Path) -> str:
    """search.storage as Optuna opens it: '' is <experiment>/search.db; a relative journal path is in the folder."""
    spec = template.search.storage
    if not spec:
        return f"sqlite:///{(folder / 'search.db').resolve()}"
    if spec.startswith("journal:"):
        path = Path(spec[len("journal:"):]).expanduser()
        return f"journal:{path if path.is_absolute() else (folder / path).resolve()}"
    return spec


def _open_storage(template: RunConfig, folder: Path):
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    url = storage_url(template, folder)
    where = f"search.storage of run {template.name} ({_redacted(url)})"
    for attempt in range(OPEN_ATTEMPTS):
        try:
            if url.startswith("journal:"):
                return JournalStorage(JournalFileBackend(url[len("journal:"):]))
            with warnings.catch_warnings():  # Optuna marks heartbeats and retries experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = RetryHeartbeatStaleTrialCallback(max_retry=3, inherit_intermediate_values=True)
                return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None,
                                  heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, heartbeat_stale_trial_callback=retry)
        except ModuleNotFoundError as err:
            raise UserError(f"{where}: its database driver is not installed ({err.name}); e.g. pip install "
                            "psycopg2-binary for postgresql://") from None
        except Exception as err:  # a bad URL, an unreachable server, a locked file: SQLAlchemy has many kinds
            # Workers that start together race to create the tables; the losers find them made on a second look.
            if attempt + 1 == OPEN_ATTEMPTS or type(err).__name__ not in ("IntegrityError", "OperationalError"):
                raise UserError(f"{where} cannot be opened: {str(err).splitlines()[0]}") from None
            time.sleep(1.0 + attempt)


def _redacted(url: str) -> str:
    """The URL without its password, for messages and search.json."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def _settings(template: RunConfig) -> dict:
    """What a study was made with; a later worker or invocation must use the same (n_trials may grow)."""
    cfg = dataclasses.asdict(template.search)
    for key in ("n_trials", "storage", "study"):
        del cfg[key]
    return {"search": cfg, "template": training_fingerprint(template)}


def _open_study(experiment: Experiment, template: RunConfig, folder: Path):
    import optuna

    name = template.search.study or f"{experiment.name}.{template.name}"
    storage = _open_storage(template, folder)
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
            raise UserError(f"study {name} in {_redacted(storage_url(template, folder))} was made with other "
                            f"{what}; set search.study to start another study, or delete the old one")
    if study.direction.name.lower() != template.search.direction:
        raise UserError(f"study {name} in storage seeks to {study.direction.name.lower()}, not "
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
            "storage": _redacted(storage_url(template, folder)), "counted": sum(t["counted"] for t in trials),
            "trials": trials, "best": None if best is None else {k: best[k] for k in ("number", "run", "value", "params")}}
