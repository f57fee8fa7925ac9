"""The problem every parallel test trains: one definition for the programs and the reference.

Imported by the subprocess programs (many devices) and by tests/test_parallel.py
(the single-device reference, in the pytest process itself). float64, so the
only difference between a parallel and the single-device run is the order of
the batch reduction.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))


def _die_with_parent() -> None:
    """On Linux, SIGKILL this process when its parent dies.

    The test's ``finally`` ends its subprocesses; this covers what it cannot:
    the test process itself killed (say, by a CI timeout).
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


if os.path.basename(sys.argv[0]).endswith("_prog.py"):
    _die_with_parent()

sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root

import jrmsprop

BATCH = 32
STEPS = 8
# Every buffer in use (momentum, centered, weight decay), so every state leaf is checked.
OPT_KWARGS = {
    "lr": 1e-2,
    "alpha": 0.9,
    "eps": 1e-8,
    "weight_decay": 1e-2,
    "momentum": 0.9,
    "centered": True,
}


def make_problem() -> tuple[dict, np.ndarray, np.ndarray]:
    """Params (numpy) and a full batch; "scale" (3,) does not split over 2 or 4 devices."""
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.normal(size=(8, 16)) / 3,
        "b1": rng.normal(size=(16,)) / 10,
        "w2": rng.normal(size=(16, 4)) / 4,
        "b2": np.zeros(4),
        "scale": np.ones(3),
    }
    x = rng.normal(size=(BATCH, 8))
    y = rng.normal(size=(BATCH, 4))
    return params, x, y


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error over the (local) batch."""
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    out = (h @ params["w2"] + params["b2"]) * jnp.sum(params["scale"]) / 3
    return jnp.mean((out - y) ** 2)


def optimizer():
    return jrmsprop.rmsprop(**OPT_KWARGS)


def reference_run() -> tuple[dict, object]:
    """STEPS steps on one device over the full batch: what every parallel run must equal."""
    params, x, y = make_problem()
    opt = optimizer()
    params = jax.tree.map(jnp.asarray, params)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(STEPS):
        params, state = step(params, state)
    return params, state


def flat(tree) -> dict:
    """{path: numpy array} for saving a pytree in an .npz and comparing it leaf by leaf."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
