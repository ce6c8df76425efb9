"""The `prune` stage: how a LoRA run's perplexity degrades as its adapter weights are zeroed.

For every trained LoRA run (model.adapter; other runs are skipped), in its run folder, prune.json holds
for each fraction p of prune.fractions the validation and test loss and perplexity of the adapter with
the fraction p of its weights zeroed (optimization.pruning):
  magnitude   the smallest |w| (prune.scope: global or per-matrix)
  random      prune.random_seeds random masks (their mean ± standard error is drawn by the report)
  lambda_max  the top Hessian eigenvalue of the pruned adapter (magnitude masks at prune.lambda_max_fractions)
              on the sharpness measurement set, with the sharpness stage's Lanczos settings
  rewind      with prune.rewind: the lottery-ticket test; the kept weights reset to their initial values
              (init.pt) and retrained with the mask for prune.rewind_epochs at each of prune.rewind_fractions
The losses are taken on the training's own validation and test batches, so p = 0 reproduces metrics.json.
prune.json records its settings and weights and is computed again when they change.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from data.batches import fixed_batches, tokenize
from optimization.curvature import lanczos
from optimization.evaluation import perplexity
from optimization.measured_run import Result, TrainedRun, measure_runs, measured_runs, sharpness_settings
from optimization.objective import Objective
from optimization.pruning import flat_mask, magnitude_masks, pruned_fraction, random_masks, retrain_masked
from config.schema import Experiment, section_settings
from utils.progress import progress


def prune_results(trained: TrainedRun) -> list[Result]:
    """prune.json of a LoRA run: it depends on the prune section and, as its λ_max is measured on the sharpness
    measurement set with the sharpness solver settings, on those of sharpness.json."""
    if trained.run.model.adapter.type == "none":
        print(f"{trained.label}: not a LoRA run (model.adapter.type none); nothing to prune")
        return []
    settings = {**section_settings(trained.run, "prune"), "sharpness": sharpness_settings(trained.run)}
    return [trained.result("prune.json", settings, "pruning")]


def measure_pruning(trained: TrainedRun, result: Result) -> None:
    start = time.perf_counter()
    measured = prune_run(trained)
    result.write({**measured, "seconds": time.perf_counter() - start})
    worst = measured["magnitude"][-1]
    print(f"{trained.label}: pruning done; val perplexity {measured['magnitude'][0]['val_perplexity']:.2f} unpruned, "
          f"{worst['val_perplexity']:.2f} with {worst['pruned_fraction']:.0%} of the adapter zeroed by magnitude")


def prune_stage(experiment: Experiment, output: Path, force: bool) -> None:
    measure_runs(measured_runs(experiment, output), force, prune_results,
                 lambda trained, todo: measure_pruning(trained, todo[0]))


def prune_run(trained_run: TrainedRun) -> dict:
    run, label = trained_run.run, trained_run.label
    trained = trained_run.load()
    tokenizer, pad_id = trained.tokenizer, trained.tokenizer.eos_token_id
    texts = trained_run.texts
    splits = {"val": texts.validation, "test": texts.test}
    evaluation = {name: Objective(trained.model, fixed_batches(tokenize(split, tokenizer, run.data.max_length),
                                                                run.train.eval_batch_size, pad_id))
                  for name, split in splits.items()}
    mover = evaluation["val"]  # the objectives share the model: moving one moves all
    params, base = list(mover.params), mover.base
    cfg = run.prune

    def zeroing(masks) -> torch.Tensor:
        """The move from the trained adapter to the adapter with the masked weights zeroed."""
        return -base * ~flat_mask(masks).to(base.device)

    def losses_with(masks) -> dict:
        """Validation and test losses with the masked weights zeroed (then the weights are put back)."""
        with mover.moved([1.0], [zeroing(masks)]):
            values = {name: objective.loss() for name, objective in evaluation.items()}
        return {"pruned_fraction": pruned_fraction(masks), "val_loss": values["val"],
                "val_perplexity": perplexity(values["val"]), "test_loss": values["test"],
                "test_perplexity": perplexity(values["test"])}

    result = {"n_weights": mover.dim, "magnitude": [], "random": [], "lambda_max": [], "rewind": []}
    for fraction in progress(cfg.fractions, desc=f"{label} pruning"):
        result["magnitude"].append({"fraction": fraction, **losses_with(magnitude_masks(params, fraction, cfg.scope))})
        result["random"].append({"fraction": fraction, "seeds": [
            {"seed": seed, **losses_with(random_masks(params, fraction, cfg.scope, seed))} for seed in range(cfg.random_seeds)]})

    # reverse-over-reverse HVPs whatever sharpness.hvp says, as this stage has always taken them (the modes round apart)
    measurement = Objective(trained.model, trained_run.measurement_set(trained).batches,
                            graph_memory=run.sharpness.graph_memory)
    for fraction in cfg.lambda_max_fractions:
        masks = magnitude_masks(params, fraction, cfg.scope)
        with mover.moved([1.0], [zeroing(masks)]):
            with progress(total=run.sharpness.max_iter, desc=f"{label} λ_max at {fraction:g} pruned") as bar:
                eigen = lanczos(measurement.hvp, measurement.dim, max_iter=run.sharpness.max_iter, tol=run.sharpness.tol,
                                seed=run.sharpness.seed, device=measurement.device, dtype=base.dtype, progress=bar,
                                bottom=False)
            result["lambda_max"].append({"fraction": fraction, "pruned_fraction": pruned_fraction(masks),
                                         "lambda_max": eigen.lambda_max, "converged": eigen.top[0].converged,
                                         "hvps": eigen.matvecs, "base_loss": measurement.loss()})

    if cfg.rewind:
        init = trained_run.load(name="init.pt").model
        initial = mover.flatten([p.detach() for p in init.parameters() if p.requires_grad])
        sequences = tokenize(texts.train, tokenizer, run.data.max_length)
        for fraction in cfg.rewind_fractions:
            masks = magnitude_masks(params, fraction, cfg.scope)
            keep = flat_mask(masks).to(base.device)
            with mover.moved([1.0], [initial * keep - base]):  # the kept weights back at their start
                step_losses = retrain_masked(trained.model, params, masks, run.train, sequences, [len(s) for s in sequences],
                                             run.data.order, run.seed, cfg.rewind_epochs, pad_id,
                                             desc=f"{label} rewind at {fraction:g}")
                weights = mover.flatten([p.detach() for p in params])
                values = {name: objective.loss() for name, objective in evaluation.items()}
            result["rewind"].append({
                "fraction": fraction, "pruned_fraction": pruned_fraction(masks), "epochs": cfg.rewind_epochs,
                "val_loss": values["val"], "val_perplexity": perplexity(values["val"]), "test_loss": values["test"],
                "test_perplexity": perplexity(values["test"]), "final_step_loss": step_losses[-1],
                "pruned_weights_nonzero": int((weights[~keep] != 0).sum())})  # 0: the mask survived retraining
    return result
