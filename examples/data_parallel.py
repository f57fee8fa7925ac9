"""Data-parallel training with jrmsprop: pmap, shard_map, sharded jit, ZeRO-1 and FSDP.

Run:  python examples/data_parallel.py            (CPU: 4 forced host devices)
      python examples/data_parallel.py --steps 200 --batch 4096

On a machine without accelerators it splits the CPU into 4 host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4, set here before JAX starts
unless XLA_FLAGS already names a count). On GPUs or TPUs it uses all local
devices. Each way of going data-parallel trains the same model on the same
data and is compared with one device on the full batch.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # Only the host (CPU) platform reads this; on a GPU/TPU machine it is inert.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    )

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jrmsprop


def init_params(key: jax.Array, width: int) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (16, width)) / 4,
        "b1": jnp.zeros(width),
        "w2": jax.random.normal(k2, (width, 1)) / jnp.sqrt(width),
        "b2": jnp.zeros(1),
    }


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def apply(opt, grads, state, params):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def train(step, params, state, x, y, steps: int):
    """Runs ``steps`` steps; returns params, state and seconds per step after the first."""
    params, state = step(params, state, x, y)  # compiles
    jax.block_until_ready((params, state))
    start = time.perf_counter()
    for _ in range(steps - 1):
        params, state = step(params, state, x, y)
        # Wait for each step. On CPU this is what keeps in-process collectives
        # from stalling: the XLA CPU client lets each device queue up to 32
        # computations ahead of Python, and running further ahead can deadlock
        # the collective rendezvous (see the README). A real loop does the same
        # when it reads the loss every step.
        jax.block_until_ready((params, state))
    return params, state, (time.perf_counter() - start) / max(steps - 1, 1)


def max_diff(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(u) - jnp.asarray(v))))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()

    devices = jax.devices()
    n = len(devices)
    print(f"{n} x {devices[0].device_kind} ({devices[0].platform})")
    if args.batch % n:
        raise SystemExit(f"--batch {args.batch} must be divisible by the {n} devices")
    key = jax.random.key(0)
    params = init_params(key, args.width)
    x = jax.random.normal(jax.random.fold_in(key, 1), (args.batch, 16))
    y = jnp.sin(x.sum(axis=1, keepdims=True))
    opt = jrmsprop.rmsprop(lr=1e-3, momentum=0.9, centered=True)
    results = {}

    # 0. The reference: one device, the full batch.
    def plain_step(params, state, x, y):
        return apply(opt, jax.grad(loss_fn)(params, x, y), state, params)

    ref, _, sec = train(jax.jit(plain_step), params, opt.init(params), x, y, args.steps)
    results["one device"] = (ref, sec)

    # 1. pmap: one replica per device, gradients pmean'ed over the device axis.
    #    jax.device_put_replicated is gone: replicate by stacking n copies.
    def pmap_step(params, state, x, y):
        grads = jax.lax.pmean(jax.grad(loss_fn)(params, x, y), "batch")
        return apply(opt, grads, state, params)

    stacked = jax.tree.map(lambda a: jnp.stack([a] * n), params)
    shards = lambda a: a.reshape(n, a.shape[0] // n, *a.shape[1:])
    out, _, sec = train(
        jax.pmap(pmap_step, axis_name="batch"),
        stacked,
        jax.pmap(opt.init)(stacked),
        shards(x),
        shards(y),
        args.steps,
    )
    replicas = [jax.tree.map(lambda a, r=r: a[r], out) for r in range(n)]
    assert all(max_diff(replicas[0], r) == 0.0 for r in replicas), "replicas drifted apart"
    results["pmap"] = (replicas[0], sec)

    # A mesh for the rest. jax.make_mesh defaults to Explicit axes in current JAX;
    # Auto axes let in/out shardings (GSPMD) place everything, as below.
    mesh = jax.make_mesh((n,), ("batch",), axis_types=(AxisType.Auto,))
    rows = NamedSharding(mesh, P("batch"))
    xs, ys = jax.device_put(x, rows), jax.device_put(y, rows)

    # 2. shard_map. The pitfall: params enter replicated (P()), and under
    #    shard_map (check_vma=True, the default) the cotangent of a replicated
    #    input is already psum'ed over the axis. So jax.lax.pmean(jax.grad(local
    #    loss)) is NOT the mean gradient: it is the SUM over devices (n times too
    #    large; pmean of an already-replicated value changes nothing). The right
    #    pattern: differentiate the global loss, pmean inside the loss (or divide
    #    grad(local loss) by the axis size, or pass check_vma=False and pmean the
    #    local grads, as pmap code did).
    def shard_map_step(params, state, x, y):
        grads = jax.grad(lambda p: jax.lax.pmean(loss_fn(p, x, y), "batch"))(params)
        return apply(opt, grads, state, params)

    step = jax.jit(
        jax.shard_map(
            shard_map_step,
            mesh=mesh,
            in_specs=(P(), P(), P("batch"), P("batch")),
            out_specs=(P(), P()),
        )
    )
    rep_params = jrmsprop.replicate(params, mesh)
    out, _, sec = train(
        step, rep_params, jrmsprop.replicate(opt.init(params), mesh), xs, ys, args.steps
    )
    results["shard_map"] = (out, sec)

    # 3. jit with NamedSharding: params replicated, batch split; XLA inserts the all-reduce.
    out, _, sec = train(
        jax.jit(plain_step),
        rep_params,
        jrmsprop.replicate(opt.init(params), mesh),
        xs,
        ys,
        args.steps,
    )
    results["jit + NamedSharding"] = (out, sec)

    # 4. ZeRO-1: the optimizer state split over the batch axis (params replicated).
    state = jrmsprop.shard_state(opt.init(params), mesh, "batch")
    # out_shardings keep the layout across steps: params replicated, state split.
    layout = (
        jax.tree.map(lambda a: a.sharding, rep_params),
        jrmsprop.split_shardings(state, mesh, "batch"),
    )
    out, state_out, sec = train(
        jax.jit(plain_step, out_shardings=layout), rep_params, state, xs, ys, args.steps
    )
    results["ZeRO-1 (shard_state)"] = (out, sec)
    full_bytes = jrmsprop.bytes_per_device(jrmsprop.replicate(opt.init(params), mesh))
    zero_bytes = jrmsprop.bytes_per_device(state_out)

    # 5. FSDP-style: params split as well; XLA gathers each where it is used whole.
    fsdp_params = jrmsprop.shard_params(params, mesh, "batch")
    layout = (
        jrmsprop.split_shardings(fsdp_params, mesh, "batch"),
        jrmsprop.split_shardings(state, mesh, "batch"),
    )
    out, _, sec = train(
        jax.jit(plain_step, out_shardings=layout),
        fsdp_params,
        jrmsprop.shard_state(opt.init(params), mesh, "batch"),
        xs,
        ys,
        args.steps,
    )
    results["FSDP (shard_params)"] = (out, sec)

    print(f"{args.steps} steps, batch {args.batch}, width {args.width}")
    print(f"{'':24s} {'max |diff| vs one device':>26s} {'ms/step':>9s}")
    for name, (out, sec) in results.items():
        print(f"{name:24s} {max_diff(out, ref):26.3g} {1e3 * sec:9.3f}")
    device = mesh.devices.ravel()[0]
    print(
        f"optimizer state on {device}: {full_bytes[device]} bytes replicated, "
        f"{zero_bytes[device]} bytes with shard_state ({full_bytes[device] / zero_bytes[device]:.2f}x less)"
    )


if __name__ == "__main__":
    main()
