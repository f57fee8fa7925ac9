"""FunctionalRMSprop with gradients on other devices; run by tests/test_adapter_transaction.py.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=2 python adapter_devices_prog.py
Asserts, for foreach False and True, on 2 forced host devices:

* a gradient committed to another device, at the last position (the last
  unit with foreach=True), is refused before anything runs: a ValueError
  that names the position and says how to move it; params, state and steps
  exactly as before, nothing deleted, and the next step runs;
* a gradient on the parameter's devices with another sharding is accepted,
  the parameter keeps its sharding, and the numbers are the one-device ones;
* parameters committed to device 1 with uncommitted gradients stay there.

Exits 0 and prints "ok" when every check holds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jrmsprop import FunctionalRMSprop, validation

N = 130  # with foreach=True: units of 64, 64 and 2


def snapshot(opt):
    params = [np.asarray(p) for p in opt.param_group["params"]]
    sd = opt.state_dict()
    state = {i: {k: np.asarray(v) for k, v in e.items()} for i, e in sd["state"].items()}
    return params, state


def assert_same(a, b):
    for x, y in zip(a[0], b[0]):
        np.testing.assert_array_equal(x, y)
    assert a[1].keys() == b[1].keys()
    for i in a[1]:
        for k in a[1][i]:
            np.testing.assert_array_equal(a[1][i][k], b[1][i][k])


def main() -> None:
    d0, d1 = jax.devices()
    # Two devices: the bulk skip of one-device processes must not apply.
    assert not validation._one_device_in_process()
    rng = np.random.default_rng(0)
    for foreach in (False, True):
        opt = FunctionalRMSprop(
            [jnp.asarray(rng.standard_normal(4), jnp.float32) for _ in range(N)],
            lr=0.01,
            momentum=0.9,
            centered=True,
            foreach=foreach,
        )
        opt.step([jnp.asarray(rng.standard_normal(4), jnp.float32) for _ in range(N)])
        before = snapshot(opt)
        grads = [jnp.ones(4, jnp.float32) for _ in range(N - 1)]
        grads.append(jax.device_put(jnp.ones(4, jnp.float32), d1))
        try:
            opt.step(grads)
        except ValueError as err:
            message = str(err)
        else:
            raise AssertionError(f"foreach={foreach}: a gradient on {d1} was accepted")
        assert f"[{N - 1}]" in message and "jax.device_put(g, p.sharding)" in message, message
        assert repr(d1) in message and repr(d0) in message, message
        assert not any(p.is_deleted() for p in opt.param_group["params"])
        assert_same(snapshot(opt), before)
        grads[-1] = jax.device_put(grads[-1], d0)
        opt.step(grads)
        assert {int(e["step"]) for e in opt.state_dict()["state"].values()} == {2}

        # Same devices, another sharding: resharded, the parameter keeps its own.
        mesh = Mesh(np.array([d0, d1]), ("d",))
        rows = NamedSharding(mesh, P("d"))
        p0 = rng.standard_normal((4, 4)).astype(np.float32)
        g0 = rng.standard_normal((4, 4)).astype(np.float32)
        sharded = FunctionalRMSprop([jax.device_put(p0, rows)], lr=0.01, foreach=foreach)
        sharded.step([jax.device_put(g0, NamedSharding(mesh, P(None, "d")))])
        (p,) = sharded.param_group["params"]
        assert p.sharding == rows, p.sharding
        one = FunctionalRMSprop([jnp.asarray(p0)], lr=0.01, foreach=foreach)
        one.step([jnp.asarray(g0)])
        np.testing.assert_array_equal(np.asarray(p), np.asarray(one.param_group["params"][0]))

        # Parameters on device 1, uncommitted gradients: they follow the parameters.
        there = FunctionalRMSprop(
            [jax.device_put(jnp.ones(4), d1) for _ in range(3)], lr=0.01, foreach=foreach
        )
        there.step([jnp.ones(4)] * 3)
        assert all(p.devices() == {d1} for p in there.param_group["params"])
    print("ok")


if __name__ == "__main__":
    main()
