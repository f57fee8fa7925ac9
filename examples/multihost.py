"""The same data-parallel jrmsprop program on 1 host or N hosts (jax.distributed).

On a cluster, start this file once per host (or per GPU/process), as the
launcher does; ``jax.distributed.initialize()`` reads the process count, the
process id and the coordinator from the cluster's environment (Slurm, Open
MPI, Kubernetes/JobSet, Cloud TPU):

  srun --nodes=2 --ntasks-per-node=1 python examples/multihost.py

Anywhere else, name them:

  python examples/multihost.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0
  python examples/multihost.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 1

On one machine, try it with N local CPU processes talking gloo over 127.0.0.1:

  python examples/multihost.py --spawn 2          (then 1 process, and compares)
  python examples/multihost.py --spawn 2 --x64    (float64: a tight check after every step)

Every process feeds only its own slice of the global batch; params and
optimizer state live on the global mesh (``--zero`` splits the optimizer state
over all devices of all hosts). At the end the processes compare a checksum of
their params: they must agree bit for bit. With ``--spawn N`` the launcher then
runs the same program as ONE process and compares params and optimizer state,
leaf by leaf, as the largest relative difference max|a - b| / max|b|; it exits
with status 1 when the N-process run is further from the one-process run than:

* after the first step: 1e-4 in float32, 1e-12 in float64 (``--x64``);
* after the last step: 1e-10 in float64. In float32 the gap grows with the
  steps (RMSprop's g / sqrt(v) amplifies the rounding of a different
  reduction order), so it is printed, not checked: check in float64, or
  after one step.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jrmsprop

GLOBAL_BATCH = 256
# Largest relative difference from one process that each check accepts (see the docstring).
TOLERANCE = {"first step": {"float32": 1e-4, "float64": 1e-12}, "last step": {"float64": 1e-10}}


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def host_data(process: int, processes: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """This process's rows of the global batch (a real loader reads its own shard)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH, 16)).astype(dtype)
    y = np.sin(x.sum(axis=1, keepdims=True))
    rows = slice(process * GLOBAL_BATCH // processes, (process + 1) * GLOBAL_BATCH // processes)
    return x[rows], y[rows]


def train(args: argparse.Namespace) -> None:
    # CPU collectives across processes need gloo; GPUs use NCCL and TPUs their
    # interconnect whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = np.float64 if args.x64 else np.float32
    if args.coordinator:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    else:
        jax.distributed.initialize()  # reads the cluster environment
    me, processes = jax.process_index(), jax.process_count()
    mesh = jax.make_mesh((jax.device_count(),), ("batch",), axis_types=(AxisType.Auto,))
    if GLOBAL_BATCH % jax.device_count():
        raise SystemExit(f"batch {GLOBAL_BATCH} does not split over {jax.device_count()} devices")
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))

    # The same initial params on every process (same seed), placed on the global mesh.
    rng = np.random.default_rng(1)
    params = {
        "w1": rng.normal(size=(16, 64)).astype(dtype) / 4,
        "b1": np.zeros(64, dtype),
        "w2": rng.normal(size=(64, 1)).astype(dtype) / 8,
        "b2": np.zeros(1, dtype),
    }
    params = jax.tree.map(lambda a: jax.make_array_from_process_local_data(replicated, a), params)
    x, y = host_data(me, processes, dtype)
    x = jax.make_array_from_process_local_data(rows, x)
    y = jax.make_array_from_process_local_data(rows, y)

    opt = jrmsprop.rmsprop(lr=1e-3, momentum=0.9)
    # out_shardings: without it the int32 count/step scalars would land on one local device.
    state = jax.jit(opt.init, out_shardings=replicated)(params)
    if args.zero:
        state = jrmsprop.shard_state(state, mesh, "batch")
    layout = (
        jax.tree.map(lambda a: a.sharding, params),
        jax.tree.map(lambda a: a.sharding, state),
    )

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    step = jax.jit(step, out_shardings=(*layout, replicated))
    # Gathers a tree whole onto every device, so each process can read all of it.
    gather = jax.jit(lambda tree: tree, out_shardings=replicated)
    results = {}
    for i in range(args.steps):
        params, state, loss = step(params, state, x, y)
        if i in (0, args.steps - 1):
            when = "first" if i == 0 else "last"
            for key, leaf in flat(gather((params, state))).items():
                results[f"{when}{key}"] = leaf
        # Reading the loss every step also bounds how far the host runs ahead
        # of the devices (which matters with several CPU devices per process).
        loss = float(loss)
        if me == 0 and (i % 10 == 0 or i == args.steps - 1):
            print(f"step {i:4d}  loss {loss:.6f}", flush=True)

    checksum = np.float64(sum(float(jnp.sum(a)) for a in jax.tree.leaves(params)))
    every = multihost_utils.process_allgather(checksum)
    assert np.all(every == every[0]), f"params differ across processes: {every}"
    if me == 0:
        state_bytes = jrmsprop.bytes_per_device(state)
        print(
            f"{processes} processes, {jax.device_count()} devices: params agree "
            f"(checksum {every[0]:.6f}); optimizer state per device: "
            f"{sorted(set(state_bytes.values()))} bytes",
            flush=True,
        )
        if args.out:
            np.savez(args.out, **results)
    jax.distributed.shutdown()


def flat(tree) -> dict:
    """``{path: numpy array}`` of a tree of replicated arrays, from this process's copy."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0)) for path, leaf in leaves
    }


def max_diff(a: dict, b: dict) -> float:
    """Largest relative difference max|a - b| / max|b| over the leaves (exact for integers)."""
    worst = 0.0
    for key, v in b.items():
        u, v = np.asarray(a[key], np.float64), np.asarray(v, np.float64)
        scale = max(float(np.max(np.abs(v), initial=0.0)), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(u - v), initial=0.0)) / scale)
    return worst


def compare(many: str, one: str, processes: int, dtype: str) -> int:
    """Prints how far the run of ``processes`` processes is from one process; 1 if too far."""
    with np.load(many) as a, np.load(one) as b:
        failed = []
        for when in ("first", "last"):
            keys = [k for k in b.files if k.startswith(when)]
            diff = max_diff({k: a[k] for k in keys}, {k: b[k] for k in keys})
            bound = TOLERANCE[f"{when} step"].get(dtype)
            verdict = "not checked" if bound is None else f"tolerance {bound:g}"
            print(
                f"{processes} processes vs 1 process, {dtype}, params and optimizer state, "
                f"{when} step: largest relative difference {diff:.3g} ({verdict})",
                flush=True,
            )
            if bound is not None and diff > bound:
                failed.append(when)
    if failed:
        print(f"further from one process than the tolerance: {failed}", file=sys.stderr)
        return 1
    print(f"{processes} processes match the single-process run", flush=True)
    return 0


def spawn(n: int, argv: list[str], timeout_s: float = 300.0) -> int:
    """Starts n local processes of this script over 127.0.0.1; bounded, nothing left behind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = []
    try:
        for rank in range(n):
            cmd = [sys.executable, __file__, "--coordinator", f"127.0.0.1:{port}"]
            cmd += ["--num-processes", str(n), "--process-id", str(rank), *argv]
            # Same process group as this launcher: whoever ends the launcher's group ends them.
            procs.append(subprocess.Popen(cmd, env=env))
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                end = min(end, time.monotonic() + 10)  # peers of a failed process would wait
            time.sleep(0.1)
        if any(p.poll() is None for p in procs):
            print(f"stopping: not done after the deadline ({timeout_s:.0f} s)", file=sys.stderr)
            for p in procs:
                p.terminate()
            time.sleep(5)
    finally:
        for p in procs:  # jax.distributed catches SIGTERM, so SIGKILL follows
            p.kill()
            p.wait()
    return max(abs(p.returncode) for p in procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", help="host:port of process 0 (default: from the cluster)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--zero", action="store_true", help="shard the optimizer state (ZeRO-1)")
    parser.add_argument("--x64", action="store_true", help="float64 params, state and data")
    parser.add_argument("--out", help="process 0 saves params and state here (.npz)")
    parser.add_argument(
        "--spawn",
        type=int,
        metavar="N",
        help="run N local CPU processes, then 1, and compare",
    )
    args = parser.parse_args()
    if args.spawn:
        passthrough = ["--steps", str(args.steps)]
        passthrough += ["--zero"] * args.zero + ["--x64"] * args.x64
        with tempfile.TemporaryDirectory() as tmp:
            many, one = os.path.join(tmp, "many.npz"), os.path.join(tmp, "one.npz")
            rc = spawn(args.spawn, [*passthrough, "--out", many])
            rc = rc or spawn(1, [*passthrough, "--out", one])
            if rc == 0:
                rc = compare(many, one, args.spawn, "float64" if args.x64 else "float32")
        sys.exit(rc)
    train(args)


if __name__ == "__main__":
    main()
