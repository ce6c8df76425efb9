"""Causal LMs of any decoder-only architecture from scratch, and the checks of their shapes."""

from __future__ import annotations

import pytest

from config.schema import AdapterConfig, ModelConfig
from models.adapters import add_adapter, target_modules
from models.models import build_model, byte_tokenizer
from utils.errors import ConfigError

LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
NEOX = {"model_type": "gpt_neox", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 64}


@pytest.mark.parametrize("shape, model_class", [(LLAMA, "LlamaForCausalLM"), (NEOX, "GPTNeoXForCausalLM"),
                                                ({**LLAMA, "model_type": "qwen2"}, "Qwen2ForCausalLM"),
                                                ({"n_layer": 2, "n_embd": 32, "n_head": 2}, "GPT2LMHeadModel")])
def test_model_type_picks_the_architecture_trained_from_scratch(shape, model_class):
    tokenizer = byte_tokenizer()
    model = build_model(ModelConfig(init="scratch", config=shape), tokenizer, seed=0)
    assert type(model).__name__ == model_class and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer) and model.config.eos_token_id == tokenizer.eos_token_id
    again = build_model(ModelConfig(init="scratch", config=shape), tokenizer, seed=0)
    assert all((a == b).all() for a, b in zip(model.parameters(), again.parameters()))  # the seed draws the weights


@pytest.mark.parametrize("config, message", [
    ({"model_type": "llama", "n_embd": 32}, "'n_embd' is not a LlamaConfig field"),
    ({"model_type": "lama"}, "model_type 'lama' is not a transformers model type"),
    ({**LLAMA, "hidden_size": 30}, r"hidden_size \(30\) must be divisible by num_attention_heads \(4\)"),
    ({**NEOX, "max_position_embeddings": 16}, r"max_position_embeddings \(16\) is shorter than data.max_length \(32\)"),
    ({**LLAMA, "pad_token_id": 0}, "'pad_token_id' is set from the tokenizer"),
    ({**NEOX, "model_type": "qwen2"},  # its default of 32 key/value heads, too many for 4 heads
     r"num_key_value_heads \(32\) must divide num_attention_heads \(4\); the Qwen2Config default is 32"),
    ({**LLAMA, "num_key_value_heads": 3}, r"num_key_value_heads \(3\) must divide num_attention_heads \(4\)"),
])
def test_a_scratch_shape_that_cannot_be_built_is_one_clear_error(write_config, config, message):
    import yaml

    from config.loading import load_experiment

    text = ("data: {source: builtin, max_length: 32}\nmodel:\n  init: scratch\n  tokenizer: bytes\n"
            f"  config: {yaml.safe_dump(config, default_flow_style=True).strip()}\n")  # not TINY's GPT-2 fields
    with pytest.raises(ConfigError, match=message):
        load_experiment(write_config(text, tiny=False), [])


def test_a_gpt2_preset_does_not_fit_another_architecture(tiny_experiment):
    with pytest.raises(ConfigError, match="model.arch 'gpt2' is a GPT-2 preset; it does not fit model_type 'llama'"):
        tiny_experiment("model: {arch: gpt2, config: {model_type: llama}}\n")


def test_a_revision_is_for_hub_models_only(tiny_experiment, tmp_path):
    with pytest.raises(ConfigError, match="model.revision: a revision selects a version of a hub model; .* is trained "
                                          "from scratch"):
        tiny_experiment("model: {revision: step1000}\n")
    with pytest.raises(ConfigError, match="is a local folder"):
        tiny_experiment(f"model: {{init: pretrained, name: {tmp_path}, revision: step1000}}\n")


@pytest.mark.parametrize("shape, targets", [(LLAMA, ["q_proj", "v_proj"]), (NEOX, ["query_key_value"]),
                                            ({"n_layer": 2, "n_embd": 32, "n_head": 2}, ["c_attn", "c_proj", "c_fc"])])
def test_lora_targets_default_to_peft_s_for_the_architecture_and_gpt2_keeps_its_own(shape, targets):
    model = build_model(ModelConfig(init="scratch", config=shape), byte_tokenizer(), seed=0)
    assert target_modules(model, AdapterConfig(type="lora")) == targets
    assert target_modules(model, AdapterConfig(type="lora", target_modules=["o_proj"])) == ["o_proj"]  # as written
    adapted = add_adapter(model, AdapterConfig(type="lora", r=2), seed=0)
    assert all(".lora_" in name for name, p in adapted.named_parameters() if p.requires_grad)
    assert {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in adapted.named_parameters()
            if ".lora_A." in name} == set(targets)


def test_model_revision_reaches_the_hub_for_the_model_and_its_tokenizer(monkeypatch):
    import models.models

    asked = []

    def from_hub(load, name, what, **kwargs):
        asked.append((what, name, kwargs.get("revision")))
        if what == "tokenizer":
            return byte_tokenizer()
        return build_model(ModelConfig(init="scratch", config=NEOX), byte_tokenizer(), seed=0)

    monkeypatch.setattr(models.models, "load_from_hub", from_hub)
    cfg = ModelConfig(name="EleutherAI/pythia-14m", revision="step1000")
    build_model(cfg, models.models.build_tokenizer(cfg, []), seed=0)
    build_model(ModelConfig(name="EleutherAI/pythia-14m"), byte_tokenizer(), seed=0)
    models.models.build_tokenizer(ModelConfig(name="EleutherAI/pythia-14m", revision="step1000", tokenizer="gpt2"), [])
    assert asked == [("tokenizer", "EleutherAI/pythia-14m", "step1000"), ("model", "EleutherAI/pythia-14m", "step1000"),
                     ("model", "EleutherAI/pythia-14m", None),
                     ("tokenizer", "gpt2", None)]  # another tokenizer than the model's: its default branch
