"""init's state structure is static (never the trace's), and inject_hyperparams
edits follow torch's param_groups edits (momentum 0 leaves the buffer as it is)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jrmsprop

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(2, 3)}


def _structure(state):
    return jax.tree.structure(state), [(x.shape, x.dtype) for x in jax.tree.leaves(state)]


@pytest.mark.parametrize(
    "momentum", [0, 0.0, 0.9, np.float32(0), np.float32(0.9), np.float64(0.0)], ids=repr
)
@pytest.mark.parametrize("centered", [False, True])
def test_init_eager_jit_and_eval_shape_give_one_structure(momentum, centered):
    tx = jrmsprop.rmsprop(momentum=momentum, centered=centered)
    eager = tx.init(PARAMS)
    assert (eager.momentum_buffer is None) == (float(momentum) == 0)
    assert _structure(jax.jit(tx.init)(PARAMS)) == _structure(eager)
    assert _structure(jax.eval_shape(tx.init, PARAMS)) == _structure(eager)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_inject_hyperparams_init_always_keeps_a_buffer(momentum):
    tx = optax.inject_hyperparams(jrmsprop.rmsprop)(momentum=momentum)
    eager = tx.init(PARAMS)
    assert eager.inner_state.momentum_buffer is not None
    assert _structure(jax.jit(tx.init)(PARAMS)) == _structure(eager)
    assert _structure(jax.eval_shape(tx.init, PARAMS)) == _structure(eager)


def test_momentum_array_over_a_momentum_less_state_is_refused():
    state = jrmsprop.rmsprop(momentum=0.0).init(PARAMS)
    tx = jrmsprop.rmsprop(momentum=jnp.array(0.9))
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    with pytest.raises(ValueError, match="momentum given as a JAX array .* has none"):
        tx.update(grads, state, PARAMS)

    def traced(m):
        return jrmsprop.rmsprop(momentum=m).update(grads, state, PARAMS)

    with pytest.raises(ValueError, match="momentum given as a JAX array"):
        jax.jit(traced)(0.9)


# Between steps, the same edits to torch's param_groups and to inject_hyperparams.
EDITS = {
    3: {"momentum": 0.0},
    6: {"momentum": 0.9},
    8: {"alpha": 0.9},
    10: {"eps": 1e-3},
    12: {"weight_decay": 0.1},
}


def test_inject_hyperparams_edits_follow_torch_param_groups_edits():
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((15, 2, 3)).astype(np.float32)
    start = {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.9}
    p = torch.tensor(np.asarray(PARAMS["w"]), requires_grad=True)
    opt = torch.optim.RMSprop([p], **start)
    tx = optax.inject_hyperparams(jrmsprop.rmsprop)(**start)
    params, state = PARAMS, tx.init(PARAMS)
    update = jax.jit(tx.update)
    for k, g in enumerate(grads):
        for name, value in EDITS.get(k, {}).items():
            opt.param_groups[0][name] = value
            state.hyperparams[name] = jnp.asarray(value, jnp.float32)
        p.grad = torch.tensor(g)
        opt.step()
        updates, state = update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        torch.testing.assert_close(torch.tensor(np.asarray(params["w"])), p.detach())
