"""Sharpness along training (train.track): the Hessian of the loss on the run's measurement set (the one the
sharpness stage uses), every N optimizer steps and before the first, written to track.json in the run folder.

lambda_max                 λ_max(H) by Lanczos. Gradient descent with step η is stable on a quadratic while it is
                           below 2/η ((2 + 2β)/η with heavy-ball momentum β): Cohen et al. (ICLR 2021) find that
                           full-batch GD sharpens until λ_max reaches it and then hovers there, the "edge of
                           stability". This is the threshold drawn for sgd; other optimizers have none for λ_max
                           (none is defined for sign methods, Muon, Shampoo/SOAP: track.json's threshold_basis
                           says which limit is drawn or why none is).
preconditioned_lambda_max  λ_max(P^-1/2 H P^-1/2) with P = (1 − β₁^(t+1))·(√v̂ + ε), the matrix by which the Adam
                           family divides its momentum in its next step (t steps taken; see
                           optimization.optimizers.diagonal_preconditioner; for a rotated run, in the optimizer's
                           coordinates: P^-1/2 RᵀHR P^-1/2). Adam with step η and β₁ is stable on a quadratic with
                           a frozen P while it is below (2 + 2β₁)/((1 − β₁)η), 38/η at β₁ = 0.9 (Cohen et al. 2022,
                           "Adaptive gradient methods at the edge of stability"). Measured for adam, adamw, adasgd
                           and blockadam, from their first step on; for adahessian too, with its P = (1 − β₁^(t+1))·
                           (v̂^(k/2) + ε), v̂ the bias-corrected average of its squared Hutchinson diag-H estimates
                           (optimization.optimizers.adahessian_preconditioner): its update has Adam's recurrence with
                           that P, so the frozen-P limit is the same.
trace                      tr(H) by Hutchinson's estimator (the same Rademacher vectors at every point), with its
                           standard error.

Convergence. The first point is Lanczos from a random start, called converged by the sharpness stage's
rule (optimization.curvature: residual within tol·s and no move over max(10, m/2) of its m steps) and
recorded with its true residual ‖Hx − λx‖ (one more HVP). A Ritz value is a lower bound of λ_max and no
rule can see a direction the Krylov space has not met, so how a later point meets a direction that overtook
the old top one decides whether a crossing is found. Every later point is warm (optimization.curvature.
warm_eigenpair): Rayleigh–Ritz on the previous point's top WARM_VECTORS Ritz vectors, grown by the Krylov
space of H deflated of them from a fresh random vector until that exploration settles (its top Ritz value
rises by at most GAP_SHARE of its distance below λ), then by the top pair's residual until it is within
tol·s (measured from the kept products, no extra HVP). A direction that overtook the old top ones is the
deflated operator's top, far above the rest of its spectrum, so the exploration finds it in a few steps
however close it is to the old top eigenvalue; the warm start before this one (the old top vector plus an
equal random share in one Krylov space) had to tell the two apart, missed 2 in 40 risers 0.3% above, and
needed a cold point every fourth. bench/tracking_misses.py: on 40 synthetic crossings per gap the rule
before issue 21 missed every crossing up to 10% after 4 HVPs; this one misses none from 0.3% up, and where
nothing crosses takes 8.2 HVPs a point against a cold start's 18.9 (2.3×). On the tiny model along AdamW
training (bench/tracking_speed.py) it takes 15.8 against 20.2 at lr 5e-5 and 17.6 against 20.4 at 3e-4
(1.2–1.3×, what issue 21's tracker took): there both halves cost, the exploration settling slowly and
the refinement of a top vector that moves between points (bench/README.md).

Training does not see the measurement: the model is measured in eval mode (no dropout draws) with random
vectors from generators of its own, so the weights, the data order and every RNG stream are the same with
and without tracking (tests/unit/optimization/test_tracking.py). The tracker's state (its points and warm-start vectors) is
saved in last.pt, so a resumed run continues the track without gaps or repeats. Its time is not counted in
the training time; metrics.json reports it under `track`.
"""

from __future__ import annotations

import time

import torch

from optimization.optimizers import ADAM_FAMILY, PRECONDITIONED
from optimization.curvature import hutchinson_trace, lanczos, warm_eigenpair
from config.schema import TrackConfig, TrainConfig

WARM_VECTORS = 2  # the previous point's top Ritz vectors a warm point starts from (bench/tracking_misses.py)
GAP_SHARE = 0.05  # a warm point stops once its exploration rises by at most this share of its distance below λ


NO_THRESHOLD = {  # why a tracked λ has no drawn limit for these optimizers (the literature defines none)
    "signsgd": "a sign update's step does not shrink with the gradient, so no λ bounds its stability on a quadratic",
    "lion": "a sign update's step does not shrink with the gradient, so no λ bounds its stability on a quadratic",
    "muon": "its orthogonalized update has a fixed spectral norm; no stability limit on λ_max is established",
    "shampoo": "no stability limit on λ_max of its Kronecker-factored preconditioned Hessian is established",
    "soap": "no stability limit on λ_max of its Kronecker-factored preconditioned Hessian is established",
}


def gd_threshold(train: TrainConfig, lr: float) -> float | None:
    """The step-size stability limit on λ_max(H): (2 + 2β)/η for sgd with momentum β (β = 0: 2/η); None otherwise
    (and at η = 0, the end of a cosine schedule, where every λ is stable). With train.optimizer_args (nesterov,
    dampening, …) the update is not the one the limit was derived for: None."""
    plain_sgd = train.optimizer == "sgd" and not train.optimizer_args
    return (2 + 2 * train.momentum) / lr if plain_sgd and lr > 0 else None


# AdaHessian's optimizer_args that shape only its P (optimization.optimizers.adahessian_preconditioner) or its weight
# decay (as train.weight_decay does Adam's): the update stays m ← β₁m + (1 − β₁)g, θ ← θ − ηP⁻¹m (not so: maximize).
ADAHESSIAN_SAME_UPDATE = ("hessian_power", "update_period", "num_samples", "hessian_distribution", "adam_debias",
                          "weight_decouple", "fixed_decay", "foreach")


def preconditioned_limit_holds(train: TrainConfig) -> bool:
    """Whether the update is the one the preconditioned limit was derived for: the Adam family set by train.* alone
    (amsgrad's preconditioner is another), or AdaHessian with options from ADAHESSIAN_SAME_UPDATE."""
    if train.optimizer == "adahessian":
        return set(train.optimizer_args) <= set(ADAHESSIAN_SAME_UPDATE)
    return train.optimizer in ADAM_FAMILY and not train.optimizer_args


def adam_threshold(train: TrainConfig, lr: float) -> float | None:
    """The limit on λ_max(P^-1/2 H P^-1/2) for the Adam family and AdaHessian: (2 + 2β₁)/((1 − β₁)η); None otherwise
    (preconditioned_limit_holds)."""
    beta1 = train.betas[0]
    return (2 + 2 * beta1) / ((1 - beta1) * lr) if preconditioned_limit_holds(train) and lr > 0 else None


def threshold_basis(train: TrainConfig) -> str:
    """Where the drawn limit comes from, or why there is none: what track.json says beside the points."""
    if (train.optimizer == "sgd" and train.optimizer_args) or \
            (train.optimizer in PRECONDITIONED and not preconditioned_limit_holds(train)):
        return "none: train.optimizer_args change the update the limit was derived for"
    if train.optimizer == "sgd":
        return "(2 + 2β)/η on λ_max: gradient descent with heavy-ball momentum β on a quadratic (Cohen et al. 2021)"
    if train.optimizer == "adahessian":
        return ("(2 + 2β₁)/((1 − β₁)η) on the preconditioned λ_max, P = (1 − β₁^(t+1))·(v̂^(k/2) + ε) from its "
                "Hessian-diagonal estimates, frozen: the limit Cohen et al. (2022) derive for Adam holds for any "
                "frozen diagonal P under this momentum; that AdaHessian trains at this edge is not established; none "
                "on λ_max")
    if train.optimizer in ADAM_FAMILY:
        return ("(2 + 2β₁)/((1 − β₁)η) on the preconditioned λ_max, P frozen (Cohen et al. 2022); none on λ_max")
    return "none: " + NO_THRESHOLD.get(train.optimizer, "the literature defines no stability limit for this optimizer")


def tracked_metrics(cfg: TrackConfig, train: TrainConfig) -> list[str]:
    """The metrics of train.track.metrics that this optimizer has (the preconditioned one needs a diagonal P: the
    Adam family, AdaHessian)."""
    return [m for m in cfg.metrics if m != "preconditioned_lambda_max" or train.optimizer in PRECONDITIONED]


class SharpnessTracker:
    """Measures a model's Hessian at the steps train.track asks for, and keeps what it found."""

    def __init__(self, cfg: TrackConfig, train: TrainConfig, state: dict | None = None):
        self.cfg, self.train = cfg, train
        self.metrics = tracked_metrics(cfg, train)
        state = state or {}
        self.points: list[dict] = list(state.get("points", []))
        self.warm: dict[str, torch.Tensor] = dict(state.get("warm", {}))  # metric -> last top Ritz vectors (rows, CPU)
        self.seconds: float = state.get("seconds", 0.0)
        self.hvps: int = state.get("hvps", 0)

    def due(self, step: int) -> bool:
        return self.cfg.every > 0 and step % self.cfg.every == 0

    def state_dict(self) -> dict:
        return {"points": self.points, "warm": {k: v.cpu() for k, v in self.warm.items()}, "seconds": self.seconds,
                "hvps": self.hvps}

    def measure(self, step: int, lr: float, objective, preconditioner: torch.Tensor | None = None,
                rotation=None) -> dict:
        """One point of the track at the objective's current weights. `objective` has hvp(v), dim and base (an
        optimization.objective.Objective); `preconditioner` is the optimizer's P over the same coordinates (None
        before its first step), `rotation` a rotated run's R (optimization.rotation.Rotation)."""
        start, hvps_before = time.perf_counter(), objective.hvp_count
        point = {"step": step, "lr": lr, "threshold": gd_threshold(self.train, lr)}
        if "lambda_max" in self.metrics:
            point.update(self._top("lambda_max", objective.hvp, objective))
        if "preconditioned_lambda_max" in self.metrics:
            point["preconditioned_threshold"] = adam_threshold(self.train, lr)
            if preconditioner is None:
                point["preconditioned_lambda_max"] = None  # no second moment yet
            else:
                scale = preconditioner.rsqrt().to(objective.base)

                def preconditioned(v: torch.Tensor) -> torch.Tensor:
                    x = scale * v
                    if rotation is None:
                        return scale * objective.hvp(x)
                    return scale * rotation.transpose(objective.hvp(rotation.apply(x)))

                point.update(self._top("preconditioned_lambda_max", preconditioned, objective))
        if "trace" in self.metrics:
            trace = hutchinson_trace(objective, self.cfg.trace_samples, self.cfg.seed)
            point.update(trace=trace["mean"], trace_se=trace["stderr"])
        point["hvps"] = objective.hvp_count - hvps_before
        point["seconds"] = time.perf_counter() - start
        self.points.append(point)
        self.hvps += point["hvps"]
        self.seconds += point["seconds"]
        return point

    def _top(self, metric: str, matvec, objective) -> dict:
        index, warm = len(self.points), self.warm.get(metric)
        generator = torch.Generator().manual_seed(self.cfg.seed + index)  # the first point: lanczos's own seed
        random = torch.randn(objective.dim, generator=generator, dtype=torch.float64)
        hvps_before = objective.hvp_count
        if warm is None:
            result = lanczos(matvec, objective.dim, k=1, max_iter=self.cfg.iters, tol=self.cfg.tol,
                             device=objective.base.device, dtype=objective.base.dtype, bottom=False,
                             true_residuals=True, start=random, vectors=WARM_VECTORS)
        else:  # atleast_2d: a last.pt written before warm points kept WARM_VECTORS holds one vector
            result = warm_eigenpair(matvec, torch.atleast_2d(warm), random.to(objective.base),
                                    max_iter=self.cfg.iters, tol=self.cfg.tol, gap_share=GAP_SHARE,
                                    vectors=WARM_VECTORS)
        self.warm[metric] = torch.stack(result.vectors).detach().cpu()
        return {metric: result.lambda_max, f"{metric}_converged": result.top[0].converged,
                f"{metric}_stalled": result.top[0].stalled,  # stopped short of tol at the products' rounding
                f"{metric}_residual": result.top[0].residual, f"{metric}_start": "cold" if warm is None else "warm",
                f"{metric}_hvps": objective.hvp_count - hvps_before}

    def record(self) -> dict:
        """What track.json holds."""
        return {"metrics": self.metrics, "every": self.cfg.every, "optimizer": self.train.optimizer,
                "threshold_basis": threshold_basis(self.train),
                "points": self.points, "hvps": self.hvps, "seconds": self.seconds}
