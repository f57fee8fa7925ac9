"""Every code block of the documentation runs as a reader would run it.

Each page's ```python blocks run in order down the page, as one script in a fresh interpreter
started in an empty directory (a reader's copy-paste into a new session): a page that needs
something shows its setup itself. A ``# text`` line right after a ``print(...)`` is what that
print shows, and must be among the lines printed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from docs_pages import PAGES, python_blocks, shown_outputs

RUNNABLE = [name for name in PAGES if python_blocks(name)]


def test_every_page_with_code_is_run():
    assert {"getting-started", "rmsprop", "adapter", "ecosystem", "migration", "parallel",
            "benchmark"} <= set(RUNNABLE)


@pytest.mark.parametrize("name", RUNNABLE)
def test_page_code_runs_in_order_as_a_reader_runs_it(name, tmp_path):
    blocks = python_blocks(name)
    script = tmp_path / f"{name}.py"
    script.write_text("\n\n".join(blocks))
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env["PYTHONHASHSEED"] = "0"
    try:
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=600, start_new_session=True,
        )
    except subprocess.TimeoutExpired as err:  # pragma: no cover - a hang is a failure
        pytest.fail(f"docs/{name}.md: its code ran past 600 s\n{err.stdout}\n{err.stderr}")
    assert result.returncode == 0, f"docs/{name}.md:\n{result.stdout}\n{result.stderr[-6000:]}"
    printed = [line.strip() for line in result.stdout.splitlines()]
    for block in blocks:
        for line in shown_outputs(block):
            assert line in printed, f"docs/{name}.md shows {line!r}; printed:\n{result.stdout}"
