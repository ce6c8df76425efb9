"""Typed experiment configuration.

An experiment file (YAML) may `extends:` another file (usually config/base.yaml), overrides any
field of the schema below, lists `seeds`, and names `runs`, each of which overrides fields again:

    extends: base.yaml
    seeds: [42]
    train: {optimizer: sgd, lr: 1.0e-3}
    runs:
      bs4:  {train: {batch_size: 4}}
      bs24: {train: {batch_size: 24, weight_decay: 5.0e-4}}

Layers apply in order: dataclass defaults < extended files < experiment file < run < `--set`.
Every layer is typed and checked where it is written (a bad value that a later layer overrides is
still an error), and every error names the file (or `--set`) and the dotted key, and is raised
before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from utils.errors import ConfigError
from config.space import format_value, grid_points, grid_size, parse_space, point_name, random_points


def option(default, doc: str = "", *, ge=None, gt=None, le=None, lt=None, result: bool = True, added: bool = False,
           measurement_set: bool = False):
    """A schema field with a default, a one-line description and optional numeric bounds. `result=False`: the field
    cannot change any result (how work is logged or compiled), so no fingerprint holds it; `added=True`: the field
    came after results existed, so a fingerprint holds it only when it is set to another value than its default
    (results made before it existed, with what is now its default, stay current); `measurement_set=True`: the field
    picks the texts of the measurement set, which results outside its section (a tracked training) depend on."""
    metadata = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "result": result, "added": added,
                "measurement_set": measurement_set}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    source: Literal["hub", "local", "builtin"] = option("hub", "where texts come from")
    dataset: str = option("wikitext", "hub dataset id (source: hub)")
    subset: str = option("wikitext-2-raw-v1", "hub dataset configuration (source: hub)")
    path: str = option("", "folder with wiki.{train,valid,test}.{raw,tokens}, *.txt or *.parquet (source: local)")
    min_text_length: int = option(50, "keep stripped lines longer than this many characters", ge=0)
    max_length: int = option(128, "truncate every text to this many tokens", ge=2)
    n_train: int = option(1000, "first N filtered training texts", ge=1)
    n_val: int = option(100, "first N filtered validation texts", ge=1)
    n_test: int = option(100, "first N filtered test texts", ge=1)
    order: Literal["random", "sorted"] = option("random", "training order: reshuffled each epoch, or short-to-long")


@dataclass
class AdapterConfig:
    type: Literal["none", "lora"] = option("none", "none (full fine-tuning) | lora (peft LoRA; the base model frozen)")
    r: int = option(8, "LoRA rank", ge=1)
    alpha: float = option(16.0, "LoRA scale: the update of W is (alpha/r)·B·A", gt=0)
    dropout: float = option(0.0, "dropout on the LoRA branch's input while training", ge=0, lt=1)
    target_modules: list[str] = option(["c_attn", "c_proj", "c_fc"], "module names that get an adapter (GPT-2's Conv1D layers)")


@dataclass
class ModelConfig:
    name: str = option("distilgpt2", "hub id or local folder of a causal LM (init: pretrained)")
    init: Literal["pretrained", "scratch"] = option("pretrained", "load weights, or initialise randomly")
    arch: Literal["", "distilgpt2", "gpt2"] = option("", "GPT-2 shape preset for init: scratch")
    config: dict = option({}, "GPT2Config fields for init: scratch (override the arch preset)")
    tokenizer: str = option("", "'' (same as name), a hub id, a folder, 'bytes', or 'bpe' (trained on train split)")
    bpe_vocab_size: int = option(1024, "vocabulary size of the 'bpe' tokenizer", ge=260)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    base_run: str = option("", "start from the trained weights and tokenizer of this run of the experiment (trained "
                               "first; its model settings must be this run's) instead of model.init's ('': none)")


@dataclass
class TrackConfig:
    every: int = option(0, "measure the Hessian on the sharpness measurement set every N optimizer steps (0: off)", ge=0)
    metrics: list[Literal["lambda_max", "preconditioned_lambda_max", "trace"]] = option(
        ["lambda_max", "preconditioned_lambda_max"],
        "lambda_max | preconditioned_lambda_max (of P^-1/2 H P^-1/2, Adam family only) | trace (Hutchinson)")
    iters: int = option(40, "Lanczos steps per point at most (each one HVP; 3 points in 4 warm-started from the last "
                              "point; at most 10 cannot converge)", ge=2)
    tol: float = option(1e-3, "a λ has converged when its residual is within tol·|λ_max| and it moved by at most that "
                              "over max(10, m/2) of its m Lanczos steps (the sharpness stage's rule)", gt=0)
    trace_samples: int = option(10, "Hutchinson samples per point (metric trace)", ge=1)
    seed: int = option(0, "draws the first Lanczos start and the Hutchinson vectors", ge=0)


@dataclass
class TrajectoryConfig:
    every: int = option(0, "save θ − θ₀ (float16) every N optimizer steps, for PCA directions (0: off)", ge=0)


@dataclass
class BudgetConfig:
    seconds: float = option(0.0, "stop training once this much training time is spent (0: no limit)", ge=0)
    flops: float = option(0.0, "stop training once this many training FLOPs are spent (optimization.cost; 0: no limit)", ge=0)


@dataclass
class TrainConfig:
    optimizer: Literal["sgd", "adam", "adamw", "signsgd", "adasgd", "blockadam"] = option(
        "sgd", "sgd | adam | adamw | signsgd (signum) | adasgd (one second moment per group) | blockadam (one per tensor)")
    lr: float = option(1e-3, "learning rate", gt=0)
    momentum: float = option(0.0, "momentum of sgd and signsgd", ge=0, lt=1)
    betas: list[float] = option([0.9, 0.999], "first- and second-moment decay of the Adam family", ge=0, lt=1)
    eps: float = option(1e-8, "added to the Adam family's root second moment", gt=0)
    weight_decay: float = option(0.0, "weight decay (L2 in the gradient for sgd and adam; decoupled for the others)", ge=0)
    rotation: Literal["none", "global", "per-layer"] = option(
        "none", "train θ̃ with θ = Rθ̃ for a random rotation R of all weights (global) or of each layer's")
    rotation_seed: int = option(0, "draws the training rotation", ge=0)
    batch_size: int = option(8, "texts per step", ge=1)
    epochs: int = option(60, "passes over the training texts", ge=1)
    grad_clip: float = option(0.0, "clip the global gradient norm to this value (0: off)", ge=0)
    schedule: Literal["constant", "cosine"] = option("constant", "learning-rate schedule after warmup")
    warmup_steps: int = option(0, "linear warmup steps", ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = option(
        "fp32", "training autocast on CUDA: bf16, or fp16 with a gradient scaler (measurements stay fp32)")
    compile: bool = option(False, "torch.compile the model for training steps (not evaluation or Hessian work)",
                           result=False)
    eval_batch_size: int = option(16, "texts per batch for validation and test", ge=1)
    track: TrackConfig = field(default_factory=TrackConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)


@dataclass
class DensityConfig:
    probes: int = option(0, "Rademacher probes of the SLQ spectral density of H (0: off)", ge=0)
    steps: int = option(80, "Lanczos steps per probe (each one HVP)", ge=2)
    reorthogonalize: Literal["auto", "full", "none"] = option(
        "auto", "full keeps steps·d floats per probe; none keeps 3·d; auto: full when it fits in memory_mb")
    memory_mb: int = option(4096, "largest Lanczos basis auto may keep (MiB)", ge=1)
    seed: int = option(0, "draws the probes", ge=0)


@dataclass
class SharpnessConfig:
    batches: int = option(3, "batches in the measurement set", ge=1, measurement_set=True)
    batch_size: int = option(4, "training texts per measurement batch", ge=1, measurement_set=True)
    seed: int = option(0, "draws the measurement texts (the same for every run and seed)", ge=0, measurement_set=True)
    method: Literal["lanczos", "power"] = option("lanczos", "top-eigenvalue solver")
    top_k: int = option(3, "eigenvalues reported by Lanczos", ge=1)
    max_iter: int = option(40, "Lanczos steps / power iterations (each one HVP)", ge=2)
    tol: float = option(1e-3, "eigenvalue residual tolerance, relative to the largest |eigenvalue|", gt=0)
    epsilons: list[float] = option([1e-3], "perturbation radii", gt=0)
    random_directions: int = option(10, "random unit directions per epsilon", ge=0)
    ball: Literal["l2", "adaptive"] = option("l2", "worst-case ball: l2 (‖δ‖₂ ≤ ε) or adaptive (‖δ/|θ|‖₂ ≤ ε)")
    worst_case_steps: int = option(10, "projected gradient-ascent steps (0: off)", ge=0)
    trace_samples: int = option(20, "Hutchinson samples (0: off)", ge=0)
    hvp: Literal["reverse", "forward"] = option("reverse", "Hessian-vector product: reverse-over-reverse or forward-over-reverse")
    density: DensityConfig = field(default_factory=DensityConfig)
    merged: bool = option(False, "LoRA runs: also measure in the merged full-weight space (sharpness_merged.json)")


@dataclass
class GeometryConfig:
    cauchy_vectors: int = option(50, "Cauchy sketches of the Hessian's row ℓ1 norms (k; each one HVP and 4·d bytes of "
                                 "disk)", ge=5, le=100_000)
    bootstrap: int = option(100, "random halves of the k sketches drawn for the intervals' standard errors (0: off, else at least 2)", ge=0)
    confidence: float = option(0.95, "confidence level of the intervals", gt=0, lt=1)
    frobenius_probes: int = option(30, "Hutch++ Rademacher probes for ‖H‖_F (0: off)", ge=0)
    rotation: Literal["none", "global", "per-layer"] = option(
        "global", "also measure the rotated loss θ̃ ↦ L(Rθ̃) (none: the original coordinates only)")
    rotation_seed: int = option(0, "draws the rotation (the same R as train.rotation_seed when the kinds match)", ge=0)
    seed: int = option(0, "draws the Cauchy and Rademacher vectors", ge=0)


@dataclass
class LandscapeConfig:
    directions: Literal["random", "pca"] = option(
        "random", "the 2D plane: random directions, or the top two PCA directions of train.trajectory (Li et al. §7)")
    space: Literal["adapter", "merged"] = option(
        "adapter", "LoRA runs: the adapter's weights (what the optimizer moves) or the merged full model's")
    norm: Literal["layer", "filter", "none"] = option("layer", "direction normalisation of random directions (Li et al. 2018)")
    ignore: Literal["", "biasbn"] = option("", "'biasbn' zeroes biases and LayerNorm in the directions")
    seed: int = option(0, "draws the random directions", ge=0)
    resolution: int = option(21, "2D grid points per axis", ge=2)
    range: float = option(1.0, "2D grid spans [-range, range] on both axes", gt=0)
    val_surface: bool = option(False, "also evaluate the validation loss on the 2D grid")
    points: int = option(31, "1D interpolation points", ge=2)
    alpha_min: float = option(-0.5, "1D interpolation start")
    alpha_max: float = option(1.5, "1D interpolation end")
    eval_batches: int = option(16, "batches in each landscape evaluation set", ge=1)
    eval_batch_size: int = option(16, "texts per landscape evaluation batch", ge=1)
    eval_seed: int = option(0, "draws the evaluation texts (the same for every run and seed)", ge=0)


@dataclass
class PruneConfig:
    fractions: list[float] = option([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
                                    "fractions of the LoRA weights set to zero", ge=0, lt=1)
    scope: Literal["global", "per-matrix"] = option("global", "magnitude ranks all LoRA weights together, or each matrix's own")
    random_seeds: int = option(3, "random masks per fraction (mean ± s.e. in the figure)", ge=0)
    lambda_max_fractions: list[float] = option([0.0, 0.5, 0.9], "fractions (magnitude masks) whose λ_max is measured "
                                               "on the sharpness measurement set", ge=0, lt=1)
    rewind: bool = option(False, "lottery ticket: reset the kept weights to their initial values and retrain with the mask")
    rewind_fractions: list[float] = option([0.5, 0.9], "magnitude-mask fractions retrained after the rewind", ge=0, lt=1)
    rewind_epochs: int = option(1, "epochs of retraining after the rewind", ge=1)


@dataclass
class LoggingConfig:
    backend: Literal["none", "tensorboard", "wandb"] = option(
        "none", "experiment tracker: tensorboard (event files in the run folder) or wandb (offline unless WANDB_MODE "
                "says otherwise)", result=False)
    every: int = option(10, "log the step loss, lr and tokens/s every N optimizer steps", ge=1, result=False)
    project: str = option("", "wandb project ('' : loss-landscape-lab)", result=False)


@dataclass
class SearchConfig:
    n_trials: int = option(0, "trials of an Optuna study over `space` (0: no search, the run trains as written)", ge=0)
    space: dict = option({}, "what the trials vary, in the sweep syntax: {dotted key: [values] | "
                             "{uniform|loguniform|int: [low, high]}}")
    objective: Literal["best_val_loss", "final_val_loss"] = option(
        "best_val_loss", "a trial's value: its lowest validation loss, or its last (with train.budget: at the budget)")
    direction: Literal["minimize", "maximize"] = option("minimize", "whether the study seeks the lowest or highest value")
    sampler: Literal["tpe", "random", "grid", "cmaes"] = option("tpe", "Optuna sampler")
    startup_trials: int = option(5, "random trials before tpe or cmaes model the space; trials the median pruner "
                                    "waits for before it prunes", ge=0)
    grid_points: int = option(3, "sampler grid: values per continuous axis (evenly spaced; geometrically for loguniform)", ge=2)
    pruner: Literal["none", "median", "hyperband"] = option(
        "none", "stop unpromising trials early from their validation loss after each epoch")
    seed: int = option(0, "seeds the sampler (the trials train at the experiment's seed)", ge=0)
    storage: str = option("", "'' (an SQLite file search.db in the experiment folder), an RDB URL "
                              "(postgresql://..., sqlite:////abs/path.db) or journal:PATH (Optuna's journal file)")
    study: str = option("", "study name in the storage ('' : <experiment>.<run>)")


@dataclass
class CorrelateConfig:
    resamples: int = option(1000, "bootstrap resamples of the runs for the 95% intervals", ge=2)
    confidence: float = option(0.95, "confidence level of the intervals", gt=0, lt=1)
    seed: int = option(0, "draws the bootstrap resamples", ge=0)
    color_by: str = option("", "the varied setting that colours the scatter plots ('' : the first one varied)")


@dataclass
class RunConfig:
    name: str = option("default", "run name (set from the `runs:` key)")
    seed: int = option(42, "seed of this run (set from `seeds:`)", ge=0)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    correlate: CorrelateConfig = field(default_factory=CorrelateConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def section_settings(run: RunConfig, *sections: str) -> dict:
    """{section: its settings} for the named sections of `run` (e.g. "sharpness", "landscape"): every field that can
    change a result, nested sections included, so that a result stamped with them is redone when any of them
    changes, a field added to a section included. Left out: fields marked result=False, and fields marked added
    that hold their default."""
    def settings(section) -> dict:
        kept = {}
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if not f.metadata.get("result", True) or (f.metadata.get("added") and value == default):
                continue
            kept[f.name] = settings(value) if dataclasses.is_dataclass(value) else value
        return kept

    return {name: settings(getattr(run, name)) for name in sections}


def measurement_set_settings(run: RunConfig) -> dict:
    """The sharpness settings that pick the measurement set's texts (marked measurement_set in the schema)."""
    return {f.name: getattr(run.sharpness, f.name) for f in dataclasses.fields(SharpnessConfig)
            if f.metadata.get("measurement_set")}


@dataclass
class Experiment:
    name: str
    source: Path
    seeds: list[int]
    runs: list[RunConfig]  # one per run name, with seed = seeds[0]; a run with search.n_trials is a study's template
    stages: list[str] = field(default_factory=list)  # what run.py does without --stages ([]: pipeline's defaults)
    threads: int | str = "auto"  # torch's intra-op threads in each process: a count, or "auto" (utils.device.threads_for)
    swept: dict[str, dict] = field(default_factory=dict)  # run name -> the `sweep:` values it was made with
    requested: list[str] = field(default_factory=list)  # --runs names that are no run of the file: trials of a search?
    trials: list[RunConfig] = field(default_factory=list)  # the search's trained trials (models.runs.with_trials)

    def jobs(self) -> list[RunConfig]:
        """Every (run, seed) pair to train and measure, runs outermost, then the search's trials."""
        return [dataclasses.replace(run, seed=seed) for run in self.runs if not run.search.n_trials
                for seed in self.seeds] + self.trials

    def studies(self) -> list[RunConfig]:
        """The runs that are searches (search.n_trials > 0): each one Optuna study."""
        return [run for run in self.runs if run.search.n_trials]


# The keys of an experiment file that belong to the experiment, not to its runs: (default, meaning).
EXPERIMENT_KEYS = {
    "extends": ("none", "a file (relative to this one) whose settings this file overrides, e.g. base.yaml"),
    "experiment": ("the file name", "the name of the experiment's output folder"),
    "seeds": ("`[42]`", "every run is repeated once per seed (distinct non-negative integers)"),
    "runs": ("one run, default", "named runs, each a mapping of the settings it overrides"),
    "sweep": ("none", "`grid: {key: [values], ...}` or `random: {n, seed, space}`: one run per point, crossed "
                      "with `runs`"),
    "stages": ("`[]`", "the stages run.py runs without --stages ([]: the pipeline's default stages)"),
    "threads": ("`auto`", "torch's intra-op threads in each process: a number, or auto (OMP_NUM_THREADS if set, else "
                        "the cores the load average leaves free; shared among the local ranks under torchrun)"),
}


# ----------------------------------------------------------------------------------------------
# Reading files: the tree of raw values, each leaf remembering where it was written.

_EXPERIMENT_VALUES = ("experiment", "seeds", "stages", "threads")  # keys of the experiment, not of its runs
_EXPERIMENT_KEYS = set(EXPERIMENT_KEYS)
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MADE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")  # names made from values (sweeps, trials)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in a mapping is an error (PyYAML keeps
    the last one silently, so one of two settings would be ignored)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(problem=f"duplicate key {key!r}",
                                                            problem_mark=key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        line = err.object[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not a UTF-8 text file (the first invalid byte is on line {line})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "invalid syntax"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the file holds no settings (it is empty or only comments)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def _schema_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _resolve_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls=None, prefix: str = "") -> list[str]:
    """Every settable dotted key of the schema."""
    keys = []
    for name, kind in _resolve_types(cls or RunConfig).items():
        if dataclasses.is_dataclass(kind):
            keys += all_keys(kind, f"{prefix}{name}.")
        elif (prefix or name not in ("name", "seed")):
            keys.append(prefix + name)
    return keys


def _unknown_key(source: str, dotted: str, candidates: list[str]) -> ConfigError:
    close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{source}: {dotted}: unknown key{hint}")


def _flatten(tree: dict, source: str, root: str = "", cls=None, prefix: str = "") -> dict:
    """Nested mapping -> {dotted schema key: (value, origin)}; unknown keys are errors.

    `root` is where the mapping sits in its file (e.g. 'runs.bs4.'), so errors quote the key as written.
    """
    cls = cls or RunConfig
    flat = {}
    types = _resolve_types(cls)
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in types or (cls is RunConfig and key in ("name", "seed")):
            candidates = all_keys() + ([] if root else sorted(_EXPERIMENT_KEYS))
            raise _unknown_key(source, root + dotted, [root + k for k in candidates])
        if dataclasses.is_dataclass(types[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {root}{dotted}: expected a mapping of {key} settings, got {value!r}")
            flat.update(_flatten(value, source, root, types[key], f"{dotted}."))
        else:
            origin = f"{source}: {root}{dotted}"
            flat[dotted] = (_typed(dotted, value, origin), origin)
    return flat


def _load_layers(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, dict, dict]:
    """(flat settings, experiment keys, flat run overrides by run name) of a file and its parents."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: extends itself through {' -> '.join(str(p) for p in chain)}")
    raw = _read_yaml(path)
    source = _display(path)
    flat, meta, runs = {}, {}, {}
    if "extends" in raw:
        parent = raw["extends"]
        if not isinstance(parent, str):
            raise ConfigError(f"{source}: extends: expected a file name, got {parent!r}")
        flat, meta, runs = _load_layers(path.parent / parent, chain + (path,))
    for key in _EXPERIMENT_VALUES:
        if key in raw:
            origin = f"{source}: {key}"
            meta[key] = (_experiment_value(key, raw[key], origin), origin)
    if "sweep" in raw:
        meta["sweep"] = (_sweep_points(raw["sweep"], f"{source}: sweep"), f"{source}: sweep")
    settings = {k: v for k, v in raw.items() if k not in _EXPERIMENT_KEYS}
    flat = _merge(flat, _flatten(settings, source))
    if "runs" in raw:
        listed = raw["runs"]
        if not isinstance(listed, dict) or not listed:
            raise ConfigError(f"{source}: runs: expected a mapping of run names to their settings")
        runs = {}
        for name, overrides in listed.items():
            if not isinstance(name, str) or not _RUN_NAME.match(name):
                raise ConfigError(f"{source}: runs.{name}: run names use letters, digits, '_', '-' and '.'")
            if overrides is not None and not isinstance(overrides, dict):
                raise ConfigError(f"{source}: runs.{name}: expected a mapping of settings, got {overrides!r}")
            runs[name] = _flatten(overrides or {}, source, root=f"runs.{name}.")
    return flat, meta, runs


def _sweep_points(block, origin: str) -> list[dict]:
    """The points of a `sweep:` block: `grid: {key: [values], ...}` (every combination) or
    `random: {n, seed, space}` (n distinct draws), each value typed by its key's schema."""
    if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in ("grid", "random"):
        raise ConfigError(f"{origin}: expected `grid: {{key: [values], ...}}` or `random: {{n: N, seed: S, space: "
                          f"{{key: ..., ...}}}}`, got {block!r}")
    kind, body = next(iter(block.items()))
    if kind == "grid":
        axes = parse_space(body, f"{origin}.grid", _typed, all_keys())
        ranged = [a.key for a in axes if a.kind != "choice"]
        if ranged:
            raise ConfigError(f"{origin}.grid.{ranged[0]}: a grid takes lists of values (draw from ranges with "
                              "`random:`, or search them with `search:`)")
        return grid_points(axes)
    if not isinstance(body, dict) or set(body) - {"n", "seed", "space"} or not {"n", "space"} <= set(body):
        raise ConfigError(f"{origin}.random: expected {{n: N, seed: S, space: {{key: ..., ...}}}} (seed optional), "
                          f"got {body!r}")
    n, seed = body["n"], body.get("seed", 0)
    for key, value in (("n", n), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "n" else 0):
            raise ConfigError(f"{origin}.random.{key}: expected an integer >= {1 if key == 'n' else 0}, got {value!r}")
    axes = parse_space(body["space"], f"{origin}.random.space", _typed, all_keys())
    return random_points(axes, n, seed, f"{origin}.random")


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------
# Typed values.

def _coerce(value, expected, origin: str):
    def fail(what: str):
        return ConfigError(f"{origin}: expected {what}, got {value!r}")

    if typing.get_origin(expected) is Literal:
        choices = typing.get_args(expected)
        if value is None and "" in choices:
            return ""
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{origin}: must be one of {', '.join(repr(c) for c in choices)}, got {value!r}{hint}")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise fail("a number")
        try:
            number = float(value)  # also strings: YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            raise fail("a number") from None
        except OverflowError:  # an integer with hundreds of digits
            raise fail("a finite number") from None
        if not math.isfinite(number):  # .inf, .nan, or strings such as "inf" that float() reads
            raise fail("a finite number")
        return number
    if expected is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if expected is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise fail("a mapping")
        return dict(value)
    if typing.get_origin(expected) is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            value = [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value
        if not isinstance(value, list) or not value:
            what = "value" if typing.get_origin(item_type) is Literal else item_type.__name__
            raise fail(f"a non-empty list of {what}s")
        return [_coerce(v, item_type, origin) for v in value]
    raise TypeError(f"unsupported schema type {expected}")


def _check_bounds(value, f: dataclasses.Field, origin: str):
    meta = f.metadata
    for bound, ok, words in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        b = meta.get(bound)
        if b is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            if not ok(v, b):
                raise ConfigError(f"{origin}: must be {words} {b}, got {v!r}")


def _typed(dotted: str, value, origin: str):
    """The value written for schema key `dotted` in one layer, typed and within the key's bounds."""
    cls = RunConfig
    *parents, name = dotted.split(".")
    for parent in parents:
        cls = _resolve_types(cls)[parent]
    value = _coerce(value, _resolve_types(cls)[name], origin)
    _check_bounds(value, _schema_fields(cls)[name], origin)
    return value


def _experiment_value(key: str, value, origin: str):
    """`seeds`, `stages`, `threads` or `experiment` as written in one layer, typed and checked (stage names are
    checked against the registry by the pipeline, which utils may not import)."""
    if key == "threads":
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{origin}: expected auto or a number of threads (1 or more), got {value!r}")
        return value
    if key == "stages":
        stages = _coerce(value, list[str], origin)
        if len(set(stages)) != len(stages):
            raise ConfigError(f"{origin}: each stage may be listed once, got {stages}")
        return stages
    if key == "seeds":
        seeds = _coerce(value, list[int], origin)
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ConfigError(f"{origin}: seeds must be distinct non-negative integers, got {seeds}")
        return seeds
    name = _coerce(value, str, origin)
    if not _RUN_NAME.match(name):
        raise ConfigError(f"{origin}: experiment names use letters, digits, '_', '-' and '.'")
    return name


def _build(cls, flat: dict, prefix: str = ""):
    """A schema object from typed flat values (defaults where no layer set a key)."""
    types = _resolve_types(cls)
    kwargs = {}
    for name in _schema_fields(cls):
        dotted = prefix + name
        if dataclasses.is_dataclass(types[name]):
            kwargs[name] = _build(types[name], flat, dotted + ".")
        elif dotted in flat:
            kwargs[name] = flat[dotted][0]
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------
# GPT-2 shapes for models trained from scratch.

# Shapes of the published GPT-2 family, for random-weight models of the same size.
ARCH_PRESETS = {
    "distilgpt2": {"n_layer": 6, "n_embd": 768, "n_head": 12, "n_positions": 1024},
    "gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024},
}


def check_scratch_config(cfg: ModelConfig, max_length: int) -> None:
    """Raise ValueError (one sentence) if cfg.config cannot build a GPT-2 for texts of max_length tokens."""
    from transformers import GPT2Config  # what a GPT-2 config may hold

    allowed = GPT2Config().to_dict()
    for key, value in cfg.config.items():
        if key not in allowed or key in ("vocab_size", "bos_token_id", "eos_token_id"):
            why = "is set from the tokenizer" if key in allowed else "is not a GPT2Config field"
            raise ValueError(f"{key!r} {why}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
    shape = {**allowed, **ARCH_PRESETS.get(cfg.arch, {}), **cfg.config}
    for key in ("n_layer", "n_embd", "n_head", "n_positions"):
        if not isinstance(shape[key], int) or isinstance(shape[key], bool) or shape[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {shape[key]!r}")
    if shape["n_embd"] % shape["n_head"]:
        raise ValueError(f"n_embd ({shape['n_embd']}) must be divisible by n_head ({shape['n_head']})")
    if shape["n_positions"] < max_length:
        raise ValueError(f"n_positions ({shape['n_positions']}) is shorter than data.max_length ({max_length})")


# ----------------------------------------------------------------------------------------------
# Command-line overrides and cross-field checks.

def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=0.01' -> ('train.lr', 0.01); the value is read as YAML, then typed by the schema."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set train.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _apply_overrides(flat: dict, meta: dict, overrides: list[str]) -> None:
    keys = all_keys()
    for text in overrides:
        key, value = parse_override(text)
        origin = f"--set {key}"
        if key in _EXPERIMENT_VALUES:
            meta[key] = (_experiment_value(key, value, origin), origin)
        elif key.startswith("model.config."):
            flat.setdefault("model.config", ({}, origin))
            merged = dict(flat["model.config"][0] or {})
            merged[key[len("model.config."):]] = value
            flat["model.config"] = (merged, origin)
        elif key not in keys:
            raise _unknown_key("--set", key, keys + list(_EXPERIMENT_VALUES))
        else:
            flat[key] = (_typed(key, value, origin), origin)


def _merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, (value, origin) in top.items():
        if key == "model.config" and key in merged and isinstance(value, dict) and isinstance(merged[key][0], dict):
            value = {**merged[key][0], **value}
        merged[key] = (value, origin)
    return merged


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~"))


def _check_run(run: RunConfig, flat: dict) -> None:
    def where(key: str) -> str:
        return flat[key][1] if key in flat else f"(default) {key}"

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", run.device):
        raise ConfigError(f"{where('device')}: must be auto, cpu, cuda or cuda:N, got {run.device!r}")
    if run.data.source == "local":
        if not run.data.path:
            raise ConfigError(f"{where('data.source')}: source 'local' needs data.path (a folder of text or parquet files)")
        if not Path(run.data.path).expanduser().is_dir():
            raise ConfigError(f"{where('data.path')}: folder not found: {run.data.path}")
    for key in ("model.name", "model.tokenizer"):
        value = getattr(run.model, key.split(".")[1])
        if value and _looks_like_path(value) and not Path(value).expanduser().exists():
            raise ConfigError(f"{where(key)}: folder not found: {value}")
    if run.model.arch and run.model.init != "scratch":
        raise ConfigError(f"{where('model.arch')}: a shape preset needs model.init: scratch")
    if run.model.init == "scratch":
        try:
            check_scratch_config(run.model, run.data.max_length)
        except ValueError as err:
            raise ConfigError(f"{where('model.config')}: {err}") from None
    if run.geometry.bootstrap == 1:
        raise ConfigError(f"{where('geometry.bootstrap')}: one resample has no spread; use 0 (no interval) or at least 2")
    if run.landscape.directions == "pca" and not run.train.trajectory.every:
        raise ConfigError(f"{where('landscape.directions')}: pca directions come from the training path; set "
                          "train.trajectory.every (e.g. 10) to save it")
    if len(set(run.train.track.metrics)) != len(run.train.track.metrics):
        raise ConfigError(f"{where('train.track.metrics')}: each metric may be listed once, got {run.train.track.metrics}")
    if run.model.adapter.type != "none" and run.train.rotation != "none":
        raise ConfigError(f"{where('train.rotation')}: a rotation of the weights and a LoRA adapter do not combine; "
                          "rotate full fine-tuning runs only")
    if run.model.adapter.type != "none" and run.landscape.space == "merged" and run.landscape.directions == "pca":
        raise ConfigError(f"{where('landscape.space')}: pca directions come from the adapter's trajectory; use "
                          "landscape.space: adapter with them")
    if len(run.train.betas) != 2:
        raise ConfigError(f"{where('train.betas')}: expected two numbers [beta1, beta2], got {run.train.betas}")
    if run.landscape.alpha_min >= run.landscape.alpha_max:
        raise ConfigError(f"{where('landscape.alpha_max')}: must be greater than landscape.alpha_min")
    if run.search.n_trials:
        if not run.search.space:
            raise ConfigError(f"{where('search.n_trials')}: a search needs search.space, e.g. "
                              "{train.lr: {loguniform: [1.0e-4, 1.0e-1]}}")
        axes = parse_space(run.search.space, where("search.space"), _typed,
                           [key for key in all_keys() if not key.startswith("search.")])
        points = grid_size(axes, run.search.grid_points)
        if run.search.sampler == "grid" and run.search.n_trials > points:
            raise ConfigError(f"{where('search.n_trials')}: the grid has {points} points, fewer than "
                              f"{run.search.n_trials} trials; lower n_trials or raise search.grid_points")
    if run.model.tokenizer in ("bytes", "bpe") and run.model.init == "pretrained":
        raise ConfigError(f"{where('model.tokenizer')}: a new tokenizer needs a model trained from scratch (model.init: scratch)")


def load_experiment(path: str | Path, overrides: list[str] = (), runs: list[str] | None = None) -> Experiment:
    """Read, merge, type and check an experiment file; `runs` keeps only the named runs (or, with a
    sweep, every run made from a named one)."""
    path = Path(path)
    flat, meta, run_layers = _load_layers(path)
    _apply_overrides(cli := {}, meta, list(overrides))
    seeds = meta["seeds"][0] if "seeds" in meta else [42]
    if "experiment" in meta:
        name = meta["experiment"][0]
    else:
        name = _experiment_value("experiment", path.stem, f"{_display(path)}: experiment (the file name)")
    layers, swept, made_from = _expand_sweep(run_layers or {"default": {}}, meta.get("sweep"))
    configs, wheres = [], {}
    for run_name, layer in layers.items():
        merged = _merge(_merge(flat, layer), cli)
        wheres[run_name] = merged["model.base_run"][1] if "model.base_run" in merged else "model.base_run"
        run = _build(RunConfig, merged)
        run = dataclasses.replace(run, name=run_name, seed=seeds[0])
        _check_run(run, merged)
        if run.search.n_trials and len(seeds) > 1:
            raise ConfigError(f"{meta['seeds'][1]}: a search trains each trial at one seed; list one seed and vary "
                              f"search.seed to repeat the search (run {run_name} searches)")
        configs.append(run)
    _check_base_runs(configs, wheres)
    stages = meta["stages"][0] if "stages" in meta else []
    threads = meta["threads"][0] if "threads" in meta else "auto"
    experiment = Experiment(name=name, source=path, seeds=seeds, runs=configs, stages=stages, threads=threads,
                            swept=swept)
    return _select(experiment, runs, made_from) if runs else experiment


def _check_base_runs(runs: list[RunConfig], wheres: dict[str, str]) -> None:
    """model.base_run names another run of the experiment, not a search, with no cycle, whose model settings
    (all but the adapter) are this run's: the architecture and tokenizer that the base's weights fit."""
    by_name = {run.name: run for run in runs}
    for run in runs:
        base, where = run.model.base_run, wheres[run.name]
        if not base:
            continue
        if base not in by_name:
            raise ConfigError(f"{where}: no run named {base!r} in this experiment (its runs: {', '.join(by_name)})")
        if by_name[base].search.n_trials:
            raise ConfigError(f"{where}: run {base!r} is a search, whose trials are not known in advance; name a run")
        chain = [run.name]
        while base:
            if base in chain:
                raise ConfigError(f"{where}: the runs start from each other in a circle: {' -> '.join(chain + [base])}")
            chain.append(base)
            base = by_name[base].model.base_run
        mine, theirs = dataclasses.asdict(run.model), dataclasses.asdict(by_name[run.model.base_run].model)
        for key in mine:
            if key not in ("adapter", "base_run") and mine[key] != theirs[key]:
                raise ConfigError(f"{where}: run {run.name}'s model.{key} is {mine[key]!r} but its base run "
                                  f"{run.model.base_run}'s is {theirs[key]!r}; a run keeps its base's model")


def _expand_sweep(run_layers: dict, sweep: tuple | None) -> tuple[dict, dict, dict]:
    """Run layers crossed with the sweep's points (run < point), named '<run>_<values>' ('<values>' alone
    for a file without `runs:`); each made run's swept values, and the file's run it was made from."""
    if sweep is None:
        return run_layers, {}, {name: name for name in run_layers}
    points, origin = sweep
    layers, swept, made_from = {}, {}, {}
    for run_name, layer in run_layers.items():
        for point in points:
            made = point_name(point) if run_name == "default" and len(run_layers) == 1 else f"{run_name}_{point_name(point)}"
            if made in layers:
                raise ConfigError(f"{origin}: two points make the same run name {made!r}; make their values differ more")
            values = {key: list(v) if isinstance(v, tuple) else v for key, v in point.items()}
            layers[made] = {**layer, **{key: (v, f"{origin}: {key}={format_value(v)}") for key, v in values.items()}}
            swept[made], made_from[made] = values, run_name
    return layers, swept, made_from


def _select(experiment: Experiment, names: list[str], made_from: dict[str, str]) -> Experiment:
    """The runs named by --runs: a run, or a run of the file that a sweep expanded (all its points). In an
    experiment that searches, other names may be trials: they are kept in `requested` until the trials are
    known (models.runs.with_trials)."""
    unknown = [n for n in names if n not in made_from and n not in made_from.values()]
    if unknown and not experiment.studies():
        known = [run.name for run in experiment.runs]
        listed = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        raise ConfigError(f"{_display(experiment.source)}: runs: no run named {unknown[0]!r} (runs: {listed}; "
                          "`run.py --config FILE --list` lists them)")
    keep = [run for run in experiment.runs if run.name in names or made_from[run.name] in names]
    return dataclasses.replace(experiment, runs=keep, requested=unknown,
                               swept={k: v for k, v in experiment.swept.items() if k in {r.name for r in keep}})


def search_axes(run: RunConfig) -> list:
    """The axes (config.space.Axis) of run.search.space, typed by the schema."""
    return parse_space(run.search.space, f"run {run.name}: search.space", _typed,
                       [key for key in all_keys() if not key.startswith("search.")])


def with_values(run: RunConfig, values: dict, name: str, origin: str) -> RunConfig:
    """`run` with dotted keys set to `values` (typed and checked, errors naming `origin`), renamed `name`."""
    flat = _flatten({k: v for k, v in run.to_dict().items() if k not in ("name", "seed")}, "the run's config")
    flat.update({key: (_typed(key, list(v) if isinstance(v, tuple) else v, f"{origin}: {key}"), f"{origin}: {key}")
                 for key, v in values.items()})
    made = dataclasses.replace(_build(RunConfig, flat), name=name, seed=run.seed)
    _check_run(made, flat)
    return made


def run_config_from_dict(data: dict) -> RunConfig:
    """Rebuild a RunConfig from `RunConfig.to_dict()` (as stored in checkpoints)."""
    flat = _flatten({k: v for k, v in data.items() if k not in ("name", "seed")}, "checkpoint config")
    run = _build(RunConfig, flat)
    return dataclasses.replace(run, name=data.get("name", run.name), seed=data.get("seed", run.seed))
