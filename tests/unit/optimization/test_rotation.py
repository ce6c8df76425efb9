"""Random rotations of the parameter space, and training on the rotated loss θ̃ ↦ L(Rθ̃)."""

from __future__ import annotations

import json

import pytest
import torch

from models.checkpoint import load_trained
from optimization.train_stage import train_stage
from optimization.rotation import DENSE, build_rotation
from models.runs import run_dir

NAMES = ["transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.bias",
         "transformer.h.1.ln_1.weight", "transformer.ln_f.bias"]
NUMELS = [401, 97, 3 * DENSE + 1, 13, 7]  # primes and sizes past one dense factor: the recursion is exercised


def formed(rotation, dim, dtype):
    eye = torch.eye(dim, dtype=dtype)
    return (torch.stack([rotation.apply(e) for e in eye], dim=1),
            torch.stack([rotation.transpose(e) for e in eye], dim=1))


@pytest.mark.parametrize("kind", ["global", "per-layer"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_rotation_is_orthogonal_and_its_transpose_inverts_it(kind, dtype, tolerance):
    dim = sum(NUMELS)
    rotation = build_rotation(kind, NAMES, NUMELS, seed=1, dtype=dtype)
    r, r_t = formed(rotation, dim, dtype)
    assert (r.T @ r - torch.eye(dim, dtype=dtype)).abs().max() < tolerance
    assert (r_t - r.T).abs().max() < tolerance
    x = torch.randn(dim, dtype=dtype, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(rotation.transpose(rotation.apply(x)), x, atol=tolerance)
    assert (r - torch.eye(dim, dtype=dtype)).abs().max() > 0.1  # it does rotate


def test_per_layer_rotation_keeps_each_layers_coordinates_in_that_layer():
    dim = sum(NUMELS)
    r, _ = formed(build_rotation("per-layer", NAMES, NUMELS, seed=1, dtype=torch.float64), dim, torch.float64)
    # layers: embeddings [0, 401), layer 0 [401, 401+97+193), layer 1 [.., +13), ln_f [.., +7)
    bounds = [0, 401, 401 + 97 + 3 * DENSE + 1, dim - 7, dim]
    for a, b in zip(bounds, bounds[1:]):
        block = r[a:b, a:b]
        assert torch.allclose(block.T @ block, torch.eye(b - a, dtype=torch.float64), atol=1e-12)
        assert r[a:b].abs().sum() == pytest.approx(block.abs().sum())  # nothing leaves the layer
    global_r, _ = formed(build_rotation("global", NAMES, NUMELS, seed=1, dtype=torch.float64), dim, torch.float64)
    assert global_r[:401, 401:].abs().max() > 0.01  # a global rotation mixes layers


def test_the_seed_determines_the_rotation():
    x = torch.randn(sum(NUMELS), generator=torch.Generator().manual_seed(0))
    same = [build_rotation("global", NAMES, NUMELS, seed=s).apply(x) for s in (4, 4, 5)]
    assert torch.equal(same[0], same[1]) and not torch.allclose(same[0], same[2])
    assert build_rotation("none", NAMES, NUMELS, seed=4) is None


def _trained(tiny_experiment, tmp_path, name, train):
    exp = tiny_experiment(f"train: {train}\n")
    train_stage(exp, tmp_path / name, force=False)
    folder = run_dir(tmp_path / name, exp, exp.runs[0])
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics["step_loss"], torch.load(folder / "checkpoint.pt", weights_only=True)["model"], folder


def _close(a, b, rel):
    return all(abs(x - y) <= rel * abs(x) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("optimizer", ["{optimizer: sgd, lr: 0.3, momentum: 0.9, weight_decay: 0.01}",
                                       "{optimizer: adasgd, lr: 0.01}"])
def test_rotation_equivariant_optimizers_follow_the_same_path_on_the_rotated_loss(tiny_experiment, tmp_path, optimizer):
    """θ_{t+1} = R(θ̃_t − η·Rᵀg) = θ_t − η·g: the same steps up to rounding (R·Rᵀ = I to ~1e-7 in fp32, amplified
    over 12 steps of a chaotic-enough training), so the losses agree to 1e-4 and the weights to 1e-4 of their scale."""
    plain, plain_weights, _ = _trained(tiny_experiment, tmp_path, "plain", optimizer)
    turned, turned_weights, folder = _trained(tiny_experiment, tmp_path, "turned",
                                              optimizer[:-1] + ", rotation: global}")
    assert _close(plain, turned, 1e-4)
    for key, value in plain_weights.items():  # checkpoint.pt holds θ, not θ̃
        assert (turned_weights[key] - value).abs().max() <= 1e-4 * max(1.0, float(value.abs().max())), key
    load_trained(folder / "checkpoint.pt")  # and every later stage reads it as any run


@pytest.mark.parametrize("optimizer", ["adam", "signsgd", "blockadam"])
def test_coordinatewise_optimizers_take_another_path_on_the_rotated_loss(tiny_experiment, tmp_path, optimizer):
    train = f"{{optimizer: {optimizer}, lr: 0.003, momentum: 0.9}}"
    plain, _, _ = _trained(tiny_experiment, tmp_path, "plain", train)
    turned, _, _ = _trained(tiny_experiment, tmp_path, "turned", train[:-1] + ", rotation: per-layer}")
    assert plain[0] == pytest.approx(turned[0], rel=1e-5)  # the same start
    assert max(abs(a - b) for a, b in zip(plain, turned)) > 1e-3
