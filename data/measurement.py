"""Fixed evaluation sets: the same texts for every run and seed of an experiment.

Sharpness and landscapes draw their texts here, by index into a filtered split, with a seed of their
own; the texts are tokenized with the run's tokenizer and batched. A set is a pure function of its texts, seed and
tokenizer, so it is built again (once per command: optimization.measured_run) rather than saved; sharpness.json
records its indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data.batches import Batch, count_targets, fixed_batches, tokenize


@dataclass
class FixedSet:
    batches: list[Batch]
    indices: list[int]  # positions of the texts in the filtered split

    @property
    def n_tokens(self) -> int:
        return sum(count_targets(b) for b in self.batches)


def draw_indices(n_texts: int, n_wanted: int, seed: int) -> list[int]:
    """`n_wanted` distinct positions out of `n_texts` (all of them if there are fewer), by seed."""
    n = min(n_wanted, n_texts)
    return sorted(np.random.default_rng(seed).choice(n_texts, size=n, replace=False).tolist())


def fixed_set(texts: list[str], n_batches: int, batch_size: int, seed: int, tokenizer, max_length: int) -> FixedSet:
    indices = draw_indices(len(texts), n_batches * batch_size, seed)
    sequences = tokenize([texts[i] for i in indices], tokenizer, max_length)
    return FixedSet(fixed_batches(sequences, batch_size, tokenizer.eos_token_id), indices)


def measurement_set(train_texts: list[str], cfg, tokenizer, max_length: int) -> FixedSet:
    """The measurement set of every Hessian metric (the sharpness and geometry stages): `cfg` is the run's
    SharpnessConfig (batches, batch_size, seed), so both stages see the same texts, batched the same way."""
    return fixed_set(train_texts, cfg.batches, cfg.batch_size, cfg.seed, tokenizer, max_length)


def same_texts(a: FixedSet, b: FixedSet) -> bool:
    return a.indices == b.indices and len(a.batches) == len(b.batches) and all(
        torch.equal(x[k], y[k]) for x, y in zip(a.batches, b.batches) for k in x)
