"""One process of a multi-process data-parallel run; started twice by tests/test_parallel.py.

Usage: python multihost_prog.py COORDINATOR NUM_PROCESSES PROCESS_ID OUT.npz
Each process owns one CPU device and its slice of the batch; gradients are
all-reduced over gloo on 127.0.0.1. Writes this process's final params and
state (its addressable copy of the replicated arrays) to OUT.npz.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax
from common import BATCH, STEPS, flat, loss_fn, make_problem, optimizer
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main() -> None:
    coordinator, num_processes, process_id, path = sys.argv[1:5]
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(num_processes),
        process_id=int(process_id),
        initialization_timeout=60,
    )
    n, me = jax.process_count(), jax.process_index()
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))

    params, x, y = make_problem()
    opt = optimizer()
    # Every process holds the same initial params; each feeds only its own batch slice.
    params = jax.tree.map(lambda a: jax.make_array_from_process_local_data(replicated, a), params)
    rows = slice(me * BATCH // n, (me + 1) * BATCH // n)
    x = jax.make_array_from_process_local_data(batch, x[rows])
    y = jax.make_array_from_process_local_data(batch, y[rows])
    state = jax.jit(opt.init)(params)

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(STEPS):
        params, state = step(params, state, x, y)
        jax.block_until_ready((params, state))

    local = lambda tree: jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)
    out = {f"params{k}": v for k, v in flat(local(params)).items()}
    out.update({f"state{k}": v for k, v in flat(local(state)).items()})
    out["process_index"] = np.array(me)
    out["process_count"] = np.array(n)
    np.savez(path, **out)
    jax.distributed.shutdown()
    print(f"process {me} of {n}: done", flush=True)


if __name__ == "__main__":
    main()
