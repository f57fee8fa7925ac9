"""Save a sharded run with orbax on one mesh, resume it on another; run in a subprocess.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=N python ckpt_prog.py MODE DIR OUT.npz
MODE save: FSDP params and ZeRO-1 state on N devices; BEFORE steps, checkpoint to DIR,
  AFTER more steps (the uninterrupted run). MODE resume: restore DIR onto a mesh of
  the N devices at hand, with target shardings from jrmsprop.split_shardings on that
  mesh (the README's recipe), and run the AFTER steps. Writes the final params and
  state, and how the restored arrays were laid out, to OUT.npz. float64; every step
  ends in jax.block_until_ready (see dp_prog.py).
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from common import OPT_KWARGS, flat, loss_fn, make_problem
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jrmsprop

jax.config.update("jax_enable_x64", True)
BEFORE, AFTER = 4, 4


def optimizer():
    # A schedule makes `count` matter: a resume with a wrong count diverges.
    schedule = optax.exponential_decay(1e-2, transition_steps=3, decay_rate=0.7)
    return jrmsprop.rmsprop(**{**OPT_KWARGS, "lr": schedule})


def train(step, params, state, x, y, steps):
    for _ in range(steps):
        params, state = step(params, state, x, y)
        jax.block_until_ready((params, state))  # bounded run-ahead: see dp_prog.py
    return params, state


def main() -> None:
    mode, directory, path = sys.argv[1:4]
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    params, x, y = make_problem()
    rows = NamedSharding(mesh, P("data"))
    x, y = jax.device_put(x, rows), jax.device_put(y, rows)
    opt = optimizer()
    # The README's recipe: the layout of the mesh at hand, from shapes alone.
    abstract = {"params": jax.eval_shape(lambda: params)}
    abstract["opt_state"] = jax.eval_shape(opt.init, abstract["params"])
    layout = jrmsprop.split_shardings(abstract, mesh, "data")

    def step(params, state, x, y):
        updates, state = opt.update(jax.grad(loss_fn)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, out_shardings=(layout["params"], layout["opt_state"]))
    out = {"devices": np.array(jax.device_count())}
    if mode == "save":
        params = jrmsprop.shard_params(params, mesh, "data")
        state = jrmsprop.shard_state(opt.init(params), mesh, "data")
        params, state = train(step, params, state, x, y, BEFORE)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(directory, {"params": params, "opt_state": state})
        checkpointer.wait_until_finished()
    elif mode == "resume":
        # The recipe for one mesh, without target shardings: orbax reuses the saved ones.
        plain = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
        try:
            ocp.StandardCheckpointer().restore(directory, plain)
            out["plain_restore_error"] = np.array("")
        except ValueError as error:
            out["plain_restore_error"] = np.array(str(error))
        target = jax.tree.map(
            lambda a, sharding: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
            abstract,
            layout,
        )
        restored = ocp.StandardCheckpointer().restore(directory, target)
        params, state = restored["params"], restored["opt_state"]
        out["restored/devices"] = np.array(
            [len(leaf.sharding.device_set) for leaf in jax.tree.leaves(restored)]
        )
        out["restored/same_layout"] = np.array(
            jax.tree.leaves(jax.tree.map(lambda a, s: a.sharding == s, restored, layout))
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    params, state = train(step, params, state, x, y, AFTER)
    out.update({f"params{k}": v for k, v in flat(params).items()})
    out.update({f"state{k}": v for k, v in flat(state).items()})
    np.savez(path, **out)
    print(f"{mode}: done on {jax.device_count()} devices", flush=True)


if __name__ == "__main__":
    main()
