"""Raw texts of the three splits, filtered the way the study did.

Sources:
  hub      datasets' `wikitext` / `wikitext-2-raw-v1` (needs the network or a cache)
  local    a folder with wiki.{train,valid,test}.{raw,tokens}, {train,valid(ation),test}.txt or
           {train,validation,test}*.parquet (a `text` column), read with datasets' builders
  builtin  a synthetic encyclopedia generated here from a fixed seed: no network, no files, the same
           texts on every machine and Python version. It has headings, blank and short lines (so the
           filter has work to do) and paragraphs of 1-6 sentences (so length sorting matters).

A finite source (hub, local) with fewer filtered texts than asked for gives what it has, with a
warning; the builtin corpus is endless, so a filter it cannot satisfy is a ConfigError instead of a
search that never ends.
"""

from __future__ import annotations

import json
import os
import random
import string
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from config.schema import DataConfig
from utils.errors import ConfigError, UserError
from utils.hub import require_hub

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": ("train",), "validation": ("valid", "validation", "val"), "test": ("test",)}
_COUNT_KEYS = {"train": "n_train", "validation": "n_val", "test": "n_test"}  # DataConfig fields

# The builtin corpus gives up after scanning this many lines in all, plus this many per text asked for:
# at the default data.min_text_length about three lines in four are kept, so a filter that keeps fewer
# than 1 line in 100 is refused, and 100,000 lines take a second or two.
_BUILTIN_SCAN_FLOOR, _BUILTIN_LINES_PER_TEXT = 100_000, 100


@dataclass
class Texts:
    train: list[str]
    validation: list[str]
    test: list[str]
    asked: dict[str, int]  # texts the config asked for, by split (data.n_train, n_val, n_test)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {"asked": ..., "got": ...}}: what the config asked for and what the source had."""
        return {split: {"asked": self.asked[split], "got": len(getattr(self, split))} for split in SPLITS}


def keep_text(line: str, min_length: int) -> bool:
    """The study's filter, applied to a stripped line: long enough and not a '= Heading ='."""
    return len(line) > min_length and not line.startswith("=")


def filter_texts(lines, min_length: int, limit: int, max_lines: int | None = None) -> list[str]:
    """Strip lines, keep those that pass `keep_text`, and return the first `limit` of them.

    With `max_lines`, stop early (returning fewer) once that many lines have been read."""
    kept = []
    for read, line in enumerate(lines, start=1):
        line = line.strip()
        if keep_text(line, min_length):
            kept.append(line)
            if len(kept) == limit:
                break
        if read == max_lines:
            break
    return kept


def load_texts(cfg: DataConfig) -> Texts:
    """The first data.n_train / n_val / n_test filtered texts of each split, read once per process for each data
    config (every stage and run of a command asks for the same texts); each caller gets lists of its own."""
    key = json.dumps({**asdict(cfg), "order": None}, sort_keys=True)  # the training order picks no texts
    if key not in _loaded:
        _loaded[key] = _read_texts(cfg)
    texts = _loaded[key]
    return Texts(list(texts.train), list(texts.validation), list(texts.test), dict(texts.asked))


_loaded: dict[str, Texts] = {}  # load_texts's: data settings -> the texts they pick


def _read_texts(cfg: DataConfig) -> Texts:
    asked = {split: getattr(cfg, key) for split, key in _COUNT_KEYS.items()}
    if cfg.source == "builtin":
        return Texts(**_builtin_texts(cfg, asked), asked=asked)
    if cfg.source == "local":
        lines = _local_lines(Path(cfg.path).expanduser())
    else:
        lines = _hub_lines(cfg.dataset, cfg.subset)
    texts = {split: filter_texts(lines[split], cfg.min_text_length, asked[split]) for split in SPLITS}
    for split, kept in texts.items():
        if not kept:
            raise UserError(f"no {split} text is longer than {cfg.min_text_length} characters in data source {cfg.source!r}")
        if len(kept) < asked[split]:
            print(f"warning: data.{_COUNT_KEYS[split]} asks for {asked[split]} texts; "
                  f"the {split} split has {len(kept)} after filtering", file=sys.stderr)
    return Texts(**texts, asked=asked)


def _builtin_texts(cfg: DataConfig, asked: dict[str, int]) -> dict[str, list[str]]:
    """The builtin corpus never runs out, so a filter that it cannot (or will hardly ever) satisfy is refused."""
    if cfg.min_text_length >= BUILTIN_LONGEST_TEXT:
        raise ConfigError(f"data.min_text_length: the builtin corpus has no line longer than {BUILTIN_LONGEST_TEXT} "
                          f"characters, got {cfg.min_text_length}")
    texts = {}
    for split in SPLITS:
        budget = _BUILTIN_SCAN_FLOOR + _BUILTIN_LINES_PER_TEXT * asked[split]
        texts[split] = filter_texts(builtin_lines(split), cfg.min_text_length, asked[split], budget)
        if len(texts[split]) < asked[split]:
            key = f"data.{_COUNT_KEYS[split]}"
            raise ConfigError(f"data.min_text_length: {split} texts longer than {cfg.min_text_length} characters are too "
                              f"rare in the builtin corpus ({len(texts[split])} of the {asked[split]} that {key} asks "
                              f"for in {budget:,} lines); lower data.min_text_length or {key}")
    return texts


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
_YEARS = range(1200, 2020)
_SLOTS = {"adjective": _ADJECTIVES, "place": _PLACES, "object": _OBJECTS, "connective": _CONNECTIVES,
          "other_subject": sorted(_SUBJECTS)}
# A sentence draws its subject, verb and year, then one of these forms, then the form's other slots
# in the order they appear.
_FORMS = (
    "The {adjective} {subject} {verb} {object} near {place} .",
    "{connective} {year} , the {subject} {verb} {object} .",
    "The {subject} of {place} {verb} {object} , and the {adjective} {other_subject} followed in {year} .",
    "According to records from {year} , the {adjective} {subject} {verb} in {place} .",
)
_MAX_SENTENCES = 6  # per paragraph
_FRAGMENT_LENGTH = 40  # a short line is the start of a sentence


def _placeholders(form: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(form) if name]


def _sentence(rng: random.Random) -> str:
    subject = rng.choice(sorted(_SUBJECTS))
    verb = rng.choice(_SUBJECTS[subject])
    year = rng.choice(_YEARS)
    form = rng.choice(_FORMS)
    slots = {slot: rng.choice(_SLOTS[slot]) for slot in _placeholders(form) if slot in _SLOTS}
    return form.format(subject=subject, verb=verb, year=year, **slots)


def _longest_sentence() -> int:
    """Characters in the longest sentence `_sentence` can write: the longest choice for every slot."""
    longest = {slot: max(len(str(choice)) for choice in choices)
               for slot, choices in {**_SLOTS, "year": _YEARS}.items()}
    subject_and_verb = max(len(subject) + len(verb) for subject, verbs in _SUBJECTS.items() for verb in verbs)
    return max(len(form.format_map(dict.fromkeys(_placeholders(form), ""))) + subject_and_verb
               + sum(longest[slot] for slot in _placeholders(form) if slot not in ("subject", "verb"))
               for form in _FORMS)


# The longest line `builtin_lines` can write once stripped (headings never pass the filter).
BUILTIN_LONGEST_TEXT = max(_FRAGMENT_LENGTH, _MAX_SENTENCES * (_longest_sentence() + 1) - 1)


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
            yield f" {_sentence(rng)[:_FRAGMENT_LENGTH]} "
        else:
            yield " " + " ".join(_sentence(rng) for _ in range(rng.randint(1, _MAX_SENTENCES))) + " "
