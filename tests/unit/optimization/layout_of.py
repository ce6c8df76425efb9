"""The layout of a last.pt: its keys, nested, with the kind of each value (a tensor's dtype), but not the values."""

from __future__ import annotations

import torch

OPAQUE = ("model", "model_config", "config")  # the weights and configs: their keys are the model's and the schema's


def layout_of(value, key: str = ""):
    if isinstance(value, dict):
        if key in OPAQUE:
            return "dict"
        return {str(k): layout_of(v, str(k)) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return f"tensor {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)):
        return type(value).__name__
    return type(value).__name__
