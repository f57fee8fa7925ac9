"""The documentation pages (docs/*.md) as the tests read them: text, and code blocks."""

from __future__ import annotations

import itertools
import pathlib
import re
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p.stem for p in DOCS.glob("*.md"))

# The first line of a ```python block that needs the blocks before it on its page (their
# imports, names, files): the reader sees it, and tests/test_docs.py runs the block after them.
# Every other block runs alone, in a fresh interpreter.
CONTINUES = "# continues the block above"

# The widest code line a page or the README may show: about what the site's text column holds
# at 1280 px before a block scrolls sideways.
CODE_COLUMNS = 79


def page(name: str) -> str:
    """The Markdown source of ``docs/<name>.md``."""
    return (DOCS / f"{name}.md").read_text()


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced code block of a Markdown text, as ``(language, dedented code)``."""
    found = re.findall(r"^( *)```(\S*)\n(.*?)^\1```", text, flags=re.DOTALL | re.MULTILINE)
    return [(lang, textwrap.dedent(code)) for _, lang, code in found]


def python_blocks(name: str) -> list[str]:
    """The page's ```python blocks, in order down the page."""
    return [code for lang, code in fenced_blocks(page(name)) if lang == "python"]


def chains(name: str) -> list[list[str]]:
    """The page's python blocks grouped as they run: a block, then the blocks continuing it."""
    found: list[list[str]] = []
    for block in python_blocks(name):
        if block.startswith(CONTINUES + "\n") and found:
            found[-1].append(block)
        else:
            found.append([block])
    return found


def shown_outputs(block: str) -> list[str]:
    """Lines a block shows as output: a ``# ...`` comment line right after a ``print(`` line."""
    lines = block.splitlines()
    return [
        b.strip()[2:]
        for a, b in itertools.pairwise(lines)
        if a.strip().startswith("print(")
        and b.strip().startswith("# ")
        and not b.strip().startswith("# ...")
    ]
