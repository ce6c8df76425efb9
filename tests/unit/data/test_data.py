"""Data: the study's filter, local files, padding that never counts, and training orders."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data.batches import collate, count_targets, epoch_order, fixed_batches, tokenize
from data.corpus import BUILTIN_LONGEST_TEXT, builtin_lines, filter_texts, load_texts
from models.models import byte_tokenizer, train_bpe_tokenizer
from optimization.evaluation import evaluate, summed_token_loss
from config.schema import DataConfig


def test_filter_strips_drops_headings_and_short_lines_and_takes_the_first_n():
    lines = [" = Title = ", " ", " short line ", " " + "a" * 51 + " ", "=" + "b" * 60, "c" * 50, " " + "d" * 70]
    assert filter_texts(lines, 50, 10) == ["a" * 51, "d" * 70]
    assert filter_texts(lines, 50, 1) == ["a" * 51]


def test_builtin_corpus_is_deterministic_and_sized():
    assert list(itertools.islice(builtin_lines("train"), 50)) == list(itertools.islice(builtin_lines("train"), 50))
    assert list(itertools.islice(builtin_lines("train"), 20)) != list(itertools.islice(builtin_lines("test"), 20))
    texts = load_texts(DataConfig(source="builtin", n_train=30, n_val=7, n_test=5))
    assert (len(texts.train), len(texts.validation), len(texts.test)) == (30, 7, 5)
    assert all(len(t) > 50 and not t.startswith("=") and t == t.strip() for t in texts.train)
    assert len({len(t) for t in texts.train}) > 10  # lengths vary, so sorting means something


def test_builtin_longest_text_is_a_paragraph_of_six_longest_sentences():
    longest = ("The composer of the northern province premiered the surrounding forest , and the tropical composer "
               "followed in 2019 .")  # the longest choice for every slot of the longest form
    assert BUILTIN_LONGEST_TEXT == 6 * len(longest) + 5
    assert max(len(line.strip()) for line in itertools.islice(builtin_lines("train"), 20_000)) < BUILTIN_LONGEST_TEXT


def test_local_folder_of_raw_files_and_of_parquet(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        (raw / f"wiki.{split}.raw").write_text(
            " \n = Heading = \n" + "".join(f" {split} line number {i} " + "x" * 50 + " \n" for i in range(5)))
    texts = load_texts(DataConfig(source="local", path=str(raw), n_train=3, n_val=2, n_test=9))
    assert texts.train[0].startswith("train line number 0") and len(texts.train) == 3
    assert len(texts.validation) == 2 and texts.validation[1].startswith("valid line number 1")
    assert len(texts.test) == 5

    parquet = tmp_path / "parquet"
    parquet.mkdir()
    for split in ("train", "validation", "test"):
        table = pa.table({"text": [f" {split} {i} " + "y" * 60 for i in range(4)]})
        pq.write_table(table, parquet / f"{split}-00000-of-00001.parquet")
    texts = load_texts(DataConfig(source="local", path=str(parquet), n_train=4, n_val=4, n_test=4))
    assert texts.validation[3].startswith("validation 3")


def test_local_folder_without_a_split_is_a_clear_error(tmp_path):
    from utils.errors import UserError

    (tmp_path / "wiki.train.raw").write_text("x" * 80)
    with pytest.raises(UserError, match="has no validation split"):
        load_texts(DataConfig(source="local", path=str(tmp_path)))


def test_collate_pads_with_eos_masks_and_ignores_padding():
    batch = collate([torch.tensor([5, 6, 7]), torch.tensor([8])], pad_id=99)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 99, 99]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert count_targets(batch) == 2


def test_padded_batch_loss_equals_the_unpadded_sequences(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    texts = ["The river flows.", "In 1820 the castle was rebuilt by the bishop.", "A ship sank.", "Ok",
             "The album sold well in the northern province and topped the charts."]
    seqs = tokenize(texts, tokenizer, 64)
    assert len({len(s) for s in seqs}) == len(texts)
    model.eval()
    with torch.no_grad():
        padded_sum, padded_n = summed_token_loss(model, collate(seqs, tokenizer.eos_token_id))
        singles = [summed_token_loss(model, collate([s], tokenizer.eos_token_id)) for s in seqs]
    assert padded_n == sum(n for _, n in singles) == sum(len(s) - 1 for s in seqs)
    assert padded_sum.item() == pytest.approx(sum(s.item() for s, _ in singles), rel=1e-5)
    # and the token-weighted evaluation does not depend on how sequences are grouped into batches
    by_one = evaluate(model, fixed_batches(seqs, 1, tokenizer.eos_token_id), "cpu")
    by_four = evaluate(model, fixed_batches(seqs, 4, tokenizer.eos_token_id), "cpu")
    assert by_one == pytest.approx(by_four, rel=1e-6)
    assert by_one == pytest.approx(padded_sum.item() / padded_n, rel=1e-5)


def test_token_losses_are_summed_in_float64_with_an_unchanged_gradient(tiny_model_and_tokenizer):
    """Sharpness compares losses a few parts in 10⁷ apart: an fp32 sum of the token losses would round more."""
    import torch.nn.functional as F

    model, tokenizer = tiny_model_and_tokenizer
    model.eval()  # no dropout: both forward passes below see the same function
    batch = collate(tokenize(["The river flows into the harbour near the old city ." * 3, "A ship sank ."], tokenizer, 64),
                    tokenizer.eos_token_id)
    loss_sum, n = summed_token_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=-100).flatten()
    tokens = F.cross_entropy(logits.flatten(0, 1), targets, ignore_index=-100, reduction="none")
    assert loss_sum.dtype == torch.float64 and loss_sum.item() == tokens.double().sum().item()
    grad = torch.autograd.grad(loss_sum / n, model.transformer.wte.weight)[0]
    fp32_grad = torch.autograd.grad(tokens.sum() / n, model.transformer.wte.weight)[0]
    assert grad.dtype == torch.float32 and torch.allclose(grad, fp32_grad, rtol=1e-6, atol=1e-9)


def test_sorted_order_is_ascending_and_random_order_is_per_epoch_and_repeatable():
    lengths = [5, 3, 9, 3, 7, 1, 8, 2]
    order = epoch_order(lengths, "sorted", seed=0, epoch=0)
    assert [lengths[i] for i in order] == sorted(lengths)
    assert order == epoch_order(lengths, "sorted", seed=0, epoch=5)
    first, second = epoch_order(lengths, "random", 42, 0), epoch_order(lengths, "random", 42, 1)
    assert sorted(first) == list(range(len(lengths))) and first != second
    assert first == epoch_order(lengths, "random", 42, 0)
    assert first != epoch_order(lengths, "random", 43, 0)


def test_tokenizers_without_network():
    tok = byte_tokenizer()
    assert len(tok) == 257 and tok.eos_token_id == 256
    ids = tok("héllo")["input_ids"]
    assert len(ids) == len("héllo".encode()) and tok.decode(ids) == "héllo"
    texts = load_texts(DataConfig(source="builtin", n_train=50, n_val=1, n_test=1)).train
    bpe = train_bpe_tokenizer(texts, 300)
    assert len(bpe) == 300 and bpe.decode(bpe(texts[0])["input_ids"]) == texts[0]
    assert bpe.get_vocab() == train_bpe_tokenizer(texts, 300).get_vocab()  # deterministic
