"""examples/quickstart.py trains the same model in JAX and torch and they agree."""

import importlib.util
import pathlib


def test_quickstart_jax_and_torch_agree():
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart", path)
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    assert quickstart.main(steps=20) < 1e-4
