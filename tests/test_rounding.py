"""The choices that decide torch's rounding, each pinned so that changing it fails a test.

Bitwise against the real ``torch.optim.RMSprop`` where bitwise holds (one step in float64,
chosen elements), and a memory figure for the optimization barrier.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jrmsprop


def _torch_step(param, grad, steps=1, **config):
    p = torch.tensor(np.asarray(param)).requires_grad_()
    opt = torch.optim.RMSprop([p], **config)
    for _ in range(steps):
        p.grad = torch.tensor(np.asarray(grad))
        opt.step()
    return p.detach().numpy(), opt.state[p]


def _jax_step(param, grad, steps=1, jit=True, **config):
    tx = jrmsprop.rmsprop(**config)
    params = {"w": jnp.asarray(param)}
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    for _ in range(steps):
        updates, state = update({"w": jnp.asarray(grad)}, state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params["w"]), state


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA on CPU flushes subnormals")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_xla_on_cpu_flushes_a_subnormal_eps_to_zero_where_torch_keeps_it(dtype):
    """What the README's Errors part says: an eps below the dtype's smallest normal acts as
    0 on CPU, so a zero gradient over a zero square_avg gives 0 / 0 = NaN; torch gives 0."""
    tiny = float(jnp.finfo(dtype).tiny)
    param, grad = np.array([1.0, 2.0], dtype), np.array([0.0, 1e-3], dtype)
    for eps, flushed in ((tiny, False), (tiny / 4, True)):
        want, _ = _torch_step(param, grad, lr=0.01, eps=eps)
        assert want[0] == 1.0  # torch: 0 / eps = 0
        for jit in (True, False):
            got, _ = _jax_step(param, grad, jit=jit, lr=0.01, eps=eps)
            assert np.isnan(got[0]) == flushed, (eps, jit)
            np.testing.assert_array_equal(got[1], want[1])
        adapter = [jnp.asarray(param)]
        jrmsprop.FunctionalRMSprop(adapter, lr=0.01, eps=eps).step([jnp.asarray(grad)])
        assert np.isnan(np.asarray(adapter[0])[0]) == flushed
