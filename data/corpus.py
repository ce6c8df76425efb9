"""Raw texts of the three splits, filtered the way the study did.

Sources:
  hub      datasets' `wikitext` / `wikitext-2-raw-v1` (needs the network or a cache)
  local    a folder with wiki.{train,valid,test}.{raw,tokens}, {train,valid(ation),test}.txt or
           {train,validation,test}*.parquet (a `text` column), read with datasets' builders
  builtin  a synthetic encyclopedia generated here from a fixed seed: no network, no files, the same
           texts on every machine and Python version. It has headings, blank and short lines (so the
           filter has work to do) and paragraphs of 1-6 sentences (so length sorting matters).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from utils.config import DataConfig
from utils.errors import UserError
from utils.hub import require_hub

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": ("train",), "validation": ("valid", "validation", "val"), "test": ("test",)}


@dataclass
class Texts:
    train: list[str]
    validation: list[str]
    test: list[str]


def keep_text(line: str, min_length: int) -> bool:
    """The study's filter, applied to a stripped line: long enough and not a '= Heading ='."""
    return len(line) > min_length and not line.startswith("=")


def filter_texts(lines, min_length: int, limit: int) -> list[str]:
    """Strip lines, keep those that pass `keep_text`, and return the first `limit` of them."""
    kept = []
    for line in lines:
        line = line.strip()
        if keep_text(line, min_length):
            kept.append(line)
            if len(kept) == limit:
                break
    return kept


def load_texts(cfg: DataConfig) -> Texts:
    limits = {"train": cfg.n_train, "validation": cfg.n_val, "test": cfg.n_test}
    if cfg.source == "builtin":
        lines = {split: builtin_lines(split) for split in SPLITS}
    elif cfg.source == "local":
        lines = _local_lines(Path(cfg.path).expanduser())
    else:
        lines = _hub_lines(cfg.dataset, cfg.subset)
    texts = {split: filter_texts(lines[split], cfg.min_text_length, limits[split]) for split in SPLITS}
    for split, kept in texts.items():
        if not kept:
            raise UserError(f"no {split} text is longer than {cfg.min_text_length} characters in data source {cfg.source!r}")
    return Texts(**texts)


# ----------------------------------------------------------------------------------------------

def _hub_lines(dataset: str, subset: str) -> dict:
    require_hub(f"dataset {dataset}/{subset}")
    from datasets import load_dataset

    try:
        ds = load_dataset(dataset, subset)
    except Exception as err:  # datasets raises many types for "not cached / not reachable"
        raise UserError(f"could not load dataset {dataset}/{subset} from the hub or its cache ({type(err).__name__}); "
                        "use data.source: local with data.path, or data.source: builtin") from None
    return {split: ds[split]["text"] for split in SPLITS}


def _find_split_files(folder: Path, split: str) -> list[Path]:
    names = []
    for alias in _SPLIT_ALIASES[split]:
        names += [f"wiki.{alias}.raw", f"wiki.{alias}.tokens", f"{alias}.txt"]
    for name in names:
        if (folder / name).is_file():
            return [folder / name]
    for alias in _SPLIT_ALIASES[split]:
        parquet = sorted(folder.glob(f"{alias}-*.parquet")) + sorted(folder.glob(f"{alias}.parquet"))
        if parquet:
            return parquet
    return []


def _local_lines(folder: Path) -> dict:
    files = {split: _find_split_files(folder, split) for split in SPLITS}
    missing = [split for split, found in files.items() if not found]
    if missing:
        raise UserError(f"data.path {folder} has no {missing[0]} split (expected wiki.{_SPLIT_ALIASES[missing[0]][0]}.raw, "
                        f"wiki.{_SPLIT_ALIASES[missing[0]][0]}.tokens, {_SPLIT_ALIASES[missing[0]][0]}.txt or "
                        f"{missing[0]}-*.parquet)")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    lines = {}
    for split, paths in files.items():
        builder = "parquet" if paths[0].suffix == ".parquet" else "text"
        try:
            ds = load_dataset(builder, data_files=[str(p) for p in paths], split="train")
        except Exception as err:
            raise UserError(f"could not read {paths[0]}: {err}") from None
        if "text" not in ds.column_names:
            raise UserError(f"{paths[0]} has no 'text' column (columns: {', '.join(ds.column_names)})")
        lines[split] = ds["text"]
    return lines


# ----------------------------------------------------------------------------------------------
# The builtin corpus.

_SUBJECTS = {
    "river": ("flows", "floods", "drains", "crosses", "feeds"),
    "castle": ("stands", "overlooks", "guards", "dominates", "faces"),
    "composer": ("wrote", "conducted", "revised", "premiered", "published"),
    "army": ("marched", "besieged", "defended", "captured", "abandoned"),
    "ship": ("sailed", "sank", "carried", "escorted", "reached"),
    "species": ("inhabits", "migrates", "feeds", "breeds", "survives"),
    "album": ("sold", "debuted", "featured", "topped", "included"),
    "bishop": ("founded", "consecrated", "visited", "endowed", "reformed"),
    "railway": ("connects", "serves", "links", "reached", "replaced"),
    "storm": ("struck", "weakened", "crossed", "damaged", "formed"),
}
_ADJECTIVES = ("northern", "ancient", "large", "small", "famous", "early", "eastern", "royal", "modern",
               "coastal", "wooden", "second", "tropical", "central", "later", "western")
_PLACES = ("the valley", "the old city", "the harbour", "the northern province", "the coast", "the capital",
           "the island", "the mountains", "the lake district", "the border region", "the southern plain")
_OBJECTS = ("a new bridge", "the first symphony", "several villages", "the main road", "a small fleet",
            "the cathedral", "three singles", "the eastern wall", "a local school", "the surrounding forest")
_CONNECTIVES = ("In", "By", "Around", "Before", "After")
_TITLES = ("History", "Geography", "Reception", "Early life", "Design", "Legacy", "Background", "Route")


def _sentence(rng: random.Random) -> str:
    subject = rng.choice(sorted(_SUBJECTS))
    verb = rng.choice(_SUBJECTS[subject])
    year = rng.randrange(1200, 2020)
    form = rng.randrange(4)
    if form == 0:
        return f"The {rng.choice(_ADJECTIVES)} {subject} {verb} {rng.choice(_OBJECTS)} near {rng.choice(_PLACES)} ."
    if form == 1:
        return f"{rng.choice(_CONNECTIVES)} {year} , the {subject} {verb} {rng.choice(_OBJECTS)} ."
    if form == 2:
        return (f"The {subject} of {rng.choice(_PLACES)} {verb} {rng.choice(_OBJECTS)} , and the "
                f"{rng.choice(_ADJECTIVES)} {rng.choice(sorted(_SUBJECTS))} followed in {year} .")
    return f"According to records from {year} , the {rng.choice(_ADJECTIVES)} {subject} {verb} in {rng.choice(_PLACES)} ."


def builtin_lines(split: str):
    """An endless, deterministic stream of wiki-like lines for one split (different seed per split)."""
    rng = random.Random(f"builtin-corpus-{split}")
    while True:
        kind = rng.random()
        if kind < 0.1:
            yield f" = {rng.choice(_TITLES)} = "
        elif kind < 0.2:
            yield " "
        elif kind < 0.25:
            yield f" {_sentence(rng)[:40]} "
        else:
            yield " " + " ".join(_sentence(rng) for _ in range(rng.randint(1, 6))) + " "
