"""Which layer and which kind of weight a parameter is, from its name.

The per-layer rotation (optimization.rotation) and the blockwise geometry (sharpness.geometry) both
group a model's parameters this way, so a "layer" means the same thing in both. Names follow Hugging
Face causal LMs (GPT-2: transformer.h.3.attn.c_attn.weight); other families fall back to their
top-level module.
"""

from __future__ import annotations

import re

KINDS = ("embeddings", "attention", "mlp", "layer_norm", "other")

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:h|layers?|blocks?)\.(\d+)\.")
_KIND_PATTERNS = (  # the first that matches names the kind
    ("layer_norm", re.compile(r"(?:^|\.)(?:ln_\w*|\w*layer_?norm\w*|\w*_norm|norm)\.")),
    ("embeddings", re.compile(r"(?:^|\.)(?:wte|wpe|embed\w*|lm_head)\.")),
    ("attention", re.compile(r"(?:^|\.)(?:attn|attention|self_attn|[qkv]_proj|o_proj)\.")),
    ("mlp", re.compile(r"(?:^|\.)(?:mlp|ffn|feed_forward|c_fc|fc\d?)\.")),
)


def parameter_kind(name: str) -> str:
    """embeddings, attention, mlp, layer_norm or other."""
    for kind, pattern in _KIND_PATTERNS:
        if pattern.search(name):
            return kind
    return "other"


def parameter_layer(name: str) -> str:
    """'layer N' for the N-th transformer block, 'embeddings' for token and position embeddings, else
    the parameter's top-level module (e.g. 'ln_f', GPT-2's final layer norm)."""
    match = _LAYER_INDEX.search(name)
    if match:
        return f"layer {int(match.group(1))}"
    if parameter_kind(name) == "embeddings":
        return "embeddings"
    parts = name.split(".")
    return parts[1] if parts[0] in ("transformer", "model") and len(parts) > 2 else parts[0]


def layer_groups(names: list[str]) -> dict[str, list[int]]:
    """{layer: positions of its parameters in `names`}, layers in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for position, name in enumerate(names):
        groups.setdefault(parameter_layer(name), []).append(position)
    return groups
