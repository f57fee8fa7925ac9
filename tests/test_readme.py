"""The README's core examples run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _core_blocks():
    text = README.read_text()
    core = text[text.index("<!-- section: core -->") : text.index("<!-- end: core -->")]
    return re.findall(r"```python\n(.*?)```", core, flags=re.DOTALL)


def test_readme_opens_with_the_demo_and_test_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.DOTALL).group(1)
    assert "examples/quickstart.py" in first_block
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = next(line for line in first_block.splitlines() if "pytest" in line)
    assert test_command.strip() in ci, ".ci/run must run the README's test command"


@pytest.mark.parametrize("index", range(len(_core_blocks())))
def test_readme_core_block_runs(index):
    # The README is this repository's own text: running it is the point.
    exec(compile(_core_blocks()[index], f"README.md core block {index}", "exec"), {})  # noqa: S102
