"""The documentation pages (docs/*.md) as the tests read them: text, and code blocks."""

from __future__ import annotations

import itertools
import pathlib
import re
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p.stem for p in DOCS.glob("*.md"))


def page(name: str) -> str:
    """The Markdown source of ``docs/<name>.md``."""
    return (DOCS / f"{name}.md").read_text()


def python_blocks(name: str) -> list[str]:
    """The page's ```python blocks, in order down the page."""
    found = re.findall(r"^( *)```python\n(.*?)^\1```", page(name), flags=re.DOTALL | re.MULTILINE)
    return [textwrap.dedent(code) for _, code in found]


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
