"""Without a network: the hub fails fast with one sentence; local WikiText-2 runs with exp1.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[2]


# Loaded by the child through PYTHONPATH: every time.sleep is written down, so a test sees a retry's back-off.
SLEEP_RECORDER = """import time
_sleep = time.sleep
def _recorded(seconds):
    with open({path!r}, "a") as log:
        log.write(f"{{seconds}}\\n")
    _sleep(seconds)
time.sleep = _recorded
"""


def run_cli(args, env_updates, tmp_path):
    """The finished run.py process, and the seconds it spent in time.sleep (retry back-offs)."""
    hook, sleeps = tmp_path / "hook", tmp_path / "sleeps.txt"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLEEP_RECORDER.format(path=str(sleeps)))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update({"HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(hook), **env_updates})
    done = subprocess.run([sys.executable, "run.py", *args, "--output", str(tmp_path / "out")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    slept = sum(float(line) for line in sleeps.read_text().split()) if sleeps.exists() else 0.0
    return done, slept


@pytest.mark.parametrize("extra, offline", [
    ([], ""),                                                          # the hub dataset
    (["--set", "data.source=builtin"], ""),                            # the hub model
    (["--set", "data.source=builtin"], "1"),                           # HF_HUB_OFFLINE and nothing cached
])
def test_unreachable_hub_fails_fast_with_a_hint(tmp_path, extra, offline):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there: refused at once
    if offline:
        env["HF_HUB_OFFLINE"] = offline
    done, slept = run_cli(["--config", "config/base.yaml", "--stages", "train", *extra], env, tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE" in lines[0] and "config/quickstart.yaml" in lines[0]
    assert slept < 1  # failed at the first refusal: no retry loop (transformers/datasets back off for ~25 s)
    assert not (tmp_path / "out" / "base" / "default" / "seed-42" / "checkpoint.pt").exists()


@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2").is_dir(),
                    reason="needs ../shared/data (real WikiText-2 and the GPT-2 tokenizer), absent here")
def test_experiment1_on_real_wikitext_with_the_gpt2_tokenizer(tmp_path):
    # 16 wide on 32-token texts: the GPT-2 vocabulary's 50257 logits per token are most of the cost, not the check
    args = ["--config", "config/exp1.yaml", "--runs", "bs24-wd", "--stages", "train",
            "--set", "data.source=local", "--set", f"data.path={SHARED_DATA / 'wikitext-2'}",
            "--set", f"model.tokenizer={SHARED_DATA / 'gpt2-tokenizer'}", "--set", "model.init=scratch",
            "--set", "model.config={n_layer: 2, n_embd: 16, n_head: 2}", "--set", "data.n_train=48",
            "--set", "data.n_val=16", "--set", "data.n_test=16", "--set", "data.max_length=32",
            "--set", "train.epochs=1", "--set", "train.lr=0.05"]
    done, _ = run_cli(args, {"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "out" / "exp1" / "bs24-wd" / "seed-42"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["n_train_texts"] == 48 and metrics["config"]["train"]["batch_size"] == 24
    assert metrics["val_loss"][0] < metrics["init_val_loss"]
    assert metrics["n_parameters"] > 50257 * 16  # the real GPT-2 vocabulary's embeddings
    assert (folder / "checkpoint.pt").is_file() and (folder / "init.pt").is_file()
