"""The README is a front page: at most 250 lines, opening with the two commands, and an index that links every
page under docs/. Every relative link in the README and in docs/*.md points at a file that exists, and a link
to a heading of a markdown page names a heading that page has."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(document: Path) -> list[str]:
    text = FENCE.sub("", document.read_text())  # links inside code blocks are not links
    text = re.sub(r"`[^`]*`", "", re.sub(r"\[`([^`]*)`\]", r"[\1]", text))  # keep [`name`](target)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:|#", target)]


def test_the_readme_is_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= 250


def test_the_readme_opens_with_the_two_commands():
    blocks = [block.strip() for block in FENCE.findall(README.read_text())]
    assert blocks[:2] == [
        "pip install -e . && film-diffusion train configs/quickstart.yaml",
        'pip install -e ".[dev]" && python -m pytest -q',
    ]


def test_there_are_docs_pages():
    assert len(PAGES) >= 5


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_docs_page_is_linked_from_the_readme(page):
    linked = {(ROOT / target.split("#")[0]).resolve() for target in relative_links(README)}
    assert page.resolve() in linked, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("document", [README, *PAGES], ids=[p.relative_to(ROOT).as_posix() for p in [README, *PAGES]])
def test_every_relative_link_points_at_a_file(document):
    missing = [target for target in relative_links(document)
               if not (document.parent / target.split("#")[0]).exists()]  # fmt: skip
    assert not missing, f"{document.relative_to(ROOT)} links to missing files: {missing}"


def anchors(page: Path) -> set[str]:
    """GitHub's ids for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("document", [README, *PAGES], ids=[p.relative_to(ROOT).as_posix() for p in [README, *PAGES]])
def test_every_link_to_a_heading_finds_it(document):
    wrong = []
    for target in LINK.findall(FENCE.sub("", document.read_text())):
        path, _, anchor = target.partition("#")
        page = document if not path else document.parent / path
        if anchor and page.suffix == ".md" and page.is_file() and anchor not in anchors(page):
            wrong.append(target)
    assert not wrong, f"{document.relative_to(ROOT)} links to headings that do not exist: {wrong}"
