"""The sharpness tests' shared fixture: a tiny GPT-2 whose Hessian is formed explicitly."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoModelForCausalLM, GPT2Config

from data.batches import collate
from optimization.evaluation import summed_token_loss
from optimization.objective import Objective


@pytest.fixture(scope="module")
def tiny():
    """A 412-parameter GPT-2, two batches of unequal token counts (with padding), and its formed Hessian."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=4, n_head=2, n_positions=16, vocab_size=24, bos_token_id=23,
                        eos_token_id=23)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 23, (n,), generator=g) for n in (12, 5, 9, 3, 16)]
    batches = [collate(seqs[:2], 23), collate(seqs[2:], 23)]
    objective = Objective(model, batches)
    names = list(objective.names)

    def loss_of(flat):
        weights = dict(zip(names, objective.views(flat)))
        total = sum(summed_token_loss(_Call(model, weights), b)[0] for b in batches)
        return total / objective.n_tokens

    with sdpa_kernel(SDPBackend.MATH):
        hessian = torch.autograd.functional.hessian(loss_of, objective.base.clone(), vectorize=True)
    return objective, hessian.double()


class _Call:
    def __init__(self, model, weights):
        self.model, self.weights = model, weights

    def __call__(self, **inputs):
        return functional_call(self.model, self.weights, (), inputs)
