"""run.py's start-up paths in-process (tests/e2e/test_startup.py runs them in a fresh interpreter)."""

from __future__ import annotations

import sys

import pytest

import run


@pytest.mark.parametrize("config", ["config/quickstart.yaml", "config/exp4-family-small.yaml"])
def test_list_imports_no_heavy_library(config, monkeypatch, capsys):
    """A scratch model's config and optimizer_args are checked by their libraries (transformers, pytorch-optimizer,
    both loading torch: seconds); `--list` leaves those checks to the run. A None in sys.modules fails any import."""
    for name in ("torch", "transformers", "pytorch_optimizer", "optuna"):
        monkeypatch.setitem(sys.modules, name, None)
    assert run.main(["--config", config, "--list"]) == 0
    assert capsys.readouterr().out.startswith(config.split("/")[1].removesuffix(".yaml") + ": ")
