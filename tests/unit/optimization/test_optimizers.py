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


@pytest.mark.parametrize("name", ["signsgd", "adasgd", "blockadam", "lion", "muon", "shampoo", "soap", "nadam",
                                  "torch.Adamax"])
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


# ---- optimizers by name: torch.optim and pytorch-optimizer ---------------------------------------


def test_library_names_build_their_class_with_train_settings_and_optimizer_args():
    import pytorch_optimizer

    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    kinds = {"nadam": torch.optim.NAdam, "radam": torch.optim.RAdam, "adafactor": torch.optim.Adafactor,
             "torch.Adamax": torch.optim.Adamax, "torch.Muon": torch.optim.Muon, "lion": pytorch_optimizer.Lion,
             "adahessian": pytorch_optimizer.AdaHessian, "soap": pytorch_optimizer.SOAP,
             "shampoo": pytorch_optimizer.Shampoo, "muon": pytorch_optimizer.Muon}
    for name, kind in kinds.items():
        own = params[:1] if name == "torch.Muon" else params  # torch's Muon takes matrices only
        assert type(make_optimizer(own, TrainConfig(optimizer=name))) is kind
    nadam = make_optimizer(params, TrainConfig(optimizer="nadam", lr=0.01, betas=[0.8, 0.9], eps=1e-6,
                                               optimizer_args={"momentum_decay": 0.01}))
    group = nadam.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["momentum_decay"]) == (0.01, (0.8, 0.9), 1e-6, 0.01)
    adafactor = make_optimizer(params, TrainConfig(optimizer="adafactor", eps=1e-6))
    assert adafactor.param_groups[0]["eps"] == (None, 1e-3)  # a pair: train.eps (one number) is not its eps


def test_a_value_the_class_refuses_is_a_config_error():
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match="train.optimizer muon"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2, 2))], TrainConfig(optimizer="muon",
                                                                            optimizer_args={"ns_steps": 0}))


def test_lion_steps_by_the_sign_of_an_interpolated_momentum():
    """Chen et al. 2023: u = sign(β₁m + (1−β₁)g), m ← β₂m + (1−β₂)g, θ ← θ(1 − η·wd) − η·u."""
    lr, (beta1, beta2), wd = 0.1, (0.5, 0.8), 0.01
    history, _ = steps(lambda p: make_optimizer(p, TrainConfig(optimizer="lion", lr=lr, betas=[beta1, beta2],
                                                                weight_decay=wd)))
    w, m = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), torch.zeros(2, 2)
    for g, (after, _) in zip(GRADIENTS, history):
        u = torch.sign(beta1 * m + (1 - beta1) * g)
        m = beta2 * m + (1 - beta2) * g
        w = w * (1 - lr * wd) - lr * u
        assert torch.allclose(after, w, atol=1e-7)


def _inverse_root(matrix: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix.double())
    return (vectors * values ** (-1 / power)) @ vectors.T


def test_shampoo_preconditions_by_the_inverse_fourth_roots_of_its_kronecker_factors():
    """Gupta et al. 2018, momentum 0: L ← L + GGᵀ, R ← R + GᵀG (both from εI), W ← W − η·L^(-1/4) G R^(-1/4); a
    vector's one factor takes the inverse square root: b ← b − η·(εI + Σggᵀ)^(-1/2) g."""
    lr = 0.1
    history, optimizer = steps(lambda p: make_optimizer(p, TrainConfig(optimizer="shampoo", lr=lr)))
    eps = optimizer.param_groups[0]["matrix_eps"]
    w, b = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]).double(), torch.tensor([0.1, -0.3]).double()
    left, right, bias = (eps * torch.eye(2, dtype=torch.float64) for _ in range(3))
    for g, g_b, (after_w, after_b) in zip(GRADIENTS, BIAS, history):
        g, g_b = g.double(), g_b.double()
        left, right, bias = left + g @ g.T, right + g.T @ g, bias + torch.outer(g_b, g_b)
        w = w - lr * _inverse_root(left, 4) @ g @ _inverse_root(right, 4)
        b = b - lr * _inverse_root(bias, 2) @ g_b
        assert torch.allclose(after_w.double(), w, atol=1e-4) and torch.allclose(after_b.double(), b, atol=1e-4)


def test_soap_runs_adam_in_the_eigenbasis_of_the_first_gradients_factors():
    """Vyas et al. 2024: step 1 only sets the bases Q_L, Q_R (eigenvectors of G₁G₁ᵀ, G₁ᵀG₁); step 2 is Adam's first
    step in that basis, W ← W − η·Q_L sign(Q_Lᵀ G₂ Q_R) Q_Rᵀ (ε aside), and plain Adam's on a vector."""
    lr = 0.01
    history, _ = steps(lambda p: make_optimizer(p, TrainConfig(optimizer="soap", lr=lr, betas=[0.9, 0.95])))
    w0, b0 = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), torch.tensor([0.1, -0.3])
    assert torch.equal(history[0][0], w0) and torch.equal(history[0][1], b0)
    q_left = torch.linalg.eigh(GRADIENTS[0] @ GRADIENTS[0].T).eigenvectors
    q_right = torch.linalg.eigh(GRADIENTS[0].T @ GRADIENTS[0]).eigenvectors
    expected = w0 - lr * q_left @ torch.sign(q_left.T @ GRADIENTS[1] @ q_right) @ q_right.T
    assert torch.allclose(history[1][0], expected, atol=1e-5)
    assert torch.allclose(history[1][1], b0 - lr * torch.sign(BIAS[1]), atol=1e-5)


def test_muon_orthogonalizes_a_matrix_update_and_moves_a_vector_by_adamw():
    """Jordan et al. 2024, momentum 0: W ← W − η·O with O ≈ UVᵀ for G = USVᵀ (5 Newton–Schulz steps put O's singular
    values near 1, not at 1); a vector is AdamW's: the first step moves it by adamw_lr·sign(g)."""
    lr, adamw_lr = 0.1, 0.01
    history, _ = steps(lambda p: make_optimizer(p, TrainConfig(optimizer="muon", lr=lr,
                                                                optimizer_args={"adamw_lr": adamw_lr})), n_steps=1)
    w0, b0 = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), torch.tensor([0.1, -0.3])
    u, _, vh = torch.linalg.svd(GRADIENTS[0])
    in_g_basis = u.T @ ((w0 - history[0][0]) / lr) @ vh.T
    # the singular vectors of G, to bfloat16 precision (Newton–Schulz runs in bfloat16)
    assert torch.allclose(in_g_basis, torch.diag(torch.diagonal(in_g_basis)), atol=2e-2)
    assert ((torch.diagonal(in_g_basis) > 0.6) & (torch.diagonal(in_g_basis) < 1.3)).all()
    assert torch.allclose(history[0][1], b0 - adamw_lr * torch.sign(BIAS[0]), atol=1e-6)


def test_adahessian_divides_the_momentum_by_the_root_mean_square_hessian_diagonal():
    """Yao et al. 2021 (hessian_power 1): m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)D², θ ← θ − η·m̂/(√v̂ + ε), D the
    Hessian diagonal the step is given."""
    lr, (beta1, beta2) = 0.1, (0.9, 0.99)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    optimizer = make_optimizer([w], TrainConfig(optimizer="adahessian", lr=lr, betas=[beta1, beta2], eps=1e-12))
    expected, m, v = w.detach().clone(), torch.zeros(3), torch.zeros(3)
    gradients = [torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.0, -3.0])]
    diagonals = [torch.tensor([2.0, -1.0, 4.0]), torch.tensor([1.0, 3.0, -2.0])]
    for t, (g, d) in enumerate(zip(gradients, diagonals), start=1):
        w.grad = g.clone()
        optimizer.step(hessian=[d])
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * d**2
        expected = expected - lr * (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + 1e-12)
        assert torch.allclose(w.detach(), expected, atol=1e-6)


@pytest.mark.parametrize("taken, options", [(1, {}), (4, {"hessian_power": 0.5}), (2, {"adam_debias": True}),
                                            (3, {"update_period": 2}), (4, {"update_period": 2})])
def test_adahessians_preconditioner_divides_its_next_steps_momentum(taken, options):
    """P = (1 − β₁^(t+1))·(v̂^(k/2) + ε) after t steps (factor 1 with adam_debias): the next step moves θ by η·m/P,
    m the momentum after it. A next D with D² = v̂ leaves v̂ as it is, so a step that renews D shows P exactly; one
    between renewals (update_period 2, t odd) keeps v, whose v̂ = v/(1 − β₂^(t+1)) is then exact."""
    from optimization.optimizers import diagonal_preconditioner

    torch.manual_seed(taken)
    weights = [torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64)),
               torch.nn.Parameter(torch.randn(5, dtype=torch.float64))]
    beta1, beta2, lr, period = 0.9, 0.999, 0.1, options.get("update_period", 1)
    optimizer = make_optimizer(weights, TrainConfig(optimizer="adahessian", lr=lr, betas=[beta1, beta2],
                                                    weight_decay=0.0, optimizer_args=options))
    assert diagonal_preconditioner(optimizer, weights) is None  # no step yet
    for t in range(taken):
        for w in weights:
            w.grad = torch.randn_like(w)
        optimizer.step(hessian=[torch.randn_like(w) for w in weights] if t % period == 0 else None)
    preconditioner = diagonal_preconditioner(optimizer, weights)
    power, eps = optimizer.param_groups[0]["hessian_power"], optimizer.param_groups[0]["eps"]
    factor = 1.0 if options.get("adam_debias") else 1 - beta1 ** (taken + 1)
    v_hat = ((preconditioner / factor - eps) ** (2 / power)).split([12, 5])
    before, momentum = [w.detach().clone() for w in weights], []
    for w in weights:
        w.grad = torch.randn_like(w)
        momentum.append(beta1 * optimizer.state[w]["exp_avg"] + (1 - beta1) * w.grad)
    renews = taken % period == 0
    optimizer.step(hessian=[v.sqrt().reshape(w.shape) for v, w in zip(v_hat, weights)] if renews else None)
    moved = torch.cat([(b - w.detach()).reshape(-1) for b, w in zip(before, weights)])
    assert torch.allclose(moved, lr * torch.cat([m.reshape(-1) for m in momentum]) / preconditioner, rtol=1e-9)


def test_the_hessian_diagonal_is_hutchinsons_z_times_hz_in_the_optimizers_coordinates(tiny_model_and_tokenizer):
    """z ⊙ Hz with the optimizer's own vectors; under a rotation θ = Rθ̃ the Hessian of θ̃, z ⊙ RᵀHRz."""
    from data.batches import fixed_batches
    from optimization.curvature import rademacher
    from optimization.objective import Objective, flatten
    from optimization.optimizers import hessian_diagonal, needs_hessian_diagonal
    from optimization.rotation import build_rotation

    model, tokenizer = tiny_model_and_tokenizer
    texts = ["a small text to measure", "and another one"]
    batch = fixed_batches([torch.tensor(tokenizer(t)["input_ids"]) for t in texts], 2, tokenizer.pad_token_id)[0]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, TrainConfig(optimizer="adahessian", optimizer_args={"num_samples": 2}))
    assert needs_hessian_diagonal(optimizer) and not needs_hessian_diagonal(make_optimizer(params, TrainConfig()))
    rotation = build_rotation("global", [n for n, _ in model.named_parameters()], [p.numel() for p in params], 3)
    objective = Objective(model, [batch], hvp_mode="forward")  # the other HVP: an independent check
    for turned in (None, rotation):
        generator = torch.Generator().manual_seed(5)
        found = flatten(hessian_diagonal(optimizer, model, batch, params, turned, generator))
        assert model.training  # left as training needs it
        model.eval()  # the Hessian without dropout, as hessian_diagonal measures it
        generator = torch.Generator().manual_seed(5)
        expected = torch.zeros_like(found)
        for _ in range(2):
            z = rademacher(found.numel(), generator, found)
            expected += z * (objective.hvp(z) if turned is None else turned.transpose(objective.hvp(turned.apply(z))))
        assert torch.allclose(found, expected / 2, rtol=1e-4, atol=1e-6)


def test_no_preconditioner_is_claimed_for_amsgrad():
    from optimization.optimizers import diagonal_preconditioner

    w = torch.nn.Parameter(torch.ones(3))
    optimizer = make_optimizer([w], TrainConfig(optimizer="adam", optimizer_args={"amsgrad": True}))
    w.grad = torch.ones(3)
    optimizer.step()
    assert diagonal_preconditioner(optimizer, [w]) is None
