"""Normalised landscape directions on architectures other than GPT-2: RMSNorm, untied heads, rotary positions."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from optimization.objective import Objective
from visualization.directions import conv1d_weight_names, random_directions


def tiny(model_type: str, **extra):
    config = AutoConfig.for_model(model_type, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                  num_attention_heads=2, max_position_embeddings=32, vocab_size=40, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def directions(model, norm: str, ignore: str = ""):
    objective = Objective(model, [])
    d1, d2 = random_directions(objective, conv1d_weight_names(model), norm, ignore, seed=0)
    return objective, dict(zip(objective.names, objective.views(d1))), dict(zip(objective.names, objective.views(d2)))


def test_llama_s_untied_head_and_embeddings_are_two_units_and_rotary_tables_no_weights():
    model = tiny("llama", tie_word_embeddings=False)
    objective, d1, d2 = directions(model, "layer")
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(objective.names)
    assert not any("rotary" in name or "inv_freq" in name for name in objective.names)  # buffers: never moved
    weights = dict(zip(objective.names, objective.params))
    for name, w in weights.items():  # every tensor, RMSNorm's 1-D weights of ones included, keeps its norm
        assert d1[name].norm() == pytest.approx(w.norm().item(), rel=1e-5)
        assert d2[name].norm() == pytest.approx(w.norm().item(), rel=1e-5)
        assert float((d1[name] * d2[name]).sum()) == pytest.approx(0.0, abs=1e-4 * w.norm().item() ** 2)


def test_a_tied_head_is_one_unit():
    objective, _, _ = directions(tiny("llama", tie_word_embeddings=True), "layer")
    assert "model.embed_tokens.weight" in objective.names and "lm_head.weight" not in objective.names


@pytest.mark.parametrize("model_type, norm_weight", [("llama", "model.norm.weight"),
                                                     ("gpt_neox", "gpt_neox.final_layer_norm.weight")])
def test_biasbn_zeroes_rmsnorm_layernorm_and_biases_only(model_type, norm_weight):
    objective, d1, d2 = directions(tiny(model_type), "layer", "biasbn")
    assert norm_weight in objective.names
    for name, p in zip(objective.names, objective.params):
        zero = p.dim() == 1
        assert bool((d1[name] == 0).all()) == zero and bool((d2[name] == 0).all()) == zero, name


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox"])
def test_filter_units_are_the_rows_of_linear_weights_and_embeddings(model_type):
    """Linear weights are [out, in]: an output unit (GPT-NeoX's fused query_key_value: one of q, k, v's units) is
    a row; an embedding's unit is a token's row; an untied head's, a token's output row."""
    objective, d1, _ = directions(tiny(model_type), "filter")
    assert not conv1d_weight_names(objective.model)
    for name, w in zip(objective.names, objective.params):
        rows = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
        direction_rows = d1[name].reshape(rows.shape)
        assert torch.allclose(direction_rows.norm(dim=1), rows.norm(dim=1), rtol=1e-5), name
