"""Data-parallel training on N forced host devices; run by tests/test_parallel.py in a subprocess.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=N python dp_prog.py MODE OUT.npz
MODE: pmap | shard_map | jit | zero1 | fsdp | zero1_explicit. Writes the final params and state
(and, per mode, replicas, pitfall gradients, per-device bytes) to OUT.npz; the
test compares them with the single-device reference.

Every step ends in jax.block_until_ready: the XLA CPU client lets each device
queue up to 32 computations ahead of the host, and with in-process collectives
a host that runs further ahead can deadlock the collective rendezvous
("Termination timeout for all reduce ... Expected N threads to join"); see the
README section "Data-parallel and multi-host training".
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import BATCH, STEPS, flat, loss_fn, make_problem, optimizer
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jrmsprop

jax.config.update("jax_enable_x64", True)


def train(step, params, state, x, y):
    for _ in range(STEPS):
        params, state = step(params, state, x, y)
        jax.block_until_ready((params, state))  # bounded run-ahead: see the module docstring
    return params, state


def apply(opt, grads, state, params):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def run_pmap(out: dict) -> None:
    n = jax.local_device_count()
    params, x, y = make_problem()
    opt = optimizer()
    # jax.device_put_replicated is gone: replicate for pmap by stacking n copies.
    stacked = jax.tree.map(lambda a: np.stack([a] * n), params)
    state = jax.pmap(opt.init)(stacked)

    def step(params, state, x, y):
        grads = jax.lax.pmean(jax.grad(loss_fn)(params, x, y), "data")
        return apply(opt, grads, state, params)

    pstep = jax.pmap(step, axis_name="data")
    params, state = train(
        pstep, stacked, state, x.reshape(n, BATCH // n, -1), y.reshape(n, BATCH // n, -1)
    )
    for r in range(n):
        out.update({f"replica{r}/params{k}": v[r] for k, v in flat(params).items()})
        out.update({f"replica{r}/state{k}": v[r] for k, v in flat(state).items()})


def auto_mesh():
    # jax.make_mesh defaults to Explicit axes in this JAX; these programs use the
    # in_shardings/out_shardings (GSPMD) style, which wants Auto axes.
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def sharded_batch(mesh, x, y):
    batch = NamedSharding(mesh, P("data"))
    return jax.device_put(x, batch), jax.device_put(y, batch)


def run_shard_map(out: dict) -> None:
    mesh = auto_mesh()
    n = mesh.shape["data"]
    params, x, y = make_problem()
    opt = optimizer()
    params = jrmsprop.replicate(params, mesh)
    state = jrmsprop.replicate(opt.init(params), mesh)
    x, y = sharded_batch(mesh, x, y)
    specs = {"mesh": mesh, "in_specs": (P(), P(), P("data"), P("data")), "out_specs": (P(), P())}

    def body(params, state, x, y):
        # The right pattern: differentiate the global (pmean'ed) loss.
        grads = jax.grad(lambda p: jax.lax.pmean(loss_fn(p, x, y), "data"))(params)
        return apply(opt, grads, state, params)

    params_out, state_out = train(jax.jit(jax.shard_map(body, **specs)), params, state, x, y)
    out.update({f"params{k}": v for k, v in flat(params_out).items()})
    out.update({f"state{k}": v for k, v in flat(state_out).items()})

    # The pitfall, measured: the gradient each pattern yields at the initial params.
    def local_grad(p, x, y):
        return jax.grad(loss_fn)(p, x, y)

    variants = {
        "grad_of_local": (local_grad, True),
        "novma_grad_of_local": (local_grad, False),
        "pmean_of_grad": (lambda p, x, y: jax.lax.pmean(local_grad(p, x, y), "data"), True),
        "grad_of_pmean": (
            lambda p, x, y: jax.grad(lambda q: jax.lax.pmean(loss_fn(q, x, y), "data"))(p),
            True,
        ),
        "grad_over_n": (lambda p, x, y: jax.tree.map(lambda g: g / n, local_grad(p, x, y)), True),
        "novma_pmean_of_grad": (
            lambda p, x, y: jax.lax.pmean(local_grad(p, x, y), "data"),
            False,
        ),
    }
    for name, (fn, check_vma) in variants.items():
        grad_fn = jax.jit(
            jax.shard_map(
                fn,
                mesh=mesh,
                in_specs=(P(), P("data"), P("data")),
                out_specs=P(),
                check_vma=check_vma,
            )
        )
        grads = grad_fn(params, x, y)
        out.update({f"pitfall/{name}{k}": v for k, v in flat(grads).items()})


def jit_step(opt):
    def step(params, state, x, y):
        return apply(opt, jax.grad(loss_fn)(params, x, y), state, params)

    return step


def run_jit(out: dict) -> None:
    mesh = auto_mesh()
    params, x, y = make_problem()
    opt = optimizer()
    params = jrmsprop.replicate(params, mesh)
    state = jrmsprop.replicate(opt.init(params), mesh)
    x, y = sharded_batch(mesh, x, y)
    params, state = train(jax.jit(jit_step(opt)), params, state, x, y)
    out["sharding/batch_is_split"] = np.array(not x.sharding.is_fully_replicated)
    out["sharding/params_replicated"] = np.array(
        all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params))
    )
    out.update({f"params{k}": v for k, v in flat(params).items()})
    out.update({f"state{k}": v for k, v in flat(state).items()})


def run_sharded_state(out: dict, fsdp: bool) -> None:
    mesh = auto_mesh()
    params, x, y = make_problem()
    opt = optimizer()
    replicated_state = jrmsprop.replicate(opt.init(jax.tree.map(jnp.asarray, params)), mesh)
    params = (jrmsprop.shard_params if fsdp else jrmsprop.replicate)(params, mesh)
    state = jrmsprop.shard_state(replicated_state, mesh, "data")
    param_layout = jax.tree.map(lambda leaf: leaf.sharding, params)
    state_layout = jrmsprop.split_shardings(state, mesh, "data")
    x, y = sharded_batch(mesh, x, y)
    step = jax.jit(jit_step(opt), out_shardings=(param_layout, state_layout))
    params, state = train(step, params, state, x, y)

    devices = mesh.devices.ravel().tolist()
    per_device = jrmsprop.bytes_per_device(state)
    out["bytes/state_sharded"] = np.array([per_device[d] for d in devices])
    full = jrmsprop.bytes_per_device(replicated_state)
    out["bytes/state_replicated"] = np.array([full[d] for d in devices])
    out["bytes/params"] = np.array([jrmsprop.bytes_per_device(params)[d] for d in devices])
    record_result(out, params, state)


def record_result(out: dict, params, state) -> None:
    """Which leaves ended up split, and every value, for the parent to compare."""
    out["layout/state_split"] = np.array(
        [not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state)]
    )
    out["layout/params_split"] = np.array(
        [not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params)]
    )
    out.update({f"params{k}": v for k, v in flat(params).items()})
    out.update({f"state{k}": v for k, v in flat(state).items()})


def run_zero1_explicit(out: dict) -> None:
    """ZeRO-1 on a mesh with Explicit axes (asked for: not the default on every jax): reshard params whole."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Explicit,))
    params, x, y = make_problem()
    opt = optimizer()

    def step(params, state, x, y):
        params, state = apply(opt, jax.grad(loss_fn)(params, x, y), state, params)
        # The split state made the update, and so the params, split: make them whole again.
        return jax.tree.map(lambda a: jax.sharding.reshard(a, P()), params), state

    with jax.set_mesh(mesh):
        params = jrmsprop.replicate(params, mesh)
        state = jrmsprop.shard_state(opt.init(params), mesh, "data")
        x, y = sharded_batch(mesh, x, y)
        params, state = train(jax.jit(step), params, state, x, y)
    out["layout/explicit"] = np.array(mesh.axis_types[0] == AxisType.Explicit)
    record_result(out, params, state)


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    out: dict = {"devices": np.array(jax.device_count())}
    if mode == "pmap":
        run_pmap(out)
    elif mode == "shard_map":
        run_shard_map(out)
    elif mode == "jit":
        run_jit(out)
    elif mode == "zero1_explicit":
        run_zero1_explicit(out)
    elif mode in ("zero1", "fsdp"):
        run_sharded_state(out, fsdp=mode == "fsdp")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    np.savez(path, **out)
    print(f"{mode}: done on {jax.device_count()} devices", flush=True)


if __name__ == "__main__":
    main()
