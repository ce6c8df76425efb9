"""The optimizers of train.optimizer against steps computed by hand from their equations."""

from __future__ import annotations

import math

import pytest
import torch

from optimization.optimizers import BlockAdam, SignSGD, make_optimizer
from config.schema import TrainConfig

GRADIENTS = [torch.tensor([[0.5, -2.0], [0.0, 1.0]]), torch.tensor([[-1.0, 1.0], [3.0, 0.5]])]
BIAS = [torch.tensor([0.2, -0.1]), torch.tensor([0.4, 0.3])]


def steps(optimizer_factory, n_steps=2):
    """Run the optimizer on a weight matrix and a bias with the fixed GRADIENTS/BIAS; return the weights after each step."""
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]))
    b = torch.nn.Parameter(torch.tensor([0.1, -0.3]))
    optimizer = optimizer_factory([w, b])
    history = []
    for g_w, g_b in zip(GRADIENTS[:n_steps], BIAS[:n_steps]):
        w.grad, b.grad = g_w.clone(), g_b.clone()
        optimizer.step()
        history.append((w.detach().clone(), b.detach().clone()))
    return history, optimizer


def test_signsgd_moves_every_weight_by_lr_along_the_sign_of_its_momentum():
    lr, beta, wd = 0.1, 0.5, 0.01
    history, _ = steps(lambda p: SignSGD(p, lr=lr, momentum=beta, weight_decay=wd))
    w0 = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    m1 = (1 - beta) * GRADIENTS[0]
    w1 = w0 * (1 - lr * wd) - lr * torch.sign(m1)
    m2 = beta * m1 + (1 - beta) * GRADIENTS[1]  # [[-0.375, -0.0], [1.5, 0.5]]: the sign of -2·0.25+0.5 is 0
    w2 = w1 * (1 - lr * wd) - lr * torch.sign(m2)
    assert torch.allclose(history[0][0], w1) and torch.allclose(history[1][0], w2)
    assert history[1][0][0, 1] == pytest.approx(float(w1[0, 1]) * (1 - lr * wd))  # a zero momentum does not move


@pytest.mark.parametrize("block", ["group", "tensor"])
def test_block_adam_shares_one_second_moment_per_block(block):
    lr, (beta1, beta2), eps, wd = 0.01, (0.9, 0.99), 1e-8, 0.1
    history, _ = steps(lambda p: BlockAdam(p, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, block=block))
    weights = [torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), torch.tensor([0.1, -0.3])]
    m = [torch.zeros(2, 2), torch.zeros(2)]
    v = [0.0, 0.0]
    for step, grads in enumerate(zip(GRADIENTS, BIAS), start=1):
        if block == "group":  # the mean of g² over all six coordinates
            mean_square = sum(float(g.pow(2).sum()) for g in grads) / 6
            v = [beta2 * v[0] + (1 - beta2) * mean_square] * 2
        else:
            v = [beta2 * v[i] + (1 - beta2) * float(g.pow(2).mean()) for i, g in enumerate(grads)]
        for i, g in enumerate(grads):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            m_hat, v_hat = m[i] / (1 - beta1 ** step), v[i] / (1 - beta2 ** step)
            weights[i] = weights[i] * (1 - lr * wd) - lr * m_hat / (math.sqrt(v_hat) + eps)
        assert torch.allclose(history[step - 1][0], weights[0], atol=1e-7)
        assert torch.allclose(history[step - 1][1], weights[1], atol=1e-7)


def test_adasgd_update_turns_with_a_rotation_of_the_gradient():
    """One second moment for all coordinates: rotating every gradient rotates every update."""
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    grads = [torch.randn(6, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(3)]
    plain = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    turned = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    optimizers = [BlockAdam([p], lr=0.1, block="group") for p in (plain, turned)]
    for g in grads:
        plain.grad, turned.grad = g.clone(), q @ g
        for optimizer in optimizers:
            optimizer.step()
    assert torch.allclose(turned.detach(), q @ plain.detach(), atol=1e-12)


def test_adam_is_torchs_and_make_optimizer_builds_every_name():
    ours, _ = steps(lambda p: make_optimizer(p, TrainConfig(optimizer="adam", lr=0.01, betas=[0.8, 0.9], eps=1e-6,
                                                            weight_decay=0.1)))
    reference, _ = steps(lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ours, reference))
    kinds = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "signsgd": SignSGD,
             "adasgd": BlockAdam, "blockadam": BlockAdam}
    params = [torch.nn.Parameter(torch.zeros(2))]
    for name, kind in kinds.items():
        assert type(make_optimizer(params, TrainConfig(optimizer=name))) is kind
    assert make_optimizer(params, TrainConfig(optimizer="adasgd")).defaults["block"] == "group"


@pytest.mark.parametrize("name", ["signsgd", "adasgd", "blockadam"])
def test_state_dict_round_trip_continues_identically(name):
    cfg = TrainConfig(optimizer=name, lr=0.01, momentum=0.9, weight_decay=0.01)
    straight, _ = steps(lambda p: make_optimizer(p, cfg))
    first, optimizer = steps(lambda p: make_optimizer(p, cfg), n_steps=1)
    w = torch.nn.Parameter(first[0][0].clone())
    b = torch.nn.Parameter(first[0][1].clone())
    resumed = make_optimizer([w, b], cfg)
    resumed.load_state_dict(optimizer.state_dict())
    w.grad, b.grad = GRADIENTS[1].clone(), BIAS[1].clone()
    resumed.step()
    assert torch.equal(w.detach(), straight[1][0]) and torch.equal(b.detach(), straight[1][1])


def test_adasgd_keeps_its_shared_moment_when_the_first_parameter_has_no_gradient():
    """A constant gradient of 1: the update is lr every step, also in steps where another tensor has none."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    optimizer = BlockAdam([a, b], lr=0.1, block="group")
    for grad_a in (torch.ones(2), None, None):
        a.grad, b.grad = grad_a, torch.ones(3)
        optimizer.step()
    assert torch.allclose(b.detach(), torch.full((3,), -0.3), atol=1e-6)
    assert torch.allclose(a.detach(), torch.full((2,), -0.1), atol=1e-6)


def test_adamw_decays_decoupled_by_hand():
    lr, (beta1, beta2), eps, wd = 0.01, (0.9, 0.999), 1e-8, 0.1
    history, _ = steps(lambda p: make_optimizer(p, TrainConfig(optimizer="adamw", lr=lr, betas=[beta1, beta2],
                                                                eps=eps, weight_decay=wd)), n_steps=1)
    w0, g = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), GRADIENTS[0]
    m_hat = (1 - beta1) * g / (1 - beta1)
    v_hat = (1 - beta2) * g**2 / (1 - beta2)
    expected = w0 * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
    assert torch.allclose(history[0][0], expected, atol=1e-7)


@pytest.mark.parametrize("name", ["adam", "adamw", "adasgd", "blockadam"])
@pytest.mark.parametrize("taken", [1, 4, 20])
def test_the_preconditioner_divides_the_next_steps_momentum_bias_correction_included(name, taken):
    """P = (1 − β₁^(t+1))·(√v̂ + ε) after t steps: the next step moves θ by η·m/P, m the momentum after it.
    A next gradient with g² = v̂ (blockwise for BlockAdam) leaves v̂ unchanged, so that step shows P exactly."""
    from optimization.optimizers import diagonal_preconditioner

    torch.manual_seed(taken)
    weights = [torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64)),
               torch.nn.Parameter(torch.randn(5, dtype=torch.float64))]
    beta1, beta2, lr = 0.9, 0.999, 0.1
    optimizer = make_optimizer(weights, TrainConfig(optimizer=name, lr=lr, betas=[beta1, beta2], weight_decay=0.0))
    for _ in range(taken):
        for w in weights:
            w.grad = torch.randn_like(w)
        optimizer.step()
    preconditioner = diagonal_preconditioner(optimizer, weights)
    eps = optimizer.param_groups[0]["eps"]
    v_hat = ((preconditioner / (1 - beta1 ** (taken + 1)) - eps) ** 2).split([12, 5])
    before = [w.detach().clone() for w in weights]
    momentum = []
    for w, v in zip(weights, v_hat):
        w.grad = v.sqrt().reshape(w.shape).clone()
        momentum.append(beta1 * optimizer.state[w]["exp_avg"] + (1 - beta1) * w.grad)
    optimizer.step()
    moved = torch.cat([(b - w.detach()).reshape(-1) for b, w in zip(before, weights)])
    assert torch.allclose(moved, lr * torch.cat([m.reshape(-1) for m in momentum]) / preconditioner, rtol=1e-9)
    assert torch.allclose(diagonal_preconditioner(optimizer, weights) / (1 - beta1 ** (taken + 2)),
                          preconditioner / (1 - beta1 ** (taken + 1)), rtol=1e-9)  # √v̂ + ε itself unchanged
