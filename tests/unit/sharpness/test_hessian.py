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
from sharpness.hessian import Hessian, as_batch

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
