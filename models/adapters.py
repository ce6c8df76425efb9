"""LoRA adapters (model.adapter) through peft, and the two weight spaces of an adapted model.

A LoRA run freezes the base model and trains, for every targeted layer W (by default GPT-2's Conv1D c_attn,
c_proj, c_fc; peft's per-architecture defaults for other models: target_modules), two small matrices: A (r × in,
Kaiming-random at the start) and B (out × r, zero at the start), so that the layer
computes x·W + (alpha/r)·x·Aᵀ·Bᵀ. Its weights live in two spaces:
  adapter  the A and B tensors: what the optimizer moves (requires_grad), and what its checkpoints hold
  merged   the full model with W + (alpha/r)·(B·A)ᵀ folded in: the same function, comparable with a fully
           fine-tuned model of the same architecture
"""

from __future__ import annotations

import sys

import torch

from config.schema import AdapterConfig
from utils.errors import ConfigError

ADAPTABLE = ("Linear", "Conv1D", "Conv1d", "Conv2d", "Embedding")  # the layer types peft's LoRA wraps


def is_adapted(model) -> bool:
    """Whether `model` carries a peft adapter (peft is imported only by runs that use one)."""
    return "peft" in sys.modules and isinstance(model, sys.modules["peft"].PeftModel)


def check_targets(model, targets: list[str]) -> None:
    """Every entry of model.adapter.target_modules must name some module, as peft matches a list: the module's
    name or its last dotted parts (peft alone adapts whatever matches and ignores the rest)."""
    names = [name for name, _ in model.named_modules()]
    unmatched = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if unmatched:
        candidates = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                             if type(module).__name__ in ADAPTABLE})
        raise ConfigError(f"model.adapter.target_modules: {', '.join(unmatched)} match{'es' if len(unmatched) == 1 else ''} "
                          f"no module of the model (its layers LoRA can adapt: {', '.join(candidates)})")


def target_modules(model, cfg: AdapterConfig) -> list[str]:
    """model.adapter.target_modules; left at its default (GPT-2's layers) for another architecture, peft's
    default targets for that architecture (llama: q_proj, v_proj; gpt_neox: query_key_value)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    model_type = model.config.model_type
    if model_type == "gpt2" or cfg.target_modules != AdapterConfig().target_modules:
        return list(cfg.target_modules)
    if model_type not in PEFT_DEFAULTS:
        raise ConfigError(f"model.adapter.target_modules: peft has no default LoRA targets for model type "
                          f"{model_type!r}; name the layers to adapt")
    return list(PEFT_DEFAULTS[model_type])


def add_adapter(model, cfg: AdapterConfig, seed: int):
    """The model wrapped with fresh LoRA layers drawn from `seed`; only their weights require a gradient."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules(model, cfg)
    check_targets(model, targets)

    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2's Conv1D stores W as [in, out]
                        bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"model.adapter.target_modules {targets}: {str(err).splitlines()[0]}") from None


def adapted_modules(model) -> list[str]:
    """The last names of the modules that carry LoRA layers (q_proj, v_proj), in the model's order: what peft
    adapted, whether named by model.adapter.target_modules or taken from peft's per-architecture defaults."""
    from peft.tuners.lora import LoraLayer

    return list(dict.fromkeys(name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                              if isinstance(module, LoraLayer)))


def trainable_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def merged(model):
    """The full model with the adapter folded into its weights, every weight trainable (a copy-free merge:
    `model` itself is changed; load it again to have the adapter back)."""
    plain = model.merge_and_unload()
    plain.requires_grad_(True)
    return plain
