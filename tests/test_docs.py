"""Every code block of the documentation runs as a reader would run it, and the site reads well.

Each ```python block of a page runs alone, in a fresh interpreter started in an empty directory
(a reader's copy-paste into a new session), unless its first line says it continues the block
above (``docs_pages.CONTINUES``): then it runs after that block, in the same interpreter. A
``# text`` line right after a ``print(...)`` is what that print shows, and must be among the
lines printed. Code lines fit the text column, no page loads a remote script, and the pages
speak about the library, not about how it was made.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from docs_pages import (
    CODE_COLUMNS,
    CONTINUES,
    DOCS,
    PAGES,
    ROOT,
    chains,
    fenced_blocks,
    page,
    python_blocks,
    shown_outputs,
)

import jrmsprop
import jrmsprop.interop
import jrmsprop.interop.schedules
import jrmsprop.parallel
import jrmsprop.schedules

RUNNABLE = [name for name in PAGES if python_blocks(name)]
CHAINS = [(name, i) for name in RUNNABLE for i in range(len(chains(name)))]


def test_every_page_with_code_is_run():
    assert {
        "getting-started",
        "rmsprop",
        "adapter",
        "ecosystem",
        "migration",
        "parallel",
        "benchmark",
        "pitfalls",
        "index",
    } <= set(RUNNABLE)


def _run(script, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env["PYTHONHASHSEED"] = "0"
    return subprocess.run(
        [sys.executable, str(script)],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )


@pytest.mark.parametrize(("name", "index"), CHAINS, ids=[f"{n}-{i}" for n, i in CHAINS])
def test_each_block_runs_alone_or_after_the_block_it_continues(name, index, tmp_path):
    blocks = chains(name)[index]
    assert not blocks[0].startswith(CONTINUES), f"docs/{name}.md: its first block continues none"
    script = tmp_path / f"{name}_{index}.py"
    script.write_text("\n\n".join(blocks))
    try:
        result = _run(script, tmp_path)
    except subprocess.TimeoutExpired as err:  # pragma: no cover - a hang is a failure
        pytest.fail(f"docs/{name}.md: its code ran past 600 s\n{err.stdout}\n{err.stderr}")
    first = blocks[0].splitlines()[0]
    assert result.returncode == 0, (
        f"docs/{name}.md, the block starting {first!r}"
        f"{f' and the {len(blocks) - 1} continuing it' if len(blocks) > 1 else ''}:\n"
        f"{result.stdout}\n{result.stderr[-6000:]}"
    )
    printed = [line.strip() for line in result.stdout.splitlines()]
    for block in blocks:
        for line in shown_outputs(block):
            assert line in printed, f"docs/{name}.md shows {line!r}; printed:\n{result.stdout}"


def _documents():
    yield "README.md", (ROOT / "README.md").read_text()
    for name in PAGES:
        yield f"docs/{name}.md", page(name)


def test_code_lines_fit_the_text_column():
    wide = [
        f"{where}: {len(line)} columns: {line}"
        for where, text in _documents()
        for _, code in fenced_blocks(text)
        for line in code.splitlines()
        if len(line) > CODE_COLUMNS
    ]
    assert not wide, "\n".join(wide)


def test_no_prose_line_starts_a_blockquote_by_accident():
    """A wrapped line starting with ``>`` (``>= 0.7.1``) turns the rest into a blockquote."""
    for name in PAGES:
        prose = re.sub(r"^( *)```.*?^\1```", "", page(name), flags=re.DOTALL | re.MULTILINE)
        starts = re.findall(r"^ *>.*$", prose, flags=re.MULTILINE)
        assert not starts, f"docs/{name}.md: {starts}"


# How the library was made is not the reader's business: no tracker numbers, no talk of who or
# what built it, or on which machine of the project.
_PROCESS_WORDS = re.compile(
    r"\bissues? ?#?\d+|\bPR ?#?\d+|\bagents?\b|\bthe seed\b|\bseed's\b|\bthis task\b"
    r"|\bdevice machine\b|\blent a\b|\bthe previous release\b",
    re.IGNORECASE,
)


def test_pages_speak_about_the_library_not_about_its_making():
    sources = dict(_documents())
    sources["CHANGELOG.md"] = (ROOT / "CHANGELOG.md").read_text()  # shown as docs/changelog
    for path in sorted((ROOT / "jrmsprop").rglob("*.py")):  # docstrings: the API page
        sources[str(path.relative_to(ROOT))] = path.read_text()
    found = [
        f"{where}:{text[: m.start()].count(chr(10)) + 1}: {m.group(0)!r}"
        for where, text in sources.items()
        for m in _PROCESS_WORDS.finditer(text)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "module", [jrmsprop, jrmsprop.interop, jrmsprop.schedules, jrmsprop.parallel]
)
def test_api_page_documents_every_public_name_once_and_sums_it_up(module):
    api = page("api")
    for name in module.__all__:
        obj = getattr(module, name)
        home = getattr(obj, "__module__", module.__name__)
        if home == "builtins" or module is jrmsprop.schedules:
            home = "jrmsprop.interop.schedules" if module is jrmsprop.schedules else home
        documented = re.findall(rf"^\.\. auto\w+:: ([\w.]+)\.{name}\n", api, flags=re.M)
        aliased = f"`{module.__name__}.{name}` | {{func}}`" in api
        assert len(documented) == 1 or aliased, f"{module.__name__}.{name}: {documented}"
        if documented:
            summary = re.findall(rf"^   {name}$", api, flags=re.M)
            assert len(summary) == 1, f"{module.__name__}.{name}: not in one summary table"


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


@pytest.mark.filterwarnings("ignore::sphinx.deprecation.RemovedInSphinx11Warning")
def test_api_entries_render_offline_math_and_each_field_once(tmp_path):
    """Built offline: MathML made at build time (no CDN), each field list entry once."""
    (tmp_path / "_static").symlink_to(DOCS / "_static")
    sphinx_build = pytest.importorskip("sphinx.cmd.build")
    (tmp_path / "conf.py").write_text(
        f"exec(open({str(DOCS / 'conf.py')!r}).read())\nnb_execution_mode = 'off'\n"
        "nitpicky = False\n"  # the entries link to others this one page leaves out
    )
    (tmp_path / "index.md").write_text(
        "# t\n\nInline {math}`\\sqrt{v} + \\epsilon`.\n\n"
        "```{eval-rst}\n.. autofunction:: jrmsprop.rmsprop\n\n"
        ".. autoclass:: jrmsprop.RMSpropState\n   :no-members:\n\n"
        ".. autofunction:: jrmsprop.interop.to_torch_state_dict\n```\n"
    )
    out = tmp_path / "out"
    args = ["-W", "-q", "-b", "html", str(tmp_path), str(out)]
    assert sphinx_build.build_main(args) == 0
    for built in out.rglob("*.html"):
        remote = re.findall(
            r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]*\"[^>]*>",
            built.read_text(),
        )
        remote = [tag for tag in remote if "<script" in tag or "stylesheet" in tag]
        assert not remote, f"{built.name} loads {remote}"
    html = (out / "index.html").read_text()
    assert html.count("<math") >= 2 and "\\leftarrow" not in html  # drawn, not TeX source
    assert "weight_decay" in html and "weight\\_decay" not in html  # \\text{...} as LaTeX
    # Each entry lists its "Parameters", "Returns", "Return type" once (type hints are added only
    # where the docstring documents), and the state's fields show public types.
    for entry in re.split(r'<dt class="sig sig-object py"', html)[1:]:
        fields = re.findall(r'<dt class="field-\w+">(.*?)<', entry.split("</dl>\n</dd>")[0])
        assert len(fields) == len(set(fields)), f"{entry[:80]}: {fields}"
    assert "jaxlib" not in html
    # Code wraps on narrow screens (docs/_static/custom.css, linked from every page).
    assert '_static/custom.css' in html
    assert "white-space: pre-wrap" in (out / "_static" / "custom.css").read_text()
