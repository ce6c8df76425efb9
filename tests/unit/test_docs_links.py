"""README.md and docs/: every Markdown link to a file of the repository names one that exists, and every link to a
heading (`page.md#heading`) names a heading of that page, so that moving or renaming a file or a section is seen."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def links(page: Path) -> list[str]:
    """The targets of a page's inline links, outside code blocks and code spans."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return LINK.findall(text)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation and symbols dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M)
    return {anchor(h) for h in headings}


def repository_targets() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES for target in links(page)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: leave the repository


def test_the_pages_exist_and_link_somewhere():
    assert (ROOT / "docs").is_dir() and len(PAGES) > 2
    assert len(repository_targets()) > 20


@pytest.mark.parametrize("page, target", repository_targets(),
                         ids=lambda value: str(value.relative_to(ROOT)) if isinstance(value, Path) else value)
def test_a_link_names_an_existing_file_of_the_repository_and_heading(page, target):
    path, _, heading = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.is_relative_to(ROOT), f"{page.relative_to(ROOT)}: {target} leaves the repository"
    assert file.exists(), f"{page.relative_to(ROOT)}: {target} does not exist"
    if heading and file.suffix == ".md":
        assert heading in anchors(file), f"{page.relative_to(ROOT)}: {target}: no such heading in {file.name}"


def test_the_anchor_of_a_heading_is_githubs():
    assert anchor("Sweeps: many runs from one file") == "sweeps-many-runs-from-one-file"
    assert anchor("Starting from another run's weights") == "starting-from-another-runs-weights"
    assert anchor("ℓ∞ geometry") == "ℓ-geometry"
    assert anchor("LoRA, pruning and cost") == "lora-pruning-and-cost"
    assert anchor("summary.json") == "summaryjson"
