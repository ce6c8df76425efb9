"""Fail fast, with one sentence, when the Hugging Face hub is needed but cannot be reached.

Without this, transformers and datasets retry for ~25-50 s and end in a traceback."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from utils.errors import UserError

OFFLINE_HINT = ("to run offline, set HF_HUB_OFFLINE=1 with the files already cached, point model.name / "
                "model.tokenizer / data.path at local folders, or try config/quickstart.yaml")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def require_hub(what: str) -> None:
    """Raise a UserError unless the hub answers, or HF_HUB_OFFLINE asks the libraries to use their cache."""
    if not hub_offline() and not hub_reachable():
        raise UserError(f"cannot reach the Hugging Face hub to fetch {what}; {OFFLINE_HINT}")


def load_from_hub(load, name: str, what: str, **kwargs):
    """`load(name, **kwargs)` (a from_pretrained): from the local cache first, then from the hub."""
    try:
        return load(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if hub_offline():
        raise UserError(f"{what} {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {OFFLINE_HINT}")
    require_hub(f"{what} {name!r}")
    try:
        return load(name, **kwargs)
    except OSError as err:
        raise UserError(f"could not load {what} {name!r} from the hub: {str(err).splitlines()[0]}") from None
