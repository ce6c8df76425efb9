"""The typed schema of an experiment's settings: a dataclass per config section, each field an `option` with a
default, a one-line description, numeric bounds, and marks of which results it can change (section_settings).

Reading experiment files into these objects: config.loading; the checks of values and across keys: config.checks;
the reference of every key: docs/config.md (config.docs).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


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
    target_modules: list[str] = option(["c_attn", "c_proj", "c_fc"], "module names that get an adapter (default: GPT-2's "
                                       "Conv1D layers; other architectures: peft's defaults, e.g. llama q_proj, v_proj)")


@dataclass
class ModelConfig:
    name: str = option("distilgpt2", "hub id or local folder of a causal LM (init: pretrained)")
    revision: str = option("", "hub revision of model.name: a branch, tag or commit, e.g. Pythia's step1000 ('': the "
                               "default branch)", added=True)
    init: Literal["pretrained", "scratch"] = option("pretrained", "load weights, or initialise randomly")
    arch: Literal["", "distilgpt2", "gpt2"] = option("", "GPT-2 shape preset for init: scratch")
    config: dict = option({}, "config fields for init: scratch (override the arch preset); model_type (default "
                              "gpt2) picks any transformers causal LM: llama, gpt_neox, qwen2, …")
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
        "lambda_max | preconditioned_lambda_max (of P^-1/2 H P^-1/2, Adam family and adahessian only) | trace "
        "(Hutchinson)")
    iters: int = option(40, "Lanczos steps per point at most (each one HVP; points after the first warm-started from "
                              "the last one's top two vectors, 2 HVPs more; at most 10 cannot converge a first point)",
                        ge=2)
    tol: float = option(1e-3, "a λ has converged when its residual is within tol·|λ_max| and, at the first point, it "
                              "moved by at most that over max(10, m/2) of its m Lanczos steps (the sharpness stage's "
                              "rule); at a warm point, once its exploration settled (optimization/tracking.py); a "
                              "warm point whose residual stops falling above it (the HVPs' rounding) stops, _stalled",
                        gt=0)
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
    optimizer: str = option(
        "sgd", "sgd | adam | adamw | signsgd (signum) | adasgd (one second moment per group) | blockadam (one per "
               "tensor) | nadam | radam | adafactor | lion | adahessian | soap | shampoo | muon | torch.<Class> "
               "(any torch.optim optimizer; docs/experiments/exp4-geometry.md)")
    optimizer_args: dict = option({}, "further arguments of the optimizer's class by name, e.g. {nesterov: true}, "
                                      "or options it takes through **kwargs (lion: {cautious: true}) (train.lr, "
                                      "momentum, betas, eps, weight_decay set their own)", added=True)
    lr: float = option(1e-3, "learning rate", gt=0)
    momentum: float = option(0.0, "momentum of sgd, signsgd, muon and shampoo", ge=0, lt=1)
    betas: list[float] = option([0.9, 0.999], "first- and second-moment decay of the Adam family", ge=0, lt=1,
                                added=True)
    eps: float = option(1e-8, "added to the Adam family's root second moment", gt=0, added=True)
    weight_decay: float = option(0.0, "weight decay (L2 in the gradient for sgd and adam; decoupled for the others)", ge=0)
    rotation: Literal["none", "global", "per-layer"] = option(
        "none", "train θ̃ with θ = Rθ̃ for a random rotation R of all weights (global) or of each layer's", added=True)
    rotation_seed: int = option(0, "draws the training rotation", ge=0, added=True)
    batch_size: int = option(8, "texts per step", ge=1)
    epochs: int = option(60, "passes over the training texts (0: measure the initial weights as they are)", ge=0)
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
    graph_memory: float = option(0.25, "share of the memory free at an HVP in which reverse-mode HVPs keep each batch's "
                                 "gradient graph for the next products at the same weights (each then skips the forward "
                                 "and backward: 1.8 instead of 3 gradients); 0: build it for every product", ge=0, le=1,
                                 result=False)
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
class ReportConfig:
    prices: bool = option(False, "price every run in dollars (config/prices.yaml) in the report's Cost section; "
                                 "without it only runs that trained on a GPU are priced", result=False)


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
    report: ReportConfig = field(default_factory=ReportConfig)

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


@functools.cache
def field_types(cls) -> dict:
    """A schema dataclass's fields and their types (typing.get_type_hints, resolved once per class: configs are read
    thousands of times a report)."""
    return typing.get_type_hints(cls)


def all_keys(cls=None, prefix: str = "") -> list[str]:
    """Every settable dotted key of the schema."""
    keys = []
    for name, kind in field_types(cls or RunConfig).items():
        if dataclasses.is_dataclass(kind):
            keys += all_keys(kind, f"{prefix}{name}.")
        elif (prefix or name not in ("name", "seed")):
            keys.append(prefix + name)
    return keys

