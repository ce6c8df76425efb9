"""Tokenizers and causal language models: from the hub, a local folder, or from scratch.

model.tokenizer
  ''            the tokenizer of model.name
  hub id/folder AutoTokenizer.from_pretrained
  'bytes'       byte-level: 256 byte tokens + <|endoftext|> (no merges, no training)
  'bpe'         byte-level BPE of model.bpe_vocab_size tokens, trained on the run's training texts
Tokenizers that are not hub ids are saved with the run (`tokenizer/`) and reloaded from there.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from config.checks import scratch_model_config
from config.schema import ModelConfig
from utils.errors import UserError
from utils.hub import load_from_hub

EOS = "<|endoftext|>"

# ----------------------------------------------------------------------------------------------
# Tokenizers.

def tokenizer_is_hub_id(cfg: ModelConfig) -> bool:
    name = cfg.tokenizer or cfg.name
    return cfg.tokenizer not in ("bytes", "bpe") and not Path(name).expanduser().is_dir()


def _wrap(tokenizer_object) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=EOS)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return _wrap(tok)


def train_bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return _wrap(tok)


def load_tokenizer(name: str, revision: str = ""):
    """A tokenizer from a folder, the Hugging Face cache or the hub (at `revision`: '' for the default branch)."""
    if Path(name).expanduser().is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(Path(name).expanduser()))
        except (OSError, ValueError) as err:
            raise UserError(f"could not load a tokenizer from {name}: {str(err).splitlines()[0]}") from None
    return load_from_hub(AutoTokenizer.from_pretrained, name, "tokenizer", **_revision(revision))


def build_tokenizer(cfg: ModelConfig, train_texts: list[str]):
    if cfg.tokenizer == "bytes":
        tokenizer = byte_tokenizer()
    elif cfg.tokenizer == "bpe":
        tokenizer = train_bpe_tokenizer(train_texts, cfg.bpe_vocab_size)
    else:
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.name, "" if cfg.tokenizer else cfg.revision)
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {cfg.tokenizer or cfg.name!r} has no end-of-text token to pad with")
    return tokenizer


# ----------------------------------------------------------------------------------------------
# Models.

def _revision(revision: str) -> dict:
    """from_pretrained's revision argument: none for the default branch."""
    return {"revision": revision} if revision else {}


def build_model(cfg: ModelConfig, tokenizer, seed: int):
    """A causal LM in fp32 with SDPA attention (fast for training and forward passes): model.name (at
    model.revision) for init: pretrained, else random weights of scratch_model_config's architecture."""
    if cfg.init == "pretrained":
        name = cfg.name
        if Path(name).expanduser().is_dir():
            model = AutoModelForCausalLM.from_pretrained(str(Path(name).expanduser()), attn_implementation="sdpa",
                                                         dtype=torch.float32)
        else:
            model = load_from_hub(AutoModelForCausalLM.from_pretrained, name, "model", attn_implementation="sdpa",
                                  dtype=torch.float32, **_revision(cfg.revision))
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise UserError(f"tokenizer has {len(tokenizer)} tokens but model {name!r} embeds only "
                            f"{model.get_input_embeddings().num_embeddings}")
        return model
    config = scratch_model_config(cfg, len(tokenizer), tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def model_from_config_dict(config: dict):
    """Rebuild an (uninitialised) model from `model_config_dict`, as stored in checkpoints."""
    from transformers import AutoConfig

    config = dict(config)
    model_config = AutoConfig.for_model(config.pop("model_type"), **config)
    return AutoModelForCausalLM.from_config(model_config, attn_implementation="sdpa", dtype=torch.float32)


def model_config_dict(model) -> dict:
    """The model's configuration as plain JSON types (loadable with torch.load(weights_only=True))."""
    import json

    return json.loads(model.config.to_json_string(use_diff=False))
