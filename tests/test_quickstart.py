"""examples/quickstart.py trains the same model in JAX and torch, prints what the
difference means, and holds it to the bounds it prints."""

import importlib.util
import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PATH = ROOT / "examples" / "quickstart.py"
GETTING_STARTED = ROOT / "docs" / "getting-started.md"


@pytest.fixture(scope="module")
def quickstart():
    """The example as a module. As a script it turns x64 on for its process; here that
    is put back at once, and its float64 runs take the x64 fixture."""
    spec = importlib.util.spec_from_file_location("quickstart", PATH)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        jax.config.update("jax_enable_x64", False)
    return module


def test_quickstart_prints_verdicts_within_their_bounds(quickstart, capsys, x64):
    figures = quickstart.main()  # the README's figures: 50 steps, seed 0
    out = capsys.readouterr().out

    # Each printed figure is the returned one, and each comparison has its verdict.
    printed = [float(x) for x in re.findall(r"largest parameter difference, float\d\d: (\S+)", out)]
    expected = [figures[k] for k in ("model_float64", "model_float32")]
    expected += [figures[k] for k in ("optimizer_float64", "optimizer_float32")]
    assert printed == pytest.approx(expected, rel=1e-3)
    assert out.count("verdict:") == 3
    assert "float32 rounding" in out and "float64 rounding" in out

    # The optimizer alone: float64 to ~1e-15, float32 a few ulps of parameters of order 1.
    assert figures["optimizer_float64"] <= quickstart.FLOAT64_BOUND
    assert 0 < figures["optimizer_float32"] < 2e-6
    # The model (docs: 1.5e-13 in float64, 3.7e-5 in float32): rounding grown by
    # training, of the size of torch's own float32 drift from its float64 run.
    assert figures["model_float64"] < 1e-12
    assert 1e-6 < figures["model_float32"] < 1e-4
    assert figures["model_float32"] < 10 * figures["torch_float32_error"]

    # The getting-started page quotes these three runs, rounded.
    top = GETTING_STARTED.read_text()
    shown = re.search(r"end\s+(\S+) \(float64\) and (\S+) \(float32\) apart", top).groups()
    torch_shown = re.search(r"float32 run ends (\S+) from its float64 run", top).group(1)
    keys = ("model_float64", "model_float32", "torch_float32_error")
    for key, text in zip(keys, (*shown, torch_shown), strict=True):
        assert 1 / 3 < figures[key] / float(text) < 3, (key, text, figures[key])


def test_quickstart_verdict_fails_when_the_optimizer_differs(quickstart, monkeypatch, x64):
    # The asserted bounds mean something: a slightly different lr breaks them.
    real = quickstart.jrmsprop.rmsprop
    monkeypatch.setattr(
        quickstart.jrmsprop, "rmsprop", lambda lr, **kw: real(lr=lr * (1 + 1e-4), **kw)
    )
    with pytest.raises(AssertionError):
        quickstart.main(steps=5)
