"""Every ``>>>`` example in jrmsprop's docstrings runs and prints what it shows.

The examples run as a reader runs them: JAX's default 32-bit mode (the suite's
mode), each example in a fresh namespace. ``pytest --doctest-modules jrmsprop`` runs the
same examples; this file puts them in the README's one test command.
"""

import doctest
import importlib
import pkgutil

import pytest

import jrmsprop

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(jrmsprop.__path__, prefix="jrmsprop.")
)
# The public entry points a reader meets first: each shows a runnable example.
MUST_HAVE_EXAMPLES = {
    "jrmsprop.transform.rmsprop",
    "jrmsprop.adapter.FunctionalRMSprop",
    "jrmsprop.interop.state_dict.from_torch_state_dict",
    "jrmsprop.interop.state_dict.to_torch_state_dict",
    "jrmsprop.interop.run.from_torch",
    "jrmsprop.interop.schedules.from_torch_scheduler",
    "jrmsprop.parallel.shard_state",
}


def _examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for name in ["jrmsprop", *MODULES]:
        module = importlib.import_module(name)
        found += [test for test in finder.find(module, name) if test.examples]
    return sorted(found, key=lambda test: test.name)


EXAMPLES = _examples()


def test_public_entry_points_have_examples():
    assert MUST_HAVE_EXAMPLES <= {test.name for test in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=[test.name for test in EXAMPLES])
def test_docstring_example_runs_as_shown(example):
    example.globs = dict(example.globs)  # a fresh namespace per example
    report = []
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    result = runner.run(example, out=report.append, clear_globs=True)
    assert result.failed == 0, "".join(report)
