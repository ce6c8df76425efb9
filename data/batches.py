"""Token sequences and the batches fed to the model.

Texts are tokenized once (truncated to max_length). A batch is padded to its longest sequence with
the EOS token, `attention_mask` marks the real tokens, and `labels` is -100 on padding, so padding
never enters a loss. Training order is either reshuffled every epoch from the run's seed
(`random`) or ascending token length (`sorted`: the short-to-long curriculum).
"""

from __future__ import annotations

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


def tokenize(texts: list[str], tokenizer, max_length: int) -> list[torch.Tensor]:
    ids = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]
    return [torch.tensor(seq, dtype=torch.long) for seq in ids]


def collate(sequences: list[torch.Tensor], pad_id: int) -> Batch:
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = seq
        attention_mask[row, : len(seq)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def epoch_order(lengths: list[int], order: str, seed: int, epoch: int) -> list[int]:
    """Indices of the training sequences for one epoch; a pure function of its arguments, so a
    resumed run sees the same order as an uninterrupted one."""
    if order == "sorted":
        return sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return np.random.default_rng([seed, epoch]).permutation(len(lengths)).tolist()


def batches_in_order(sequences: list[torch.Tensor], indices: list[int], batch_size: int, pad_id: int):
    for start in range(0, len(indices), batch_size):
        yield collate([sequences[i] for i in indices[start : start + batch_size]], pad_id)


def fixed_batches(sequences: list[torch.Tensor], batch_size: int, pad_id: int) -> list[Batch]:
    """Evaluation batches, grouped by length to waste little compute on padding (the token-weighted
    loss does not depend on how sequences are grouped)."""
    by_length = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), i))
    return list(batches_in_order(sequences, by_length, batch_size, pad_id))


def count_targets(batch: Batch) -> int:
    """Number of predicted tokens in a batch: every non-padded token but the first of each sequence."""
    return int((batch["labels"][:, 1:] != -100).sum())


def to_device(batch: Batch, device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
