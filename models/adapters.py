"""LoRA adapters (model.adapter) through peft, and the two weight spaces of an adapted model.

A LoRA run freezes the base model and trains, for every targeted layer W (GPT-2's Conv1D c_attn, c_proj,
c_fc), two small matrices: A (r × in, Kaiming-random at the start) and B (out × r, zero at the start), so
that the layer computes x·W + (alpha/r)·x·Aᵀ·Bᵀ. Its weights live in two spaces:
  adapter  the A and B tensors: what the optimizer moves (requires_grad), and what its checkpoints hold
  merged   the full model with W + (alpha/r)·(B·A)ᵀ folded in: the same function, comparable with a fully
           fine-tuned model of the same architecture
"""

from __future__ import annotations

import sys

import torch

from utils.config import AdapterConfig
from utils.errors import UserError


def is_adapted(model) -> bool:
    """Whether `model` carries a peft adapter (peft is imported only by runs that use one)."""
    return "peft" in sys.modules and isinstance(model, sys.modules["peft"].PeftModel)


def add_adapter(model, cfg: AdapterConfig, seed: int):
    """The model wrapped with fresh LoRA layers drawn from `seed`; only their weights require a gradient."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2's Conv1D stores W as [in, out]
                        bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"model.adapter.target_modules {cfg.target_modules}: {str(err).splitlines()[0]}") from None


def trainable_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def merged(model):
    """The full model with the adapter folded into its weights, every weight trainable (a copy-free merge:
    `model` itself is changed; load it again to have the adapter back)."""
    plain = model.merge_and_unload()
    plain.requires_grad_(True)
    return plain
