"""Sharpness of a minimum, every quantity on the same measurement set (one `Objective`).

eps_sharpness   the study's eq. (1): 100·(L(θ+εv) − L(θ))/L(θ) for v = ± the top Hessian eigenvector
                (the larger of the two) and for random unit directions (max and mean).
taylor_check    eq. (2): the measured relative increase along the eigenvector against its
                second-order prediction (ε·gᵀv + ½ε²·vᵀHv)/L, with g and H·v computed exactly.
worst_case      max over the ball of L(θ+δ) − L(θ), δ = s⊙u with ||u||₂ ≤ ε: s = 1 (ℓ2 ball) or s = |θ|
                ('adaptive', Kwon et al. 2021; Andriushchenko et al. 2023), which no reparametrization of the
                kind Dinh et al. (2017) use can make arbitrarily sharp. Projected normalized-gradient ascent on u
                from u = ε·v (δ ∝ |θ|⊙v in the adaptive ball), v the eigenvector's best sign.
hutchinson_trace  tr(H) ≈ mean of zᵀHz over Rademacher vectors z, with its standard error.
"""

from __future__ import annotations

import math

import torch

from optimization.objective import Objective


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


def eps_sharpness(objective: Objective, base_loss: float, eigenvector: torch.Tensor, eps: float,
                  random_directions: list[torch.Tensor]) -> dict:
    plus = relative_increase_pct(objective, base_loss, eigenvector, eps)
    minus = relative_increase_pct(objective, base_loss, -eigenvector, eps)
    randoms = [relative_increase_pct(objective, base_loss, d, eps) for d in random_directions]
    return {
        "eigvec": max(plus, minus),
        "eigvec_sign": 1 if plus >= minus else -1,
        "random_max": max(randoms) if randoms else None,
        "random_mean": sum(randoms) / len(randoms) if randoms else None,
    }


def taylor_check(base_loss: float, gradient: torch.Tensor, direction: torch.Tensor, curvature: float, eps: float,
                 measured_pct: float) -> dict:
    """`curvature` is vᵀHv for the unit `direction` (the eigenvalue when v is an exact eigenvector)."""
    predicted = 100.0 * (eps * float(gradient @ direction) + 0.5 * eps**2 * curvature) / base_loss
    return {"measured_pct": measured_pct, "predicted_pct": predicted, "abs_diff_pct": abs(measured_pct - predicted)}


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
    return {"value_pct": 100.0 * (best - base_loss) / base_loss, "steps": steps, "ball": ball}


def hutchinson_trace(objective: Objective, samples: int, seed: int, progress=None) -> dict:
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (objective.dim,), generator=generator) * 2 - 1).to(objective.base)
        values.append(float(z @ objective.hvp(z)))
        if progress is not None:
            progress.update(1)
    values_t = torch.tensor(values, dtype=torch.float64)
    stderr = float(values_t.std() / math.sqrt(samples)) if samples > 1 else math.nan
    return {"mean": float(values_t.mean()), "stderr": stderr, "samples": samples}
