"""The documentation is a map: a short README whose links resolve, and a site (``docs/``,
``mkdocs.yml``) that builds with ``mkdocs build --strict`` (a broken link, anchor or nav entry
fails it). mkdocs and mkdocs-material are in the dev extra."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README_MAX_LINES = 200
FIRST_SCREEN = 60  # lines: `pip install` and the own-folder quick start must be within them

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")


def github_slug(heading: str) -> str:
    """The anchor GitHub (and mkdocs' toc) gives a heading: lower case, punctuation dropped
    (backticks, colons, dots, ...), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def anchors(path: Path) -> set[str]:
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if m:
            found.add(github_slug(m.group(1)))
        found.update(HTML_ID.findall(line))
    return found


def relative_links(path: Path) -> list[str]:
    links = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                links.append(target)
    return links


@pytest.mark.parametrize("name", ["README.md", "CONTRIBUTING.md"])
def test_every_relative_link_resolves(name):
    page = ROOT / name
    links = relative_links(page)
    assert links, f"{name} has no relative links"
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        if not file.exists():
            broken.append(f"{link}: no file {file.relative_to(ROOT)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{link}: no heading or id {anchor!r} in {file.relative_to(ROOT)}")
    assert not broken, f"{name}: broken links:\n" + "\n".join(broken)


def test_readme_is_a_short_map():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    head = "\n".join(lines[:FIRST_SCREEN])
    assert "pip install -e ." in head
    for verb in ("check", "train", "predict"):  # the quick start on one's own folder
        assert re.search(
            rf"^dualteacher {verb} .*data.root=my_data|^dualteacher {verb} runs/", head, re.M
        ), verb
    for command in ("make demo", "make test"):
        assert command in head


def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
    proc = subprocess.run(
        [*command, "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "index.html").exists()
