"""Minimal reproduction of the XLA CPU collective stall, and of its cure.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=4 python runahead_repro.py [--sync] [STEPS]

A batch-sharded jit step over forced host devices, STEPS times (default 50).
Without --sync the host enqueues every step without waiting; with --sync it
waits for each step (jax.block_until_ready). Not run in CI: stall_loop.py
runs it to show the cause (see the README, "Small CPU machines").
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P


def main() -> None:
    sync = "--sync" in sys.argv
    numbers = [a for a in sys.argv[1:] if a.isdigit()]
    steps = int(numbers[0]) if numbers else 50
    start = time.monotonic()
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    w = jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, P()))
    x = jax.device_put(
        jnp.arange(64 * 16, dtype=jnp.float32).reshape(64, 16) / 1000,
        NamedSharding(mesh, P("data")),
    )

    @jax.jit
    def step(w, x):
        return w - 0.01 * jax.grad(lambda w: jnp.mean((x @ w) ** 2))(w)

    for _ in range(steps):
        w = step(w, x)
        if sync:
            w.block_until_ready()
    w.block_until_ready()
    print(f"ok: {steps} steps on {jax.device_count()} devices in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
