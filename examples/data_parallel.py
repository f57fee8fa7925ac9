"""Data-parallel training with jrmsprop: pmap, shard_map, sharded jit, ZeRO-1 and FSDP.

Run:  python examples/data_parallel.py            (CPU: 4 forced host devices)
      python examples/data_parallel.py --x64      (float64: the check after every step is tight)
      python examples/data_parallel.py --steps 200 --batch 4096

On a machine without accelerators it splits the CPU into 4 host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4, set here before JAX starts
unless XLA_FLAGS already names a count). On GPUs or TPUs it uses all local
devices. Each way of going data-parallel trains the same model on the same
data and is compared with one device on the full batch: params AND optimizer
state, leaf by leaf, as the largest relative difference max|a - b| / max|b|.
The run exits with status 1 when a path is further from one device than:

* after the first step: 1e-4 in float32, 1e-12 in float64 (--x64);
* after the last step: 1e-10 in float64. In float32 the gap grows with the
  steps (RMSprop's g / sqrt(v) amplifies the rounding of a different batch
  reduction order), so it is printed, not checked: check in float64, or
  after one step.
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
import numpy as np
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


# Largest relative difference from one device that each check accepts (see the docstring).
TOLERANCE = {"first step": {"float32": 1e-4, "float64": 1e-12}, "last step": {"float64": 1e-10}}


def train(step, params, state, x, y, steps: int):
    """Runs ``steps`` steps; returns (params, state) after the first and after the last
    step, and seconds per step after the first."""
    params, state = step(params, state, x, y)  # compiles
    jax.block_until_ready((params, state))
    first = (params, state)
    start = time.perf_counter()
    for _ in range(steps - 1):
        params, state = step(params, state, x, y)
        # Wait for each step. On CPU this is what keeps in-process collectives
        # from stalling: the XLA CPU client lets each device queue up to 32
        # computations ahead of Python, and running further ahead can deadlock
        # the collective rendezvous (see the docs' data-parallel page). A real loop does the same
        # when it reads the loss every step.
        jax.block_until_ready((params, state))
    return first, (params, state), (time.perf_counter() - start) / max(steps - 1, 1)


def max_diff(a, b) -> float:
    """Largest relative difference max|a - b| / max|b| over the leaves (exact for integers)."""
    worst = 0.0
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        scale = max(float(np.max(np.abs(v), initial=0.0)), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(u - v), initial=0.0)) / scale)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--x64", action="store_true", help="float64 params, state and data")
    args = parser.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = "float64" if args.x64 else "float32"

    devices = jax.devices()
    n = len(devices)
    print(f"{n} x {devices[0].device_kind} ({devices[0].platform})")
    if args.batch % n:
        raise SystemExit(f"--batch {args.batch} must be divisible by the {n} devices")
    key = jax.random.key(0)
    params = jax.tree.map(lambda a: a.astype(dtype), init_params(key, args.width))
    x = jax.random.normal(jax.random.fold_in(key, 1), (args.batch, 16), dtype)
    y = jnp.sin(x.sum(axis=1, keepdims=True))
    opt = jrmsprop.rmsprop(lr=1e-3, momentum=0.9, centered=True)
    results = {}

    # 0. The reference: one device, the full batch.
    def plain_step(params, state, x, y):
        return apply(opt, jax.grad(loss_fn)(params, x, y), state, params)

    ref_first, ref, sec = train(jax.jit(plain_step), params, opt.init(params), x, y, args.steps)
    results["one device"] = (ref_first, ref, sec)

    # 1. pmap: one replica per device, gradients pmean'ed over the device axis.
    #    jax.device_put_replicated is gone: replicate by stacking n copies.
    def pmap_step(params, state, x, y):
        grads = jax.lax.pmean(jax.grad(loss_fn)(params, x, y), "batch")
        return apply(opt, grads, state, params)

    stacked = jax.tree.map(lambda a: jnp.stack([a] * n), params)
    shards = lambda a: a.reshape(n, a.shape[0] // n, *a.shape[1:])
    first, out, sec = train(
        jax.pmap(pmap_step, axis_name="batch"),
        stacked,
        jax.pmap(opt.init)(stacked),
        shards(x),
        shards(y),
        args.steps,
    )
    replica = lambda tree, r: jax.tree.map(lambda a: a[r], tree)
    assert all(max_diff(replica(out, 0), replica(out, r)) == 0 for r in range(n)), "replicas"
    results["pmap"] = (replica(first, 0), replica(out, 0), sec)

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
    results["shard_map"] = train(
        step, rep_params, jrmsprop.replicate(opt.init(params), mesh), xs, ys, args.steps
    )

    # 3. jit with NamedSharding: params replicated, batch split; XLA inserts the all-reduce.
    results["jit + NamedSharding"] = train(
        jax.jit(plain_step),
        rep_params,
        jrmsprop.replicate(opt.init(params), mesh),
        xs,
        ys,
        args.steps,
    )

    # 4. ZeRO-1: the optimizer state split over the batch axis (params replicated).
    state = jrmsprop.shard_state(opt.init(params), mesh, "batch")
    # out_shardings keep the layout across steps: params replicated, state split.
    layout = (
        jax.tree.map(lambda a: a.sharding, rep_params),
        jrmsprop.split_shardings(state, mesh, "batch"),
    )
    results["ZeRO-1 (shard_state)"] = train(
        jax.jit(plain_step, out_shardings=layout), rep_params, state, xs, ys, args.steps
    )
    full_bytes = jrmsprop.bytes_per_device(jrmsprop.replicate(opt.init(params), mesh))
    zero_bytes = jrmsprop.bytes_per_device(results["ZeRO-1 (shard_state)"][1][1])
    whole = jrmsprop.parallel.replicated_leaves(state, mesh, "batch")

    # 5. FSDP-style: params split as well; XLA gathers each where it is used whole.
    fsdp_params = jrmsprop.shard_params(params, mesh, "batch")
    layout = (
        jrmsprop.split_shardings(fsdp_params, mesh, "batch"),
        jrmsprop.split_shardings(state, mesh, "batch"),
    )
    results["FSDP (shard_params)"] = train(
        jax.jit(plain_step, out_shardings=layout),
        fsdp_params,
        jrmsprop.shard_state(opt.init(params), mesh, "batch"),
        xs,
        ys,
        args.steps,
    )

    print(f"{args.steps} steps, batch {args.batch}, width {args.width}, {dtype}")
    print("largest relative difference from one device, params and optimizer state:")
    print(f"{'':24s} {'first step':>12s} {'last step':>12s} {'ms/step':>9s}")
    failed = []
    for name, (first, last, sec) in results.items():
        diffs = {"first step": max_diff(first, ref_first), "last step": max_diff(last, ref)}
        marks = ""
        for when, diff in diffs.items():
            bound = TOLERANCE[when].get(dtype)
            if bound is not None and diff > bound:
                failed.append(f"{name}, {when}: {diff:.3g} > {bound:g}")
                marks += " !"
        print(
            f"{name:24s} {diffs['first step']:12.3g} {diffs['last step']:12.3g} "
            f"{1e3 * sec:9.3f}{marks}"
        )
    checks = "; ".join(
        f"{when} {TOLERANCE[when][dtype]:g}" for when in TOLERANCE if dtype in TOLERANCE[when]
    )
    print(f"tolerance ({dtype}): {checks}" + ("" if args.x64 else "; last step not checked"))
    device = mesh.devices.ravel()[0]
    print(
        f"optimizer state on {device}: {full_bytes[device]} bytes replicated, "
        f"{zero_bytes[device]} bytes with shard_state "
        f"({full_bytes[device] / zero_bytes[device]:.2f}x less; "
        f"kept whole: {sum(whole.values())} bytes in {', '.join(whole)})"
    )
    if failed:
        raise SystemExit("further from one device than the tolerance: " + "; ".join(failed))


if __name__ == "__main__":
    main()
