"""The package as users install it: the wheel carries LICENSE and py.typed, and
mypy reads jrmsprop's annotations in a user's script."""

import pathlib
import subprocess
import sys
import zipfile

import pytest

import jrmsprop

ROOT = pathlib.Path(__file__).resolve().parents[1]

USER_SCRIPT = """\
import jax.numpy as jnp

import jrmsprop

tx = jrmsprop.rmsprop(lr="0.01")
opt = jrmsprop.FunctionalRMSprop([jnp.ones(3)], lr=1e-2)
n: int = opt.defaults
"""


def test_wheel_ships_license_and_py_typed(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("jrmsprop-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "jrmsprop/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(f"jrmsprop-{jrmsprop.__version__}.dist-info/METADATA")
    assert b"License-Expression: Apache-2.0" in metadata
    assert b"Classifier: Typing :: Typed" in metadata


def test_license_is_apache_2():
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert "Version 2.0" in (ROOT / "LICENSE").read_text()


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory):
    """One mypy run (it takes most of a minute): the package itself (``-p jrmsprop``, the
    imported one: the installed wheel in CI) and a user's script (``-m user``), with the
    configuration in pyproject.toml."""
    pytest.importorskip("mypy")
    where = tmp_path_factory.mktemp("mypy")
    (where / "user.py").write_text(USER_SCRIPT)
    # An installed wheel is in site-packages, where mypy finds it. An editable
    # install's import hook is invisible to mypy: point MYPYPATH at the checkout.
    package_root = pathlib.Path(jrmsprop.__file__).resolve().parents[1]
    env = {"PATH": "/usr/bin:/bin"}
    if package_root.name != "site-packages":
        env["MYPYPATH"] = str(package_root)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "-p",
            "jrmsprop",
            "-m",
            "user",
        ],
        check=False,
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result.stdout + result.stderr


def test_mypy_sees_jrmsprop_types_in_user_code(mypy_run):
    out = mypy_run
    assert "missing library stubs or py.typed" not in out
    assert "user.py:5: error" in out and '"rmsprop"' in out, out
    assert "user.py:7: error: Incompatible types in assignment" in out, out


def test_mypy_passes_over_the_package(mypy_run):
    errors = [line for line in mypy_run.splitlines() if ": error:" in line]
    assert errors and all(line.startswith("user.py:") for line in errors), mypy_run
    assert "Found 2 errors in 1 file" in mypy_run, mypy_run


def test_under_ci_the_tests_import_the_installed_wheel():
    """The README's test command installs the wheel and runs ``python -P -m pytest``: with
    ``-P`` the checkout is not on ``sys.path``, so every test imports the installed package and
    a module or data file missing from the wheel fails the run."""
    here = pathlib.Path(jrmsprop.__file__).resolve()
    if not sys.flags.safe_path:
        pytest.skip("not run with python -P (a developer's editable run)")
    assert here.parent != ROOT / "jrmsprop", f"jrmsprop imported from the checkout: {here}"
    assert "site-packages" in here.parts, here
    assert (here.parent / "py.typed").exists()
