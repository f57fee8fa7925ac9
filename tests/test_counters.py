"""Step counters never wrap: they saturate at 2**31 - 1 (int32's largest value, optax's
``safe_increment`` rule for ``count``), ``state`` and ``state_dict`` report the same count, and
a count that cannot be kept is refused on load with an error that says so."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jrmsprop

TOP = 2**31 - 1


def _loaded(step):
    params = [jnp.ones(3, jnp.float32)]
    opt = jrmsprop.FunctionalRMSprop(params, lr=1e-2)
    saved = {
        "state": {0: {"step": step, "square_avg": np.full(3, 0.5, np.float32)}},
        "param_groups": [dict(opt.state_dict()["param_groups"][0])],
    }
    opt.load_state_dict(saved)
    return opt


def test_rmsprop_step_vector_saturates_like_count():
    params = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(2, jnp.float32)}
    opt = jrmsprop.rmsprop(lr=1e-2)
    state = opt.init(params)
    state = state._replace(
        step=jnp.array([TOP, TOP - 1], jnp.int32), count=jnp.asarray(TOP, jnp.int32)
    )
    grads = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(2, jnp.float32)}
    for _ in range(2):
        _, state = opt.update(grads, state, params)
    assert np.asarray(state.step).tolist() == [TOP, TOP]  # never negative
    assert int(state.count) == TOP == int(optax.safe_increment(jnp.asarray(TOP, jnp.int32)))


def test_adapter_step_at_2_31_minus_1_saturates_and_both_views_agree():
    opt = _loaded(np.float64(TOP - 1))
    for _ in range(3):
        opt.step([jnp.ones(3, jnp.float32)])
    assert int(opt.state[0]["step"]) == TOP
    saved = opt.state_dict()["state"][0]["step"]
    assert saved.dtype == np.float64 and int(saved) == TOP  # float32 cannot hold it


def test_past_2_24_state_dict_keeps_the_exact_count():
    opt = _loaded(np.float64(2**24))
    opt.step([jnp.ones(3, jnp.float32)])
    assert int(opt.state[0]["step"]) == 2**24 + 1
    assert int(opt.state_dict()["state"][0]["step"]) == 2**24 + 1  # float32 would say 2**24
    small = _loaded(np.float32(5)).state_dict()["state"][0]["step"]
    assert small.dtype == np.float32  # torch's dtype while float32 is exact


def test_torchs_float32_step_stops_counting_at_2_24():
    """What the docs say of torch: its float32 step tensor cannot go past 2**24 (adding 1
    rounds back); RMSprop's math never reads step, so only the count is affected."""
    p = torch.ones(3, requires_grad=True)
    opt = torch.optim.RMSprop([p], lr=1e-2)
    p.grad = torch.ones(3)
    opt.step()
    opt.state[p]["step"].fill_(2.0**24)
    opt.step()
    assert opt.state[p]["step"].dtype == torch.float32
    assert float(opt.state[p]["step"]) == 2.0**24


@pytest.mark.parametrize("step", [1e20, float(2**31), np.float32(TOP)])
def test_a_step_that_cannot_be_kept_is_refused_on_load_and_nothing_changes(step):
    params = [jnp.ones(3, jnp.float32)]
    opt = jrmsprop.FunctionalRMSprop(params, lr=1e-2)
    opt.step([jnp.ones(3, jnp.float32)])
    before = opt.state_dict()
    bad = {
        "state": {0: {"step": step, "square_avg": np.full(3, 0.5, np.float32)}},
        "param_groups": [dict(before["param_groups"][0])],
    }
    with pytest.raises(ValueError, match=r"more than 2\*\*31 - 1 = 2147483647"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert int(after["state"][0]["step"]) == 1
    np.testing.assert_array_equal(after["state"][0]["square_avg"], before["state"][0]["square_avg"])
