"""Objective's H·v through the closed-form cross-entropy curvature, against autograd's and the formed Hessian; the
gradient graphs it keeps between products at the same weights."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoModelForCausalLM, GPT2Config

from config.schema import SharpnessConfig
from data.batches import collate
from optimization import evaluation, objective
from optimization.objective import TOKEN_LOSS, Objective

AUTOGRAD_CROSS_ENTROPY = dataclasses.replace(TOKEN_LOSS, summed_for_hvp=None)


@pytest.fixture(scope="module")
def tiny64():
    """A float64 GPT-2 (1 layer, 4 wide, vocabulary 24: 412 weights) and two batches of unequal lengths with padding."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=4, n_head=2, n_positions=16, vocab_size=24, bos_token_id=23, eos_token_id=23)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").double()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 23, (n,), generator=g) for n in (12, 5, 9, 3, 16)]
    return model, [collate(seqs[:2], 23), collate(seqs[2:], 23)]


def test_closed_form_hvp_equals_autograds_and_the_formed_hessian(tiny64):
    model, batches = tiny64
    closed_form, autograd = Objective(model, batches), Objective(model, batches, batch_loss=AUTOGRAD_CROSS_ENTROPY)
    names = list(closed_form.names)

    def loss_of(flat):  # the plain cross-entropy, differentiated twice by autograd
        weights = dict(zip(names, closed_form.views(flat)))
        call = lambda **inputs: functional_call(model, weights, (), inputs)  # noqa: E731
        return sum(evaluation.summed_token_loss(call, b)[0] for b in batches) / closed_form.n_tokens

    with sdpa_kernel(SDPBackend.MATH):
        hessian = torch.autograd.functional.hessian(loss_of, closed_form.base.clone(), vectorize=True)
    for seed in (3, 4):
        v = torch.randn(closed_form.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        hv = closed_form.hvp(v)
        assert (hv - autograd.hvp(v)).norm() <= 1e-10 * hv.norm()
        assert (hv - hessian @ v).norm() <= 1e-10 * hv.norm()


def test_closed_form_loss_and_gradient_are_the_plain_ones(tiny64):
    model, batches = tiny64
    for batch in batches:
        plain, n = evaluation.summed_token_loss(model, batch)
        closed, m = evaluation.summed_token_loss(model, batch, closed_form_curvature=True)
        assert torch.equal(plain, closed) and n == m
        for a, b in zip(torch.autograd.grad(plain, model.parameters()), torch.autograd.grad(closed, model.parameters())):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_token_cross_entropy_second_derivatives_are_exact_and_padding_counts_nothing():
    """gradgradcheck also differentiates the backward by its incoming gradient (the tokens' weights)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([3, -100, 0, 6, -100])
    token_losses = lambda z: evaluation._TokenCrossEntropy.apply(z, targets)  # noqa: E731
    assert torch.autograd.gradcheck(token_losses, (logits,))
    assert torch.autograd.gradgradcheck(token_losses, (logits,))
    weights = torch.rand(5, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(token_losses(logits), logits, weights, create_graph=True)
    u = torch.randn(5, 7, generator=g, dtype=torch.float64)
    (hu,) = torch.autograd.grad(grad, logits, u)
    p = torch.softmax(logits.detach(), dim=-1)
    for row, target in enumerate(targets):
        hessian = torch.diag(p[row]) - torch.outer(p[row], p[row])  # of one token's cross-entropy in its logits
        expected = weights[row] * hessian @ u[row] if target != -100 else torch.zeros(7, dtype=torch.float64)
        torch.testing.assert_close(hu[row], expected, rtol=1e-12, atol=1e-15)


def vectors(dim: int, count: int) -> list[torch.Tensor]:
    return [torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) for seed in range(count)]


def test_kept_graphs_give_the_same_products_bit_for_bit_with_one_forward_and_backward_per_batch(tiny64):
    model, batches = tiny64
    kept, rebuilt = Objective(model, batches), Objective(model, batches, graph_memory=0)
    for v in vectors(kept.dim, 3):
        assert torch.equal(kept.hvp(v), rebuilt.hvp(v))
    assert (kept.graph_builds, rebuilt.graph_builds) == (2, 6)  # two batches: built once, or for each of 3 products
    assert kept.hvp_count == rebuilt.hvp_count == 3


def test_a_graph_is_built_again_when_the_weights_move_by_any_means(tiny64):
    model, batches = copy.deepcopy(tiny64[0]), tiny64[1]
    kept = Objective(model, batches)
    v, direction = vectors(kept.dim, 2)
    kept.hvp(v)
    first = model.transformer.wte.weight

    def step():  # as an optimizer steps: in place, under no_grad
        with torch.no_grad():
            first.add_(0.1)

    def through_data():  # unseen by autograd's version counters
        first.data.mul_(0.5)

    moves = [step, through_data, lambda: kept.move_to([0.01], [direction])]
    for number, move in enumerate(moves, start=1):
        move()
        fresh = Objective(model, batches, graph_memory=0)
        assert torch.equal(kept.hvp(v), fresh.hvp(v))
        assert kept.graph_builds == 2 * (number + 1)


def test_graphs_are_kept_only_within_their_share_of_the_free_memory(tiny64, monkeypatch, capsys):
    model, batches = tiny64
    v = vectors(Objective(model, batches).dim, 1)[0]
    # Room for the weights' copy, the gradient and one batch's logits (float64), but a graph holds more than its
    # logits (autograd saves them, their softmax and every layer's activations): none fits.
    logits = max(b["input_ids"].numel() for b in batches) * model.config.vocab_size * 8
    below_a_graph = (2 * v.numel() * 8 + logits) / SharpnessConfig.graph_memory
    # 2 products on 2 batches: none fits (said once), or every one does
    for free, builds, said in ((0, 4, 1), (below_a_graph, 4, 1), (10**12, 2, 0)):
        monkeypatch.setattr(objective, "free_memory", lambda device: free)
        measured = Objective(model, batches)
        measured.hvp(v), measured.hvp(v)
        assert measured.graph_builds == builds
        assert capsys.readouterr().out.count("gradient graph") == said
    with pytest.raises(ValueError, match="graph_memory is a share of the free memory"):
        Objective(model, batches, graph_memory=2)
