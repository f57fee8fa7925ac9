"""Test-wide settings."""

import os

import jax
import jax.numpy as jnp
import torch
from hypothesis import HealthCheck, settings

# The suite runs in JAX's default mode (x64 off), as users do; a test that
# needs float64 or complex128 takes the `x64` fixture below.

# The reference runs on tiny tensors, where torch's intra-op threads only
# contend with XLA's for the machine's two cores.
torch.set_num_threads(1)

# The default profile (CI and the README's test command) is derandomized and
# keeps no example database: the same examples every run, on every machine, so
# a run never fails by luck nor replays a failure saved by an earlier run.
# `pytest --hypothesis-profile=thorough` draws many more fresh random examples
# (add `--hypothesis-seed=N` to replay one run).
settings.register_profile(
    "default", derandomize=True, database=None, max_examples=60, deadline=None
)
settings.register_profile(
    "thorough",
    derandomize=False,
    database=None,
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def default_mode():
    """Every test ends in JAX's default mode: a test that leaves x64 on fails (and turns it off)."""
    yield
    if jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", False)
        pytest.fail("the test left jax_enable_x64 on: use the x64 fixture (a context) instead")


@pytest.fixture
def x64():
    """64-bit JAX (float64, complex128) for the duration of one test."""
    with jax.enable_x64(True):
        yield


WIDE = ("float64", "complex128")


def is_wide(value) -> bool:
    """Whether a dtype parameter (a name, a numpy, JAX or torch dtype, or a tuple) is 64-bit."""
    if isinstance(value, (tuple, list)):
        return any(map(is_wide, value))
    if isinstance(value, torch.dtype):
        return value in (torch.float64, torch.complex128)
    try:
        return value is not None and jnp.dtype(value).name in WIDE  # ">f8" too
    except TypeError:
        return False


@pytest.fixture
def x64_if_wide(request):
    """64-bit JAX for the cases of a test whose dtype parameter is float64 or complex128.

    Reads the test's parameters whose names contain ``dtype`` or ``precision``;
    the other cases run in JAX's default mode, as users do.
    """
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    wide = any(
        is_wide(value)
        for name, value in params.items()
        if "dtype" in name or "precision" in name
    )
    with jax.enable_x64(wide):
        yield
