"""The documentation holds together: README.md stays a user's page (at most 300 lines), every relative link in
README.md, docs/ and benchmarks/results/ points at a file that exists (and at a heading that exists, for
``#anchor`` links into markdown), every docs page and results file is linked from the README, and every results
file is in the format ``benchmarks/results.py``'s ``write_table`` prepends to."""

from __future__ import annotations

import glob
import os
import re

import pytest

from tests.helpers import ROOT

README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
RESULTS = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "*.md")))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def links(path: str) -> list[str]:
    """The targets of the markdown links and images in ``path``, code blocks and inline code left out."""
    text = FENCE.sub("", _read(path))
    text = re.sub(r"`[^`\n]*`", "", text)
    return [a or b for a, b in LINK.findall(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    text = FENCE.sub("", _read(path))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_is_at_most_300_lines():
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 300, \
        f"README.md has {len(lines)} lines; design notes belong in docs/, numbers in benchmarks/results/"


def test_slug_follows_github():
    assert slug("The blocked layout NCHW[x]c") == "the-blocked-layout-nchwxc"
    assert slug("GPU (cuda): direct conv2d and dlight") == "gpu-cuda-direct-conv2d-and-dlight"
    assert slug("Artifacts, and trusting them") == "artifacts-and-trusting-them"
    assert slug("--verify") == "--verify"


def test_links_finds_links_and_skips_code():
    here = os.path.join(ROOT, "README.md")
    found = links(here)
    assert "docs/pipeline.md" in found
    assert not any(target.startswith("`") for target in found)


@pytest.mark.parametrize("path", [README, *DOCS, *RESULTS], ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_point_at_existing_files(path):
    broken = []
    for target in links(path):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(dest):
            broken.append(f"{target} (no such file)")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            broken.append(f"{target} (no heading '{anchor}' in {os.path.relpath(dest, ROOT)})")
    assert not broken, f"{os.path.relpath(path, ROOT)}: " + "; ".join(broken)


def test_readme_links_every_docs_page_and_results_file():
    linked = {os.path.normpath(os.path.join(ROOT, t.partition("#")[0])) for t in links(README)}
    missing = [os.path.relpath(p, ROOT) for p in DOCS + RESULTS if p not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_docs_page_says_what_it_covers(path):
    paragraphs = _read(path).split("\n\n")
    assert paragraphs[0].startswith("# "), "a docs page starts with its title"
    assert len(paragraphs) > 1 and paragraphs[1].strip() and not paragraphs[1].startswith("#"), \
        "the title is followed by what the page covers"


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_results_file_is_in_write_table_format(path):
    name = os.path.basename(path)[:-3]
    text = _read(path)
    header = f"# {name}\n\nNewest run first; every table names the machine it ran on.\n"
    assert text.startswith(header), "the header write_table prepends after"
    sections = re.split(r"^## ", text[len(header):], flags=re.M)
    assert not sections[0].strip() and len(sections) > 1, "tables start right after the header"
    for section in sections[1:]:
        title, _, rest = section.partition("\n\n")
        stamp = rest.split("\n", 1)[0]
        assert re.search(r", \S.*, \d+ cores; \d{4}-\d{2}-\d{2}", stamp), \
            f"'{title}': the line under the title names the machine (model, ISA, cores) and the date, not {stamp!r}"
