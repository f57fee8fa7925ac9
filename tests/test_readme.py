"""The README, the front page: its commands and code run as written, its links lead into the
docs site, and each sentence of the core page (docs/rmsprop.md) that promises behaviour is
checked here or names its test."""

import inspect
import itertools
import pathlib
import re
import subprocess
import sys
import tomllib
import urllib.parse
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from docs_pages import DOCS, page
from torch_reference import jitted_step

import jrmsprop

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCS_URL = PYPROJECT["project"]["urls"]["Documentation"]


def _readme_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def _first_bash_block():
    return re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL).group(1)


def _floors():
    deps = PYPROJECT["project"]["dependencies"]
    return dict(re.fullmatch(r"([\w-]+)>=([\d.]+)", d).groups() for d in deps if ">=" in d)




def _anchors(name):
    """The ids Sphinx gives a page's section headings (docutils' ``make_id`` rule)."""
    text = re.sub(r"^```.*?^```", "", page(name), flags=re.DOTALL | re.MULTILINE)
    titles = re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9]+", "-", t.lower()).strip("-") for t in titles}


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert PYPROJECT["project"]["readme"] == "README.md"  # the wheel's long description


def test_readme_links_work_outside_the_repository_and_lead_into_the_docs():
    links = re.findall(r"\]\(([^)]+)\)|<(https?://[^>]+)>", README.read_text())
    links = [a or b for a, b in links]
    assert links
    pages = set()
    for link in links:
        assert link.startswith("https://"), f"{link}: relative links break on PyPI"
        if not link.startswith(DOCS_URL):
            continue
        url = urllib.parse.urlparse(link[len(DOCS_URL) :])
        if not url.path:
            continue
        name = url.path.removesuffix(".html")
        assert (DOCS / f"{name}.md").exists() or (DOCS / f"{name}.ipynb").exists(), link
        if url.fragment:
            assert url.fragment in _anchors(name), link
        pages.add(name)
    # The front page links every page of the site.
    site = {p.stem for p in DOCS.glob("*.md")} | {p.stem for p in DOCS.glob("*.ipynb")}
    assert site - {"index"} <= pages


def test_readme_opens_with_the_demo_and_test_commands():
    first_block = _first_bash_block()
    assert "examples/quickstart.py" in first_block
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in first_block.splitlines() if "pytest" in line)
    assert test_command.strip() in ci, ".ci/run must run the README's test command"


def test_min_versions_command_installs_the_floors_pyproject_declares():
    assert "bash .ci/min-versions" in _first_bash_block()
    script = ROOT / ".ci" / "min-versions"
    assert script.stat().st_mode & 0o111, "executable"
    text = script.read_text()
    assert ".venv-min/bin/python -m pytest" in text
    # The script reads the floors from pyproject.toml: run that part of it.
    reader = re.search(r"<<'PY'\n(.*?)\nPY\n", text, flags=re.DOTALL).group(1)
    out = subprocess.run(
        [sys.executable, "-c", reader], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    floors = _floors()
    assert set(floors) == {"jax", "jaxlib", "optax", "chex"}
    assert out == [f"{name}=={version}" for name, version in floors.items()]
    # The README and the getting-started page state the same floors.
    for text in (README.read_text(), page("getting-started")):
        for name, version in floors.items():
            assert re.search(rf"\b{name}\b[^.]*?>=\s+{re.escape(version)}\b", text), name


@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_block_runs_and_prints_what_it_shows(index, capsys):
    block = _readme_blocks()[index]
    # The README is this repository's own text: running it is the point.
    exec(compile(block, f"README.md block {index}", "exec"), {})  # noqa: S102
    # A "# ..." line right after a print shows that print's output.
    lines = block.splitlines()
    pairs = itertools.pairwise(lines)
    shown = [b[2:] for a, b in pairs if a.startswith("print(") and b.startswith("# ")]
    assert shown
    printed = capsys.readouterr().out.splitlines()
    for line in shown:
        assert line in printed


def test_docs_pages_give_the_readmes_commands():
    assert _first_bash_block().strip() in page("getting-started")


def test_complex_one_line_fix_is_in_a_block_that_runs():
    fix = "grads = jax.tree.map(jnp.conj, grads)"
    assert f"`{fix}`" in page("rmsprop")
    assert any(
        fix in block
        for block in re.findall(r"```python\n(.*?)```", page("rmsprop"), flags=re.DOTALL)
    )


@pytest.mark.parametrize("name", ["lr", "alpha", "eps", "weight_decay", "momentum"])
def test_nan_hyperparameter_is_torchs_value_error(name):
    with pytest.raises(ValueError) as torch_error:
        torch.optim.RMSprop([torch.zeros(1, requires_grad=True)], **{name: float("nan")})
    with pytest.raises(ValueError, match=f"^{re.escape(str(torch_error.value))}$"):
        jrmsprop.rmsprop(**{name: float("nan")})


def test_none_gradient_is_a_minus_zero_update_that_leaves_param_state_and_step():
    f32 = jnp.float32
    params = [jnp.ones(4, f32), jnp.ones(2, f32)]
    opt = jrmsprop.rmsprop(lr=0.1, momentum=0.9, centered=True, weight_decay=0.1)
    state = opt.init(params)
    updates, state = opt.update([jnp.ones(4, f32), jnp.ones(2, f32)], state, params)
    params = optax.apply_updates(params, updates)
    params[0] = jnp.array([-0.0, 0.0, 1.5, -2.0], f32)  # signed zeros must survive too
    updates, after = jax.jit(opt.update)([None, jnp.ones(2, f32)], state, params)
    assert not np.any(updates[0]) and np.all(np.signbit(updates[0]))  # all -0.0
    new = optax.apply_updates(params, updates)
    assert np.asarray(new[0]).tobytes() == np.asarray(params[0]).tobytes()
    assert np.asarray(new[1]).tobytes() != np.asarray(params[1]).tobytes()
    assert np.asarray(after.step).tolist() == [1, 2]
    for field in ("square_avg", "momentum_buffer", "grad_avg"):
        before, now = getattr(state, field)[0], getattr(after, field)[0]
        assert np.asarray(now).tobytes() == np.asarray(before).tobytes(), field


def _run(opt, params, grads):
    state = opt.init(params)
    step = jitted_step(opt)
    for g in grads:
        params, state = step(params, state, g)
    return params


def test_lr_as_a_scalar_array_equals_the_float():
    params = [jnp.array([1.0, -2.0, 0.5], jnp.float32)]
    grads = [[jnp.array([0.3, -1.0, 2.0], jnp.float32) * (k + 1)] for k in range(5)]
    as_float = _run(jrmsprop.rmsprop(lr=0.05, momentum=0.5), params, grads)
    as_array = _run(
        jrmsprop.rmsprop(lr=jnp.asarray(0.05, jnp.float32), momentum=0.5), params, grads
    )
    np.testing.assert_array_equal(as_array[0], as_float[0])


class Layer(NamedTuple):
    w: jax.Array
    b: jax.Array


def test_namedtuple_and_equinox_params_step_as_their_leaves():
    model = eqx.nn.Linear(3, 2, key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_array)  # arrays, None for the module's other fields
    leaves = jax.tree.leaves(params)
    tuple_params = Layer(*leaves)
    rng = np.random.default_rng(0)
    grads = [[jnp.asarray(rng.standard_normal(x.shape), x.dtype) for x in leaves] for _ in range(3)]
    opt = jrmsprop.rmsprop(lr=0.01, momentum=0.9, centered=True)
    flat = _run(opt, leaves, grads)
    as_tuple = _run(opt, tuple_params, [Layer(*g) for g in grads])
    as_eqx = _run(opt, params, [jax.tree.unflatten(jax.tree.structure(params), g) for g in grads])
    assert isinstance(as_tuple, Layer)
    for ours in (jax.tree.leaves(as_tuple), jax.tree.leaves(as_eqx)):
        for a, b in zip(ours, flat, strict=True):
            np.testing.assert_array_equal(a, b)


def test_signature_shown_is_rmsprops():
    shown = re.search(r"`jrmsprop\.rmsprop\((.*?)\)`", page("rmsprop"), flags=re.DOTALL).group(1)
    defaults = eval(f"dict({shown})")
    actual = inspect.signature(jrmsprop.rmsprop).parameters
    assert defaults == {name: p.default for name, p in actual.items()}
    assert list(defaults) == list(actual)


def test_mixed_precision_and_momentum_paragraphs_name_their_tests():
    core = page("rmsprop")
    for path in ("tests/test_mixed_precision.py", "tests/test_traced_init.py"):
        assert path in core
        assert (pathlib.Path(__file__).parent.parent / path).exists()


def test_traced_negative_hyperparameter_raises_nothing():
    # The Errors paragraph: a negative lr arriving traced cannot be read, so no error.
    params = {"w": jnp.ones(2, jnp.float32)}
    tx = optax.inject_hyperparams(jrmsprop.rmsprop)(lr=0.1)
    state = tx.init(params)
    state.hyperparams["lr"] = jnp.asarray(-1.0, jnp.float32)
    jax.jit(tx.update)({"w": jnp.ones(2, jnp.float32)}, state, params)
    sched = jrmsprop.rmsprop(lr=lambda count: -1.0)  # a schedule returning -1
    sched.update({"w": jnp.ones(2, jnp.float32)}, sched.init(params), params)
