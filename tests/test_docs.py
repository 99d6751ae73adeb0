"""Every relative link in the docs resolves to a file (and heading) inside the repository.

The README, BENCHMARKS.md and docs/ are read on GitHub and in a checkout; a link to a sibling
checkout (``../shared/...``) or to a heading that was renamed works for nobody. A page under
docs/ may climb to the repository root (``../BENCHMARKS.md``), never above it. External
http(s) links (papers, data sets) are not fetched.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").rglob("*.md")])

_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_EXTERNAL = ("http://", "https://", "mailto:")


def _prose(text: str) -> str:
    """The text without code, where brackets are not links."""
    return _CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation out."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(page: Path) -> list[str]:
    return _LINK.findall(_prose(page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_stay_in_the_repository_and_resolve(page: Path) -> None:
    problems = []
    for link in _links(page):
        if link.startswith(_EXTERNAL):
            continue
        path, _, anchor = link.partition("#")
        if path.startswith("/"):
            problems.append(f"{link}: absolute path")
            continue
        target = (page.parent / path).resolve() if path else page
        if not target.is_relative_to(ROOT):
            problems.append(f"{link}: leaves the repository")
        elif not target.exists():
            problems.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            problems.append(f"{link}: no heading with anchor #{anchor} in {target.name}")
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_every_docs_page_is_linked_from_the_readme_benchmarks_or_another_page() -> None:
    linked = {
        (page.parent / link.partition("#")[0]).resolve()
        for page in PAGES
        for link in _links(page)
        if not link.startswith(_EXTERNAL) and link.partition("#")[0]
    }
    orphans = [str(p.relative_to(ROOT)) for p in PAGES if p.parent != ROOT and p not in linked]
    assert not orphans, f"pages nobody links to: {orphans}"
