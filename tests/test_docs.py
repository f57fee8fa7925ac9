"""Every code block of the documentation runs as a reader would run it.

Each page's ```python blocks run in order down the page, as one script in a fresh interpreter
started in an empty directory (a reader's copy-paste into a new session): a page that needs
something shows its setup itself. A ``# text`` line right after a ``print(...)`` is what that
print shows, and must be among the lines printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from docs_pages import DOCS, PAGES, page, python_blocks, shown_outputs

import jrmsprop
import jrmsprop.interop
import jrmsprop.parallel

RUNNABLE = [name for name in PAGES if python_blocks(name)]


def test_every_page_with_code_is_run():
    assert {
        "getting-started",
        "rmsprop",
        "adapter",
        "ecosystem",
        "migration",
        "parallel",
        "benchmark",
    } <= set(RUNNABLE)


@pytest.mark.parametrize("name", RUNNABLE)
def test_page_code_runs_in_order_as_a_reader_runs_it(name, tmp_path):
    blocks = python_blocks(name)
    script = tmp_path / f"{name}.py"
    script.write_text("\n\n".join(blocks))
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env["PYTHONHASHSEED"] = "0"
    try:
        result = subprocess.run(
            [sys.executable, str(script)],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as err:  # pragma: no cover - a hang is a failure
        pytest.fail(f"docs/{name}.md: its code ran past 600 s\n{err.stdout}\n{err.stderr}")
    assert result.returncode == 0, f"docs/{name}.md:\n{result.stdout}\n{result.stderr[-6000:]}"
    printed = [line.strip() for line in result.stdout.splitlines()]
    for block in blocks:
        for line in shown_outputs(block):
            assert line in printed, f"docs/{name}.md shows {line!r}; printed:\n{result.stdout}"


@pytest.mark.parametrize("module", [jrmsprop, jrmsprop.interop, jrmsprop.parallel])
def test_api_page_documents_every_public_name(module):
    api = page("api")
    for name in module.__all__:
        documented = re.search(rf"\.\. auto\w+:: [\w.]+\.{name}\n", api)
        linked = f"{{func}}`{module.__name__}.{name} <" in api
        assert documented or linked, f"{module.__name__}.{name} is not on docs/api.md"


# Sphinx 9's own deprecations, raised inside napoleon and the theme: not ours to fix.
@pytest.mark.filterwarnings("ignore::sphinx.deprecation.RemovedInSphinx11Warning")
def test_a_public_name_without_a_docstring_fails_the_docs_build(tmp_path):
    """The build's -W turns the docs' missing-docstring check into a failure."""
    sphinx_build = pytest.importorskip("sphinx.cmd.build")
    (tmp_path / "undocumented_mod.py").write_text(
        'def documented():\n    """Has one."""\n\n\ndef bare():\n    pass\n'
    )
    (tmp_path / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        f"exec(open({str(DOCS / 'conf.py')!r}).read())\n"
        "nb_execution_mode = 'off'\n"
    )
    (tmp_path / "index.md").write_text(
        "# t\n\n```{eval-rst}\n.. autofunction:: undocumented_mod.documented\n\n"
        ".. autofunction:: undocumented_mod.bare\n```\n"
    )
    warnings = tmp_path / "warnings.txt"
    args = ["-W", "-q", "-w", str(warnings), "-b", "html", str(tmp_path), str(tmp_path / "out")]
    assert sphinx_build.build_main(args) != 0
    assert "undocumented_mod.bare: public function without a docstring" in warnings.read_text()
    assert "documented: public" not in warnings.read_text()
