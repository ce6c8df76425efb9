"""The optimizers of `train.optimizer`: a library class by name (config.optimizers: torch.optim, pytorch-optimizer),
or one of three small ones of the project's own.

sgd        torch SGD: momentum, weight decay as L2 in the gradient.
adam       torch Adam: weight decay as L2 in the gradient.
adamw      torch AdamW: decoupled weight decay.
signsgd    signum (Bernstein et al. 2018): m ← β·m + (1−β)·g, θ ← θ − lr·sign(m), β = train.momentum.
adasgd     Adam whose second moment is ONE scalar per parameter group: v ← β₂·v + (1−β₂)·mean(g²) over all the
           group's coordinates. Its update m̂/(√v̂ + ε) turns with any rotation of the parameters, like SGD's.
blockadam  Adam with one second moment per tensor, the mean of g² over it (as Adam-mini, Adalayer).
muon       pytorch-optimizer's Muon: Newton–Schulz-orthogonalized momentum for every tensor of 2 or more dimensions,
           AdamW (its adamw_lr, adamw_betas, … from train.optimizer_args) for the rest (biases, norm gains).
adahessian pytorch-optimizer's AdaHessian, given the Hessian's diagonal by the training step (hessian_diagonal).

The project's three decay weights decoupled, θ ← θ·(1 − lr·wd), and bias-correct their moments like Adam.
"""

from __future__ import annotations

import torch

from config.optimizers import library_class, train_settings
from optimization.curvature import rademacher
from optimization.objective import Objective, flatten, views
from utils.errors import ConfigError


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` (a TrainConfig) over `params`."""
    params = list(params)
    beta1, beta2 = cfg.betas
    if cfg.optimizer == "signsgd":
        return SignSGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer in ("adasgd", "blockadam"):
        block = "group" if cfg.optimizer == "adasgd" else "tensor"
        return BlockAdam(params, lr=cfg.lr, betas=(beta1, beta2), eps=cfg.eps, weight_decay=cfg.weight_decay,
                         block=block)
    cls = library_class(cfg.optimizer)
    arguments = {key: tuple(value) if isinstance(value, list) else value for key, value in cfg.optimizer_args.items()}
    groups = params
    if cfg.optimizer == "muon":  # Newton–Schulz needs a matrix: the other tensors get Muon's AdamW
        groups = [{"params": [p for p in params if p.ndim >= 2], "use_muon": True},
                  {"params": [p for p in params if p.ndim < 2], "use_muon": False}]
        groups = [g for g in groups if g["params"]]
    try:
        return cls(groups, **train_settings(cls, cfg), **arguments)
    except (TypeError, ValueError, NotImplementedError) as err:  # a value the class refuses
        raise ConfigError(f"train.optimizer {cfg.optimizer}: {err} (train.optimizer_args: {cfg.optimizer_args})") from None


def needs_hessian_diagonal(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's step wants the Hessian's diagonal (AdaHessian) at this step (every update_period)."""
    if type(optimizer).__name__ != "AdaHessian":
        return False
    return optimizer.param_groups[0].get("step", 0) % optimizer.update_period == 0


def hessian_diagonal(optimizer: torch.optim.Optimizer, model, batch, trainable: list[torch.Tensor], rotation,
                     generator: torch.Generator) -> list[torch.Tensor]:
    """Hutchinson's estimate of diag(H) of the batch's loss, z ⊙ Hz averaged over the optimizer's num_samples vectors
    z (its hessian_distribution: Rademacher or Gaussian), shaped like `trainable` (what the optimizer moves). Hz is the
    project's exact HVP (optimization.objective, in eval mode like every Hessian here); under train.rotation the
    optimizer moves θ̃ with θ = Rθ̃, whose Hessian is RᵀHR. The model is left in train mode."""
    objective = Objective(model, [batch])
    base = flatten([t.detach() for t in trainable])
    total = torch.zeros_like(base)
    for _ in range(optimizer.num_samples):
        if optimizer.distribution == "rademacher":
            z = rademacher(base.numel(), generator, base)
        else:
            z = torch.randn(base.numel(), generator=generator, dtype=torch.float64).to(base)
        hz = objective.hvp(z) if rotation is None else rotation.transpose(objective.hvp(rotation.apply(z)))
        total += z * hz
    model.train()
    return views(total / optimizer.num_samples, trainable)


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            beta = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                momentum = state["momentum"].mul_(beta).add_(p.grad, alpha=1 - beta)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(momentum.sign(), alpha=-group["lr"])
        return loss


class BlockAdam(torch.optim.Optimizer):
    """Adam with a second moment shared by a block: every coordinate of the group (`block="group"`, AdaSGD)
    or of each tensor (`block="tensor"`). Each moment is a 0-d tensor in the optimizer state, so state_dict()
    saves it; a group's lives, with its own step count, in the state of the group's first parameter, whether or
    not that parameter has a gradient in a step."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 block: str = "tensor"):
        if block not in ("group", "tensor"):
            raise ValueError(f"block must be 'group' or 'tensor', got {block!r}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                                  "block": block})

    @staticmethod
    def _second_moment(state: dict, like: torch.Tensor, beta2: float, mean_square: torch.Tensor) -> torch.Tensor:
        """v ← β₂·v + (1−β₂)·mean(g²) for the block whose moment `state` holds; return v̂ (bias-corrected)."""
        if "shared_step" not in state:
            state["shared_step"] = torch.zeros((), dtype=torch.float64)
            state["exp_avg_sq"] = torch.zeros((), dtype=like.dtype, device=like.device)
        state["shared_step"] += 1
        state["exp_avg_sq"].mul_(beta2).add_(mean_square, alpha=1 - beta2)
        return state["exp_avg_sq"] / (1 - beta2 ** float(state["shared_step"]))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            if group["block"] == "group":  # one mean of g² over every coordinate that has a gradient
                mean_square = sum(p.grad.pow(2).sum() for p in params) / sum(p.numel() for p in params)
                first = group["params"][0]
                shared = self._second_moment(self.state[first], first, beta2, mean_square)
                second = {id(p): shared for p in params}
            else:
                second = {id(p): self._second_moment(self.state[p], p, beta2, p.grad.pow(2).mean()) for p in params}
            for p in params:
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(p)
                state["step"] += 1
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                m_hat = state["exp_avg"] / (1 - beta1 ** float(state["step"]))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(m_hat / (second[id(p)].sqrt() + group["eps"]), alpha=-group["lr"])
        return loss


ADAM_FAMILY = ("adam", "adamw", "adasgd", "blockadam")  # diagonal preconditioners from the gradients' second moment
PRECONDITIONED = (*ADAM_FAMILY, "adahessian")  # those with a diagonal preconditioner: diagonal_preconditioner's


@torch.no_grad()
def diagonal_preconditioner(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> torch.Tensor | None:
    """P = (1 − β₁^(t+1))·(√v̂ + ε), the diagonal by which an Adam-family optimizer divides its momentum m in
    its next step, flat over `params` in their order; None until every one of `params` has a second moment
    (before the first step) or for an optimizer without one.

    Why t + 1. After t steps (the state's step count) the next step is θ ← θ − η·m̂/(√v̂ + ε) with
    m̂ = m/(1 − β₁^(t+1)): it divides m by (1 − β₁^(t+1))·(√v̂ + ε). The stability limit
    (2 + 2β₁)/((1 − β₁)η) of Cohen et al. (2022) is that of the recurrence m ← β₁m + (1 − β₁)Hθ,
    θ ← θ − ηP⁻¹m, so this P, the next step's, is the one it bounds (as the threshold takes the next step's
    η). Its bias correction is known exactly; v̂ is the current one (v̂ of the next step needs the gradient at
    these weights: the frozen-preconditioner approximation). Without the factor the value is 1/(1 − β₁^(t+1))
    too low: 5.3× after one step at β₁ = 0.9, 2.4× after 4, 1.1× after 20. v̂ is the bias-corrected second
    moment, shared by a block for BlockAdam; t counts the steps of each parameter's own first moment. None with
    amsgrad (train.optimizer_args), whose divisor is another. AdaHessian's: adahessian_preconditioner."""
    if type(optimizer).__name__ == "AdaHessian":
        return adahessian_preconditioner(optimizer, params)
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW, BlockAdam)):
        return None
    if any(group.get("amsgrad") for group in optimizer.param_groups):  # it divides by the running max of v
        return None
    diagonal = {}
    for group in optimizer.param_groups:
        (beta1, beta2), eps = group["betas"], group["eps"]
        for p in group["params"]:
            if isinstance(optimizer, BlockAdam):
                state = optimizer.state[group["params"][0]] if group["block"] == "group" else optimizer.state[p]
                step_key = "shared_step"
            else:
                state, step_key = optimizer.state[p], "step"
            if step_key not in state:
                return None
            v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state[step_key]))
            first_moment_steps = float(optimizer.state[p].get("step", 0))  # BlockAdam: 0 for one never moved
            momentum_correction = 1 - beta1 ** (first_moment_steps + 1)
            diagonal[id(p)] = (momentum_correction * (v_hat.sqrt() + eps)).expand_as(p)
    if any(id(p) not in diagonal for p in params):
        return None
    return torch.cat([diagonal[id(p)].reshape(-1) for p in params])


@torch.no_grad()
def adahessian_preconditioner(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> torch.Tensor | None:
    """P = (1 − β₁^(t+1))·(v̂^(k/2) + ε), the diagonal by which pytorch-optimizer's AdaHessian divides its momentum m
    in its next step (Yao et al. 2021: v the moving average of D², D the Hutchinson estimate of diag H, k its
    hessian_power), flat over `params`; None before its first step. As diagonal_preconditioner's for Adam, whose
    recurrence this is with another v: the factor is the next step's bias correction of m (1 with its adam_debias
    option, which leaves m uncorrected); v̂ = v/(1 − β₂^(t+1)) when the next step keeps v (it renews D every
    update_period steps), else the current v/(1 − β₂^t) (the new D needs the next step's weights: P frozen)."""
    diagonal = {}
    for group in optimizer.param_groups:
        (beta1, beta2), steps = group["betas"], group.get("step", 0)
        renews = steps % optimizer.update_period == 0  # the next step draws a new D (needs_hessian_diagonal)
        momentum_correction = 1.0 if group.get("adam_debias") else 1 - beta1 ** (steps + 1)
        for p in group["params"]:
            state = optimizer.state[p]
            if steps == 0 or "exp_hessian_diag_sq" not in state:
                return None
            v_hat = state["exp_hessian_diag_sq"] / (1 - beta2 ** (steps if renews else steps + 1))
            diagonal[id(p)] = momentum_correction * (v_hat.pow(group["hessian_power"] / 2) + group["eps"])
    if any(id(p) not in diagonal for p in params):
        return None
    return torch.cat([diagonal[id(p)].reshape(-1) for p in params])
