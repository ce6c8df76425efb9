"""Checkpoint files: what training writes and every later stage reads.

A checkpoint is a plain dict loadable with `torch.load(path, weights_only=True)`:
  model         state_dict (fp32)
  model_config  dict that rebuilds the architecture with transformers (model_config_dict)
  config        the resolved RunConfig as a plain dict
  epoch         epochs completed when it was written
  tokenizer     a hub id, or 'tokenizer' (the folder beside the checkpoint)
  fingerprint   hash of the settings that determine the weights (see optimization.training)
A LoRA run's (model.adapter) init.pt holds the whole model, the frozen base and the adapter at its start;
its checkpoint.pt and last.pt hold only the adapter's weights and name their base:
  base          {"file": "init.pt", "sha256": its checksum, "model": model.name}
so a checkpoint is a few MB, and loading one checks that the base it was trained on is still the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.adapters import add_adapter, is_adapted, merged, trainable_names
from models.models import load_tokenizer, model_config_dict, model_from_config_dict
from config.loading import run_config_from_dict
from config.schema import RunConfig
from utils.errors import CorruptFileError, UserError
from utils.io import load_torch, recorded_sha256, save_torch

TOKENIZER_DIR = "tokenizer"


def checkpoint_dict(model, run: RunConfig, epoch: int, tokenizer_ref: str, fingerprint: str, base: Path | None = None,
                    **extra) -> dict:
    """`base`: for an adapted model, the init.pt that holds its frozen weights; only the adapter is then kept."""
    state = model.state_dict()
    if base is not None:
        kept = set(trainable_names(model))
        state = {k: v for k, v in state.items() if k in kept}
        extra["base"] = {"file": base.name, "sha256": recorded_sha256(base), "model": run.model.name}
    return {
        "model": {k: v.detach().cpu() for k, v in state.items()},
        "model_config": model_config_dict(model.get_base_model() if is_adapted(model) else model),
        "config": run.to_dict(),
        "epoch": epoch,
        "tokenizer": tokenizer_ref,
        "fingerprint": fingerprint,
        **extra,
    }


def save_checkpoint(path: Path, model, run: RunConfig, epoch: int, tokenizer_ref: str, fingerprint: str, **extra):
    save_torch(path, checkpoint_dict(model, run, epoch, tokenizer_ref, fingerprint, **extra))


def load_weights(model, ckpt: dict, path: Path) -> None:
    """Put a checkpoint's weights into `model` (built like the run's): all of them, or for an adapter-only
    checkpoint its base's (checked against the checksum it names) and then the adapter's."""
    state = ckpt["model"]
    try:
        if "base" in ckpt:
            base_path = Path(path).parent / ckpt["base"]["file"]
            if not base_path.is_file() or recorded_sha256(base_path) != ckpt["base"]["sha256"]:
                raise CorruptFileError(path, f"its base weights {base_path} are missing or are not the ones it was "
                                             "trained on")
            model.load_state_dict(read_checkpoint(base_path)["model"])
            if sorted(state) != sorted(trainable_names(model)):
                raise RuntimeError("its adapter tensors are not the model's")
            model.load_state_dict(state, strict=False)
        else:
            model.load_state_dict(state)
    except RuntimeError as err:
        raise CorruptFileError(path, f"its weights do not fit its own model_config: {str(err).splitlines()[0]}") from None


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


def tokenizer_ref(ckpt: dict) -> str:
    """A checkpoint's tokenizer: a hub id, or TOKENIZER_DIR (the folder beside the checkpoint)."""
    return ckpt.get("tokenizer") or ckpt["config"]["model"]["name"]


@dataclass
class TrainedModel:
    model: torch.nn.Module
    tokenizer: object
    run: RunConfig
    checkpoint: dict
    path: Path

    @property
    def tokenizer_identity(self) -> str:
        return tokenizer_identity(tokenizer_ref(self.checkpoint), self.path.parent, self.run)


def tokenizer_identity(ref: str, folder: Path, run: RunConfig) -> str:
    """Which tokenizer a checkpoint's `ref` names (its `folder`'s TOKENIZER_DIR, or a hub id), for what is tokenized
    once per command: the saved folder's recorded checksum, or the hub id at the revision it is loaded from."""
    if ref == TOKENIZER_DIR:
        return recorded_sha256(folder / TOKENIZER_DIR)
    return f"{ref}@{run.model.revision if ref == run.model.name else ''}"


def load_trained(path: Path, device: torch.device | str = "cpu", space: str = "adapter") -> TrainedModel:
    """Model (eval mode, on `device`), tokenizer and run config of a checkpoint file. A LoRA run's model is
    in `space` (models.adapters): the adapted model, whose trainable weights are the adapter's, or the merged
    full model; any other run's model is the same in both."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    run = run_config_from_dict(ckpt["config"])
    model = model_from_config_dict(ckpt["model_config"])
    if run.model.adapter.type != "none":
        model = add_adapter(model, run.model.adapter, seed=0)  # its weights come from the files
    load_weights(model, ckpt, path)
    if is_adapted(model) and space == "merged":
        model = merged(model)
    ref = tokenizer_ref(ckpt)
    if ref == TOKENIZER_DIR:
        tokenizer = load_tokenizer(str(path.parent / TOKENIZER_DIR))
    else:  # model.name's own tokenizer is that of its revision
        tokenizer = load_tokenizer(ref, run.model.revision if ref == run.model.name else "")
    return TrainedModel(model.to(device).eval(), tokenizer, run, ckpt, path)
