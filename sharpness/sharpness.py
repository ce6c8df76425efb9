"""Sharpness of a minimum, every quantity on the same measurement set (one `Objective`).

Every value is a relative increase of the loss in percent, 100·(L(θ+δ) − L(θ))/L(θ).

eps_sharpness   the study's eq. (1), one-sided: δ = εv for v = ± the top Hessian eigenvector (the larger of
                the two) and for random unit directions (max and mean). It carries the first-order term ε·gᵀv,
                which dominates at small ε. Next to it the symmetric difference (L(θ+εd) + L(θ−εd))/2 − L(θ),
                in which the odd terms cancel: it measures curvature, ½ε²·dᵀHd + O(ε⁴), and is reported with
                that prediction (one HVP per direction).
taylor_check    eq. (2): the one-sided increase along the eigenvector against its second-order prediction
                (ε·gᵀv + ½ε²·vᵀHv)/L, with g and H·v computed exactly.
worst_case      max over the ball of L(θ+δ) − L(θ), δ = s⊙u with ||u||₂ ≤ ε: s = 1 (ℓ2 ball) or s = |θ|
                ('adaptive', Kwon et al. 2021; Andriushchenko et al. 2023), which no reparametrization of the
                kind Dinh et al. (2017) use can make arbitrarily sharp. Projected normalized-gradient ascent on u
                from u = ε·v (δ ∝ |θ|⊙v in the adaptive ball), v the eigenvector's best sign.

Resolution. Each token's loss is computed in the model's dtype (fp32 in the pipeline) and the token losses
are summed in float64 (optimization.evaluation). Rounding still gives L a relative error of the order of the
dtype's machine epsilon. With fp32 sums, a difference of losses was off against float64 by up to 1.0 eps·L
on DistilGPT2's shape at random weights and 2.3 eps·L on a tiny model that had memorized its texts
(L = 0.02); float64 sums cut the error on a tiny model at random weights from 0.2 to 0.004 eps·L, while
on the memorizing one each token's own rounding remains the larger part. A measured value of at most
RESOLUTION_EPS machine epsilons (`loss_resolution_pct`) may be rounding: it is reported as None and its
key listed under `below_resolution`, rather than printed as a number. So is a Taylor difference that small.
"""

from __future__ import annotations

import math

import torch

from optimization.objective import Objective

RESOLUTION_EPS = 8  # machine epsilons of relative loss change that rounding can produce (3x the largest measured)
MEASURED = ("eigvec", "random_max", "random_mean", "eigvec_symmetric_pct", "random_symmetric_mean_pct",
            "random_symmetric_max_pct")  # the loss differences of eps_sharpness; the rest are predictions


def loss_resolution_pct(dtype: torch.dtype) -> float:
    """Relative loss changes (in %) up to this size may be rounding in `dtype`."""
    return 100.0 * RESOLUTION_EPS * torch.finfo(dtype).eps


def _resolved(values: dict, measured: tuple[str, ...], resolution_pct: float) -> dict:
    """`values` with every measured entry of size at most `resolution_pct` set to None and named in below_resolution."""
    below = [key for key in measured if values[key] is not None and abs(values[key]) <= resolution_pct]
    return {**values, **{key: None for key in below}, "below_resolution": below}


def relative_increase_pct(objective: Objective, base_loss: float, direction: torch.Tensor, eps: float) -> float:
    with objective.moved([eps], [direction]):
        loss = objective.loss()
    return 100.0 * (loss - base_loss) / base_loss


def random_unit_directions(like: torch.Tensor, count: int, seed: int) -> list[torch.Tensor]:
    """Gaussian directions of unit norm, shaped, typed and placed like `like`."""
    generator = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(count):
        d = torch.randn(like.numel(), generator=generator, dtype=torch.float64).to(like)
        directions.append(d / d.norm())
    return directions


def curvatures(objective: Objective, directions: list[torch.Tensor]) -> list[float]:
    """dᵀHd for each direction, one HVP each."""
    return [float(d @ objective.hvp(d)) for d in directions]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def eps_sharpness(objective: Objective, base_loss: float, eps: float, eigenvector: torch.Tensor,
                  eigvec_curvature: float, random_directions: list[torch.Tensor] = (),
                  random_curvatures: list[float] = ()) -> dict:
    """One-sided (the study's) and symmetric relative increases at radius `eps`; curvatures are dᵀHd."""
    def predicted_pct(curvature: float) -> float:
        return 100.0 * 0.5 * eps**2 * curvature / base_loss

    plus = relative_increase_pct(objective, base_loss, eigenvector, eps)
    minus = relative_increase_pct(objective, base_loss, eigenvector, -eps)
    one_sided, symmetric = [], []
    for d in random_directions:
        up, down = relative_increase_pct(objective, base_loss, d, eps), relative_increase_pct(objective, base_loss, d, -eps)
        one_sided.append(up)
        symmetric.append((up + down) / 2)
    predicted = [predicted_pct(c) for c in random_curvatures]
    at_max = max(range(len(symmetric)), key=symmetric.__getitem__, default=None)
    values = {
        "eigvec": max(plus, minus),
        "eigvec_sign": 1 if plus >= minus else -1,
        "random_max": max(one_sided, default=None),
        "random_mean": _mean(one_sided),
        "eigvec_symmetric_pct": (plus + minus) / 2,
        "eigvec_symmetric_predicted_pct": predicted_pct(eigvec_curvature),
        "random_symmetric_mean_pct": _mean(symmetric),
        "random_symmetric_mean_predicted_pct": _mean(predicted),
        "random_symmetric_max_pct": None if at_max is None else symmetric[at_max],
        "random_symmetric_max_predicted_pct": None if at_max is None else predicted[at_max],
    }
    return _resolved(values, MEASURED, loss_resolution_pct(objective.base.dtype))


def taylor_check(base_loss: float, gradient: torch.Tensor, direction: torch.Tensor, curvature: float, eps: float,
                 measured_pct: float | None) -> dict:
    """`curvature` is vᵀHv for the unit `direction`. A measured value below resolution (None) is not compared,
    and a difference within the resolution (they agree as far as the loss can tell) is not printed either."""
    predicted = 100.0 * (eps * float(gradient @ direction) + 0.5 * eps**2 * curvature) / base_loss
    if measured_pct is None:  # the measurement itself is below resolution, and so is any difference to it
        return {"measured_pct": None, "predicted_pct": predicted, "abs_diff_pct": None,
                "below_resolution": ["measured_pct", "abs_diff_pct"]}
    values = {"measured_pct": measured_pct, "predicted_pct": predicted, "abs_diff_pct": abs(measured_pct - predicted)}
    return _resolved(values, ("abs_diff_pct",), loss_resolution_pct(gradient.dtype))


def worst_case(objective: Objective, base_loss: float, start: torch.Tensor, eps: float, steps: int, ball: str,
               progress=None) -> dict:
    """Projected gradient ascent on u, with δ = s ⊙ u and ||u||₂ ≤ ε (s = 1, or |θ| for 'adaptive').

    It starts at u = ε·start on the weights that can move (a zero weight stays zero in the adaptive ball,
    so u spends none of its norm there). The value is the largest loss seen, the start included."""
    scale = objective.base.abs() if ball == "adaptive" else torch.ones_like(objective.base)
    u = start * (scale > 0)
    u = eps * u / u.norm()
    step = 2.0 * eps / max(steps, 1)
    best = -math.inf
    for _ in range(steps):
        objective.move_to([1.0], [scale * u])
        loss, grad = objective.loss_and_grad()
        best = max(best, loss)
        grad_u = scale * grad
        if grad_u.norm() > 0:
            u = u + step * grad_u / grad_u.norm()
            u = u * min(1.0, eps / float(u.norm()))
        if progress is not None:
            progress.update(1)
    objective.move_to([1.0], [scale * u])
    best = max(best, objective.loss())
    objective.restore()
    value = {"value_pct": 100.0 * (best - base_loss) / base_loss, "steps": steps, "ball": ball}
    return _resolved(value, ("value_pct",), loss_resolution_pct(objective.base.dtype))
