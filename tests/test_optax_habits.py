"""optax code runs unchanged with jrmsprop.rmsprop: optax's `learning_rate` name."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import jrmsprop

PARAMS = {"w": jnp.array([1.0, -0.5, 2.0], jnp.float32), "b": jnp.zeros(2, jnp.float32)}
GRADS = [jax.tree.map(lambda p, k=k: jnp.full_like(p, 0.3 * (k + 1) - 0.5), PARAMS) for k in range(4)]


def _run(tx, lrs=None):
    params, state = PARAMS, tx.init(PARAMS)
    for k, grads in enumerate(GRADS):
        if lrs is not None:
            state = optax.tree_utils.tree_set(state, learning_rate=lrs[k])
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def test_learning_rate_is_lr():
    ours, _ = _run(jrmsprop.rmsprop(learning_rate=0.05, momentum=0.9))
    torchs, _ = _run(jrmsprop.rmsprop(0.05, momentum=0.9))
    jax.tree.map(np.testing.assert_array_equal, ours, torchs)


def test_learning_rate_through_inject_hyperparams_tree_get_and_tree_set():
    lrs = [0.1, 0.05, 0.02, 0.01]
    tx = optax.inject_hyperparams(jrmsprop.rmsprop)(learning_rate=0.1, momentum=0.9)
    assert float(optax.tree_utils.tree_get(tx.init(PARAMS), "learning_rate")) == pytest.approx(0.1)
    ours, state = _run(tx, lrs)
    assert float(optax.tree_utils.tree_get(state, "learning_rate")) == pytest.approx(0.01)
    # The same lrs as torch's param_groups edits, through jrmsprop's own lr.
    ref = optax.inject_hyperparams(jrmsprop.rmsprop)(lr=0.1, momentum=0.9)
    params, rstate = PARAMS, ref.init(PARAMS)
    for k, grads in enumerate(GRADS):
        rstate.hyperparams["lr"] = jnp.asarray(lrs[k], jnp.float32)
        updates, rstate = jax.jit(ref.update)(grads, rstate, params)
        params = optax.apply_updates(params, updates)
    jax.tree.map(np.testing.assert_array_equal, ours, params)


def test_flax_train_state_written_the_optax_way():
    tx = optax.inject_hyperparams(jrmsprop.rmsprop)(learning_rate=1e-2)
    ts = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=tx)
    ts = ts.replace(opt_state=optax.tree_utils.tree_set(ts.opt_state, learning_rate=0.5))
    ts = ts.apply_gradients(grads=GRADS[0])
    # inject_hyperparams hands alpha over as a float32 array too: same numbers.
    ref = optax.inject_hyperparams(jrmsprop.rmsprop)(lr=0.5)
    updates, _ = ref.update(GRADS[0], ref.init(PARAMS), PARAMS)
    jax.tree.map(np.testing.assert_array_equal, ts.params, optax.apply_updates(PARAMS, updates))


def test_lr_and_learning_rate_together_are_refused():
    with pytest.raises(TypeError, match="both lr=0.1 and learning_rate=0.2"):
        jrmsprop.rmsprop(0.1, learning_rate=0.2)
    with pytest.raises(TypeError, match="both lr"):
        jrmsprop.rmsprop(lr=optax.constant_schedule(0.1), learning_rate=0.2)
    with pytest.raises(ValueError, match="Invalid learning rate: -1.0"):
        jrmsprop.rmsprop(learning_rate=-1.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: jrmsprop.rmsprop(lr=0.01, learning_rate=1e-3),
        lambda: jrmsprop.rmsprop(0.01, learning_rate=1e-3),
        lambda: jrmsprop.rmsprop(0.01, learning_rate=0.01),
        lambda: jrmsprop.rmsprop(lr=jnp.asarray(0.01), learning_rate=1e-3),
        lambda: optax.inject_hyperparams(jrmsprop.rmsprop)(lr=0.01, learning_rate=1e-3).init(
            PARAMS
        ),
    ],
    ids=["keyword-default-value", "positional-default-value", "same-value", "array", "injected"],
)
def test_lr_and_learning_rate_together_are_refused_whatever_their_values(call):
    """lr equal to its default (0.01) is still given: both names are a TypeError."""
    with pytest.raises(TypeError, match="both lr=.* and learning_rate=.*; give one"):
        call()


def test_neither_lr_nor_learning_rate_steps_with_torchs_default():
    default, torch_default = _run(jrmsprop.rmsprop()), _run(jrmsprop.rmsprop(lr=0.01))
    jax.tree.map(np.testing.assert_array_equal, default[0], torch_default[0])
    # inject_hyperparams injects the name given, and only it; a default lr is not injected.
    assert set(optax.inject_hyperparams(jrmsprop.rmsprop)().init(PARAMS).hyperparams) == {
        "alpha", "eps", "weight_decay", "momentum"
    }
    injected = optax.inject_hyperparams(jrmsprop.rmsprop)(learning_rate=1e-3).init(PARAMS)
    assert "learning_rate" in injected.hyperparams and "lr" not in injected.hyperparams
