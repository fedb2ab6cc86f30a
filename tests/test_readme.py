"""README.md is the front door: short, and every link and picture in it resolves.

The documentation site under docs/ is checked by `make docs` (mkdocs build --strict); the README is
read on the repository page instead, so its links into docs/ are checked here.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """Anchors of the headings of a Markdown page (fenced code skipped)."""
    found, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(slug(line.lstrip("#").strip()))
    return found


def readme_links(text: str) -> list[str]:
    """Relative link and image targets of the README, outside code blocks."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z]+://|mailto:", t)]


def test_slug_matches_mkdocs_anchors():
    assert slug("5. Layout") == "5-layout"
    assert slug("`--sync_bn`") == "-sync_bn"
    assert slug("Thinned speed-up 1.35x (target 1.6x: missed), and why") == \
        "thinned-speed-up-135x-target-16x-missed-and-why"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move the detail into docs/"


@pytest.mark.parametrize("target", readme_links((ROOT / "README.md").read_text(encoding="utf-8")))
def test_readme_link_resolves(target: str):
    path, _, anchor = target.partition("#")
    page = ROOT / path if path else ROOT / "README.md"
    assert page.is_file(), f"README.md links to {target}: no file {path}"
    if anchor:
        assert anchor in anchors(page), f"README.md links to {target}: {path} has no heading '#{anchor}'"


def test_readme_links_are_found():
    """The link pattern finds what it must, so an empty parametrization cannot pass silently."""
    links = readme_links((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "docs/schedules.md" in links and "docs/figures/hook_sequence.png" in links
    assert readme_links("[a](b.md) ```\n[c](d.md)\n``` ![e](f.png) [g](https://x.org)") == ["b.md", "f.png"]
