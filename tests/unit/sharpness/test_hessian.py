"""The Hessian object on a tiny Llama-style model (not GPT-2), against its Hessian formed explicitly: restricted to
the RMSNorm gains and one value projection (672 weights) by freezing the rest, in float64.

Tolerances are 1e-6 of ‖H‖, not float64's 1e-12: Llama's eager attention takes its softmax in float32 whatever
the model's dtype, so the two ways of differentiating the loss twice differ by float32 rounding (2e-8 of ‖H‖
seen)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from transformers import LlamaConfig, LlamaForCausalLM

from optimization.curvature import rademacher
from sharpness.hessian import Hessian, as_batch, batch_size

VOCAB = 100
TIGHT = 1e-6  # of ‖H‖ (see the module docstring)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).double()
    model.config._attn_implementation = "eager"
    for name, p in model.named_parameters():  # the block whose Hessian is formed: 5 × 32 gains + 16 × 32 weights
        p.requires_grad_(name.endswith("norm.weight") or name == "model.layers.0.self_attn.v_proj.weight")
    return model


def formed_hessian(model, batches) -> torch.Tensor:
    """∇²L over the trainable weights, L the token-weighted next-token cross-entropy, written out here."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
    base = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    targets = [b["labels"][:, 1:] for b in batches]
    count = sum(int((t != -100).sum()) for t in targets)

    def loss(flat):
        weights = dict(zip(names, (c.view(s) for c, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        total = 0.0
        for batch, target in zip(batches, targets):
            logits = functional_call(model, weights, (), {"input_ids": batch["input_ids"],
                                                          "attention_mask": batch["attention_mask"]}).logits
            total = total + F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), ignore_index=-100,
                                            reduction="sum")
        return total / count

    return torch.autograd.functional.hessian(loss, base, vectorize=True)


@pytest.fixture(scope="module")
def llama():
    model = tiny_llama().eval()
    generator = torch.Generator().manual_seed(1)
    padded = torch.randint(0, VOCAB, (2, 9), generator=generator)
    mask = torch.ones_like(padded)
    mask[1, 6:] = 0  # a tokenizer's output with padding
    batches = [torch.randint(0, VOCAB, (3, 12), generator=generator), {"input_ids": padded, "attention_mask": mask}]
    hessian = Hessian(model, batches)
    exact = formed_hessian(model, [as_batch(b) for b in batches])
    return hessian, exact


def test_it_acts_on_the_trainable_weights_and_its_hvp_is_the_formed_hessians(llama):
    hessian, exact = llama
    assert hessian.dim == exact.shape[0] == 5 * 32 + 16 * 32
    v = torch.randn(hessian.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = exact @ v
    assert float((hessian.hvp(v) - expected).norm()) <= TIGHT * float(expected.norm())


def test_eigenvalues_top_k_and_bottom(llama):
    hessian, exact = llama
    spectrum = torch.linalg.eigvalsh(exact)
    scale = float(spectrum.abs().max())
    result = hessian.eigenvalues(k=3, max_iter=300, tol=1e-10)
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues, spectrum[-3:].flip(0).tolist(), rtol=0, atol=TIGHT * scale)
    assert result.lambda_min == pytest.approx(float(spectrum[0]), abs=TIGHT * scale)
    x = result.eigenvector
    assert float((exact @ x - result.lambda_max * x).norm()) <= 10 * TIGHT * scale


def test_trace_is_hutchinson_on_the_formed_hessian(llama):
    hessian, exact = llama
    trace = hessian.trace(samples=40, seed=3)
    generator = torch.Generator().manual_seed(3)  # the same probes, applied to the formed Hessian
    probes = [rademacher(hessian.dim, generator, exact) for _ in range(40)]
    samples = torch.tensor([float(z @ exact @ z) for z in probes], dtype=torch.float64)
    assert trace["samples"] == 40
    assert trace["mean"] == pytest.approx(float(samples.mean()), abs=TIGHT * float(exact.trace()))
    assert trace["stderr"] == pytest.approx(float(samples.std() / 40**0.5), rel=1e-3)
    assert abs(trace["mean"] - float(exact.trace())) <= 4 * trace["stderr"]


def test_density_is_a_probability_whose_quadrature_matches_the_formed_hessian(llama):
    hessian, exact = llama
    density = hessian.density(probes=3, steps=12, seed=4)
    assert density.probes == 3 and density.matvecs == 36 and density.dim == hessian.dim
    grid, sigma = density.default_grid()
    assert np.trapezoid(density.smoothed(grid, sigma), grid) == pytest.approx(1.0, abs=1e-6)
    spectrum = torch.linalg.eigvalsh(exact)
    scale = float(spectrum.abs().max())
    every = np.concatenate(density.nodes)  # Ritz values lie inside the spectrum
    assert every.min() >= float(spectrum[0]) - TIGHT * scale and every.max() <= float(spectrum[-1]) + TIGHT * scale
    probe = rademacher(hessian.dim, torch.Generator().manual_seed(4), exact) / hessian.dim**0.5  # the first probe
    for power in (1, 2, 3):  # Gauss quadrature with 12 nodes is exact up to degree 23
        expected = float(probe @ torch.linalg.matrix_power(exact, power) @ probe)
        got = float(density.weights[0] @ density.nodes[0] ** power)
        assert got == pytest.approx(expected, abs=TIGHT * scale**power)


def test_l11_norm_estimates_the_formed_hessians(llama):
    hessian, exact = llama
    norm = hessian.l11_norm(cauchy_vectors=100, seed=5)
    truth = float(exact.abs().sum())
    assert norm["cauchy_vectors"] == 100
    # The rows share the Cauchy vectors, so their errors add up: about 12 % at 100 vectors, which the stderr says.
    assert 0 < norm["stderr"] <= 0.15 * norm["value"] and abs(norm["value"] - truth) <= 4 * norm["stderr"]
    assert norm["ci"][0] < truth < norm["ci"][1]
    assert norm["largest_row"] == pytest.approx(float(exact.abs().sum(1).max()), rel=0.5)


def test_batches_are_token_ids_or_a_tokenizers_output():
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    assert torch.equal(as_batch(ids)["labels"], ids) and torch.equal(as_batch(ids)["attention_mask"], torch.ones_like(ids))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    padded = as_batch({"input_ids": ids, "attention_mask": mask})
    assert padded["labels"].tolist() == [[5, 6, 7], [8, 9, -100]]
    with pytest.raises(ValueError, match="2-D tensor of token ids"):
        as_batch(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="at least one batch"):
        Hessian(tiny_llama(), [])


def test_the_documented_lines_run_on_a_tokenizers_padded_output(tiny_model_and_tokenizer):
    """docs/python.md's example, on a scratch model: a tokenizer's padded output is one batch, and its padding
    changes nothing (the same H·v as the two texts unpadded, in batches of their own)."""
    model, tokenizer = tiny_model_and_tokenizer
    texts = ["Some text.", "Some more text, longer."]
    h = Hessian(model, [tokenizer(texts, return_tensors="pt", padding=True)])
    unpadded = Hessian(model, [tokenizer([text], return_tensors="pt") for text in texts])
    v = torch.randn(h.dim, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(h.hvp(v), unpadded.hvp(v), rtol=1e-4, atol=1e-6)
    assert len(h.eigenvalues(k=3, max_iter=8).eigenvalues) == 3
    assert h.trace(samples=2)["samples"] == 2 and h.density(probes=1, steps=4).matvecs == 4


# ---- a custom loss on any nn.Module: an MLP whose Hessian is formed explicitly, in float64 ----------------------

def mlp_and_batches():
    """A 4-5-3 tanh MLP (43 weights) and three batches of (inputs, classes) of sizes 3, 5 and 2."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 4, generator=generator, dtype=torch.float64), torch.randint(0, 3, (n,), generator=generator))
               for n in (3, 5, 2)]
    return net, batches


def batch_mean_cross_entropy(net, batch):
    inputs, classes = batch
    return F.cross_entropy(net(inputs), classes)


def mlp_loss(net, batches):
    """L(flat weights): the mean cross-entropy over all ten examples, written out here (no batch weighting)."""
    names, shapes = zip(*[(n, p.shape) for n, p in net.named_parameters()])
    inputs, classes = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    def loss(flat):
        weights = dict(zip(names, (c.view(s) for c, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(functional_call(net, weights, (inputs,)), classes)

    return loss, torch.cat([p.detach().reshape(-1) for p in net.parameters()])


@pytest.fixture(scope="module")
def mlp():
    net, batches = mlp_and_batches()
    loss, base = mlp_loss(net, batches)
    return Hessian(net, batches, loss=batch_mean_cross_entropy), torch.autograd.functional.hessian(loss, base), loss, base


@pytest.mark.parametrize("hvp_mode", ["reverse", "forward"])
def test_a_custom_loss_weighs_batches_by_their_size_and_its_hvp_is_the_formed_hessians(mlp, hvp_mode):
    _, exact, loss, base = mlp
    net, batches = mlp_and_batches()
    hessian = Hessian(net, batches, loss=batch_mean_cross_entropy, hvp_mode=hvp_mode)
    assert hessian.dim == 43 and hessian.loss() == pytest.approx(float(loss(base)), rel=1e-14)
    v = torch.randn(43, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(hessian.hvp(v), exact @ v, rtol=1e-12, atol=1e-12)


def test_a_custom_losss_eigenvalues_and_trace_are_the_formed_hessians(mlp):
    hessian, exact, _, _ = mlp
    spectrum = torch.linalg.eigvalsh(exact)
    result = hessian.eigenvalues(k=3, max_iter=43, tol=1e-10)
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues, spectrum[-3:].flip(0).tolist(), rtol=0, atol=1e-10)
    assert result.lambda_min == pytest.approx(float(spectrum[0]), abs=1e-10)
    trace = hessian.trace(samples=30, seed=3)
    generator = torch.Generator().manual_seed(3)
    probes = [rademacher(43, generator, exact) for _ in range(30)]
    assert trace["mean"] == pytest.approx(float(np.mean([float(z @ exact @ z) for z in probes])), rel=1e-12)


def test_eps_sharpness_follows_the_taylor_expansion_of_the_formed_loss(mlp):
    """Along the top eigenvector v of the formed Hessian: the reported increases are the formed loss's own; the
    symmetric one is ½ε²λ_max + O(ε⁴) and the one-sided one ε·gᵀv + ½ε²λ_max + O(ε³): halving ε divides the
    remainders by 16 and by 8."""
    hessian, exact, loss, base = mlp
    values, vectors = torch.linalg.eigh(exact)
    lam, v = float(values[-1]), vectors[:, -1]
    L, g = float(loss(base)), torch.func.grad(loss)(base)
    remainders = []
    for eps in (1e-2, 5e-3):
        found = hessian.eps_sharpness(eps, random_directions=4, max_iter=43, tol=1e-10)
        assert found["base_loss"] == pytest.approx(L, rel=1e-14) and found["lambda_max"] == pytest.approx(lam, rel=1e-10)
        plus, minus = float(loss(base + eps * v)), float(loss(base - eps * v))
        assert found["eigvec"] == pytest.approx(100 * (max(plus, minus) - L) / L, rel=1e-9)
        assert found["eigvec_symmetric_pct"] == pytest.approx(100 * ((plus + minus) / 2 - L) / L, rel=1e-9)
        second_order = 100 * 0.5 * eps**2 * lam / L
        assert found["eigvec_symmetric_predicted_pct"] == pytest.approx(second_order, rel=1e-10)
        direction = v if plus >= minus else -v
        taylor = found["taylor"]
        assert taylor["predicted_pct"] == pytest.approx(100 * (eps * float(g @ direction) + 0.5 * eps**2 * lam) / L,
                                                        rel=1e-9)
        assert found["below_resolution"] == [] and found["random_max"] >= found["random_mean"]
        remainders.append((found["eigvec_symmetric_pct"] - second_order, taylor["abs_diff_pct"]))
    (symmetric, one_sided), (symmetric_half, one_sided_half) = remainders
    assert symmetric / symmetric_half == pytest.approx(16, rel=0.05)
    assert one_sided / one_sided_half == pytest.approx(8, rel=0.1)


def test_a_custom_loss_must_return_a_scalar_tensor_and_batches_need_a_batch_dimension():
    net, batches = mlp_and_batches()
    with pytest.raises(ValueError, match="scalar tensor"):
        Hessian(net, batches, loss=lambda n, b: F.cross_entropy(n(b[0]), b[1], reduction="none")).loss()
    with pytest.raises(ValueError, match="batch dimension"):
        Hessian(net, [("not", "tensors")], loss=batch_mean_cross_entropy)
    assert [batch_size(b) for b in (torch.zeros(4, 2), (torch.zeros(3),), {"x": torch.zeros(2, 5), "y": 1})] == [4, 3, 2]


def test_a_custom_loss_on_a_tiny_llama_is_the_token_loss_when_batches_share_their_length():
    """HF's own mean loss per batch (`model(input_ids, labels=...).loss`), weighted by batch size, is the
    project's token-weighted loss when every sequence has the same length: the same L and H·v, to float32
    rounding (HF's loss takes its cross-entropy in float32 whatever the model's dtype)."""
    model = tiny_llama()
    generator = torch.Generator().manual_seed(7)
    batches = [torch.randint(0, VOCAB, (n, 8), generator=generator) for n in (3, 1)]
    own = Hessian(model, batches, loss=lambda m, ids: m(input_ids=ids, labels=ids).loss)
    project = Hessian(model, batches)
    assert own.loss() == pytest.approx(project.loss(), rel=TIGHT)
    v = torch.randn(own.dim, generator=generator, dtype=torch.float64)
    expected = project.hvp(v)
    assert float((own.hvp(v) - expected).norm()) <= TIGHT * float(expected.norm())


def test_eps_sharpness_on_a_tiny_llama_matches_its_second_order_prediction(llama):
    hessian, exact = llama
    found = hessian.eps_sharpness(1e-3, random_directions=2, max_iter=300, tol=1e-10)
    assert found["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(exact)[-1]), rel=1e-6)
    assert found["eigvec_symmetric_pct"] == pytest.approx(found["eigvec_symmetric_predicted_pct"], rel=1e-3)
    assert found["taylor"]["measured_pct"] == found["eigvec"]


def test_the_first_python_block_of_docs_python_md_runs_as_written(capsys):
    """The README-level example: an MLP with a custom loss, every method and the landscape."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "python.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.splitlines()) <= 15
    names: dict = {}
    exec(compile(block, "docs/python.md", "exec"), names)
    assert names["surface"].loss.shape == (11, 11) and np.isfinite(names["surface"].loss).all()
    assert len(names["top"].eigenvalues) == 3 and capsys.readouterr().out.count("\n") == 2
