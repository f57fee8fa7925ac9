"""Edge cases each pinned by its own test: the checks and boundaries no other test sees alone.

A state dict whose group is RMSprop's but whose state holds another
optimizer's keys; momentum 0 over a state that keeps a momentum buffer
(torch leaves the buffer as it is); a layout rule whose split does not divide
a leaf; ``shard_state``'s warning exactly at its threshold; a ``foreach`` leaf
of exactly ``LARGE_LEAF`` elements.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

import jrmsprop
from jrmsprop import FunctionalRMSprop
from jrmsprop import units as units_module
from jrmsprop.parallel import WARN_BYTES

# ------------------------------------------------ another optimizer's state keys


def _rmsprop_state_dict_with_adam_state():
    """torch RMSprop's group (every key it needs) over state entries that also hold Adam's keys."""
    params = [torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)]
    opt = torch.optim.RMSprop(params, lr=0.01, momentum=0.9)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    state_dict = opt.state_dict()
    entry = state_dict["state"][1]
    entry["exp_avg"] = torch.zeros(2)
    entry["exp_avg_sq"] = torch.zeros(2)
    return state_dict


def test_state_keys_of_another_optimizer_are_refused_and_change_nothing():
    bad = _rmsprop_state_dict_with_adam_state()
    opt = FunctionalRMSprop([jnp.ones(3), jnp.ones(2)], lr=0.5, momentum=0.9)
    opt.step([jnp.ones(3), jnp.ones(2)])
    before = opt.state_dict()
    with pytest.raises(
        ValueError,
        match=r"not an RMSprop state dict \(the group's keys: .*; state keys RMSprop does not "
        r"keep: 'exp_avg', 'exp_avg_sq'\)",
    ):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i, entry in before["state"].items():
        assert after["state"][i].keys() == entry.keys()
        for key, value in entry.items():
            np.testing.assert_array_equal(after["state"][i][key], value)


def test_from_torch_state_dict_refuses_state_keys_of_another_optimizer():
    bad = _rmsprop_state_dict_with_adam_state()
    with pytest.raises(ValueError, match=r"state keys RMSprop does not keep: 'exp_avg'"):
        jrmsprop.from_torch_state_dict(bad, [jnp.ones(3), jnp.ones(2)])


# ------------------------------------------- momentum 0 over a kept momentum buffer

GRADS = np.random.default_rng(3).standard_normal((6, 5)).astype(np.float32)
P0 = np.linspace(-1.0, 1.0, 5, dtype=np.float32)


def _torch_momentum_then_none():
    """torch: 3 steps with momentum 0.9, then 3 with the group's momentum set to 0."""
    p = torch.tensor(P0, requires_grad=True)
    opt = torch.optim.RMSprop([p], lr=0.01, momentum=0.9)
    buffers = []
    for k, g in enumerate(GRADS):
        if k == 3:
            opt.param_groups[0]["momentum"] = 0
        p.grad = torch.tensor(g)
        opt.step()
        buffers.append(opt.state[p]["momentum_buffer"].clone().numpy())
    return p.detach().numpy(), buffers


def test_rmsprop_with_python_momentum_0_leaves_a_kept_buffer_as_torch_does():
    torch_params, torch_buffers = _torch_momentum_then_none()
    # torch's rule: with momentum 0 the buffer is left as it is
    np.testing.assert_array_equal(torch_buffers[-1], torch_buffers[2])
    params = jnp.asarray(P0)
    state = jrmsprop.rmsprop(lr=0.01, momentum=0.9).init(params)
    for k, g in enumerate(GRADS):
        tx = jrmsprop.rmsprop(lr=0.01, momentum=0.9 if k < 3 else 0.0)
        updates, state = jax.jit(tx.update)(jnp.asarray(g), state, params)
        params = params + updates
        buffer = np.asarray(state.momentum_buffer)
        if k == 2:
            kept = buffer
        torch.testing.assert_close(torch.tensor(buffer), torch.tensor(torch_buffers[k]))
    np.testing.assert_array_equal(buffer, kept)  # bit for bit the buffer of step 3
    torch.testing.assert_close(torch.tensor(np.asarray(params)), torch.tensor(torch_params))


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_adapter_with_momentum_0_leaves_a_kept_buffer_as_torch_does(foreach):
    torch_params, torch_buffers = _torch_momentum_then_none()
    opt = FunctionalRMSprop([jnp.asarray(P0)], lr=0.01, momentum=0.9, foreach=foreach)
    for k, g in enumerate(GRADS):
        if k == 3:
            opt.defaults["momentum"] = 0
        opt.step([jnp.asarray(g)])
        buffer = np.asarray(opt.state[0]["momentum_buffer"])
        if k == 2:
            kept = buffer
        torch.testing.assert_close(torch.tensor(buffer), torch.tensor(torch_buffers[k]))
    np.testing.assert_array_equal(buffer, kept)  # bit for bit the buffer of step 3
    torch.testing.assert_close(
        torch.tensor(np.asarray(opt.param_group["params"][0])), torch.tensor(torch_params)
    )


# ------------------------------------------------------- a split that does not divide


def test_split_shardings_refuses_a_split_that_does_not_divide_the_leaf():
    mesh = AbstractMesh((4,), ("data",))  # a layout needs no devices
    params = {"w": jax.ShapeDtypeStruct((6, 4), jnp.float32)}
    with pytest.raises(
        ValueError,
        match=r"P\('data',\) splits dimension 0 of \['w'\] \(shape \(6, 4\)\) into 4 parts, "
        r"which does not divide 6",
    ):
        jrmsprop.split_shardings(params, mesh, "data", rule=lambda *_: P("data"))
    # Two mesh axes of 2 on one dimension: 4 parts, though each axis alone divides 6.
    mesh2 = AbstractMesh((2, 2), ("data", "model"))
    with pytest.raises(ValueError, match=r"into 4 parts, which does not divide 6"):
        jrmsprop.split_shardings(params, mesh2, "data", rule=lambda *_: P(("data", "model")))
    # The same rules on a leaf they divide give that layout.
    fits = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32)}
    assert jrmsprop.split_shardings(fits, mesh, "data", rule=lambda *_: P("data"))[
        "w"
    ].spec == P("data")
    assert jrmsprop.split_shardings(fits, mesh2, "data", rule=lambda *_: P(("data", "model")))[
        "w"
    ].spec == P(("data", "model"))


# ----------------------------------------------------- the warning's threshold, exactly


def _keep_whole(path, shape, axis, size):
    return P()


def test_shard_state_warns_only_above_warn_bytes_not_at_it():
    mesh = jax.make_mesh((1,), ("data",))
    at = {"w": jnp.zeros(WARN_BYTES // 4, jnp.float32)}  # exactly WARN_BYTES
    assert sum(jrmsprop.parallel.replicated_leaves(at, mesh, "data", _keep_whole).values()) == (
        WARN_BYTES
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jrmsprop.shard_state(at, mesh, "data", rule=_keep_whole)  # the default threshold
        jrmsprop.shard_params(at, mesh, "data", rule=_keep_whole)
        jrmsprop.shard_state(at, mesh, "data", rule=_keep_whole, warn_bytes=WARN_BYTES)
    over = {"w": jnp.zeros(WARN_BYTES // 4 + 1, jnp.float32)}  # 4 bytes more
    with pytest.warns(UserWarning, match=rf"{WARN_BYTES + 4} bytes in 1 leaves"):
        jrmsprop.shard_state(over, mesh, "data", rule=_keep_whole)
    with pytest.warns(UserWarning, match=rf"{WARN_BYTES} bytes in 1 leaves"):
        jrmsprop.shard_state(at, mesh, "data", rule=_keep_whole, warn_bytes=WARN_BYTES - 1)


# ---------------------------------------------------- a leaf of exactly LARGE_LEAF elements


def test_a_leaf_of_exactly_large_leaf_elements_is_a_unit_of_its_own():
    large = units_module.LARGE_LEAF
    f32 = jnp.dtype(jnp.float32)
    sizes = [1, large, large - 1, 1]
    assert units_module.group_positions([f32] * 4, sizes, True) == [[0, 2, 3], [1]]
    # The adapter's layout, and its numbers: each parameter's as with foreach=False.
    shapes = [(1,), (large,), (large - 1,), (1,)]
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    fused = FunctionalRMSprop([jnp.asarray(x) for x in init], momentum=0.5, foreach=True)
    loop = FunctionalRMSprop([jnp.asarray(x) for x in init], momentum=0.5)
    assert fused._layout.units == [[0, 2, 3], [1]]
    for _ in range(2):
        fused.step([jnp.asarray(g) for g in grads])
        loop.step([jnp.asarray(g) for g in grads])
    for a, b in zip(fused.param_group["params"], loop.param_group["params"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_a_momentum_below_float32s_range_is_still_torchs_momentum_branch():
    # torch reads momentum=1e-300 as a double, > 0: the buffer takes g / avg. JAX with x64 off
    # would round it to float32's 0, the momentum-free branch that keeps the buffer at zero.
    p0 = np.array([1.0, -2.0, 3.0], np.float32)
    g = np.array([0.5, -1.0, 2.0], np.float32)
    opt = jrmsprop.rmsprop(lr=1e-2, momentum=1e-300)
    params = jnp.asarray(p0)
    state = opt.init(params)
    updates, state = opt.update(jnp.asarray(g), state, params)

    tp = torch.tensor(p0, requires_grad=True)
    topt = torch.optim.RMSprop([tp], lr=1e-2, momentum=1e-300)
    tp.grad = torch.tensor(g)
    topt.step()
    buffer = topt.state[tp]["momentum_buffer"].numpy()
    assert np.all(buffer != 0)
    np.testing.assert_allclose(np.asarray(state.momentum_buffer), buffer, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(params + updates), tp.detach().numpy(), rtol=1e-6)
