"""Test-wide settings."""

import os

import jax
import torch
from hypothesis import HealthCheck, settings

# float64/complex128 parity needs x64.
jax.config.update("jax_enable_x64", True)
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


@pytest.fixture
def x64():
    """64-bit JAX (float64, complex128) for the duration of one test."""
    with jax.enable_x64(True):
        yield
