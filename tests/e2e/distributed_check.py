"""Run by tests/e2e/test_torchrun.py, as one process and on N forked gloo ranks: the Objective's loss,
gradient and H·v, a full sharpness measurement and an evaluation of one float64 tiny GPT-2 on 5 fixed batches
(uneven shares across ranks), written by rank 0 to the file it is given. Each rank also tries to
write `<file>.rank-<r>`: only rank 0 may succeed. Lanczos stops at 12 steps, converged or not: the numbers are
compared between the two runs, not with the true eigenvalues, and fewer steps amplify the ranks' other order of
summation less."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import torch

from data.batches import fixed_batches, tokenize
from data.corpus import builtin_lines
from models.models import build_model, byte_tokenizer
from optimization.evaluation import evaluate
from optimization.objective import Objective
from sharpness.sharpness_stage import measure_sharpness
from utils import distributed
from config.schema import ModelConfig, SharpnessConfig
from utils.io import save_torch, write_json


def main(out: Path) -> None:
    torch.set_num_threads(1)
    distributed.start("cpu")
    tokenizer = byte_tokenizer()
    cfg = ModelConfig(init="scratch", config={"n_layer": 2, "n_embd": 16, "n_head": 2, "n_positions": 48,
                                              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    model = build_model(cfg, tokenizer, seed=0).double()
    texts = list(islice((line for line in builtin_lines("train") if len(line) > 60), 18))
    batches = fixed_batches(tokenize(texts, tokenizer, 48), 4, tokenizer.eos_token_id)  # 5 batches: 3 + 2 shares
    sharpness = SharpnessConfig(max_iter=12, tol=1e-6, epsilons=[1e-3], random_directions=2, worst_case_steps=2,
                                trace_samples=6)
    with distributed.collective():
        objective = Objective(model, batches)
        loss, grad = objective.loss_and_grad()
        vector = torch.randn(objective.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        hvp = objective.hvp(vector)
        measured = measure_sharpness(objective, sharpness)
        evaluated = evaluate(model, batches, torch.device("cpu"))
        write_json(Path(f"{out}.rank-{distributed.rank()}"), {"rank": distributed.rank()})
    save_torch(out.with_suffix(".pt"), {"grad": grad, "hvp": hvp})
    write_json(out, {"world_size": distributed.world_size(), "loss": loss, "evaluate": evaluated,
                     "local_batches": len(objective.batches), "lambda_max": measured["lambda_max"],
                     "lambda_min": measured["lambda_min"], "trace": measured["trace"]["mean"],
                     "eps_sharpness": measured["eps_sharpness"]["0.001"]["eigvec"],
                     "worst_case": measured["worst_case"]["0.001"]["value_pct"]})
    distributed.stop()
