"""Checkpoint files: what training writes and every later stage reads.

A checkpoint is a plain dict loadable with `torch.load(path, weights_only=True)`:
  model         state_dict (fp32)
  model_config  dict that rebuilds the architecture with transformers (model_config_dict)
  config        the resolved RunConfig as a plain dict
  epoch         epochs completed when it was written
  tokenizer     a hub id, or 'tokenizer' (the folder beside the checkpoint)
  fingerprint   hash of the settings that determine the weights (see optimization.training)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.models import load_tokenizer, model_config_dict, model_from_config_dict
from utils.config import RunConfig, run_config_from_dict
from utils.errors import CorruptFileError, UserError
from utils.io import load_torch, save_torch

TOKENIZER_DIR = "tokenizer"


def checkpoint_dict(model, run: RunConfig, epoch: int, tokenizer_ref: str, fingerprint: str, **extra) -> dict:
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": model_config_dict(model),
        "config": run.to_dict(),
        "epoch": epoch,
        "tokenizer": tokenizer_ref,
        "fingerprint": fingerprint,
        **extra,
    }


def save_checkpoint(path: Path, model, run: RunConfig, epoch: int, tokenizer_ref: str, fingerprint: str, **extra):
    save_torch(path, checkpoint_dict(model, run, epoch, tokenizer_ref, fingerprint, **extra))


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's dict, after its checksum; CorruptFileError (exit 2) for a damaged file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (run the train stage first)")
    ckpt = load_torch(path)
    missing = [k for k in ("model", "model_config", "config", "epoch") if k not in ckpt]
    if missing:
        raise CorruptFileError(path, f"it lacks {', '.join(missing)}")
    return ckpt


@dataclass
class TrainedModel:
    model: torch.nn.Module
    tokenizer: object
    run: RunConfig
    checkpoint: dict
    path: Path


def load_trained(path: Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Model (eval mode, on `device`), tokenizer and run config of a checkpoint file."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    model = model_from_config_dict(ckpt["model_config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CorruptFileError(path, f"its weights do not fit its own model_config: {str(err).splitlines()[0]}") from None
    ref = ckpt.get("tokenizer") or ckpt["config"]["model"]["name"]
    tokenizer = load_tokenizer(str(path.parent / TOKENIZER_DIR) if ref == TOKENIZER_DIR else ref)
    run = run_config_from_dict(ckpt["config"])
    return TrainedModel(model.to(device).eval(), tokenizer, run, ckpt, path)
