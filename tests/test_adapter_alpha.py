"""The adapter's numbers are rmsprop's: scalars from hyperparameters rounded once, as torch does.

``FunctionalRMSprop`` passes its hyperparameters to the compiled step as
runtime values, and ``1 - alpha`` among them: computed on the host in double
and rounded once to the parameter's dtype, as torch (a Python double) and
``jrmsprop.rmsprop`` with Python floats compute it. A traced float32 ``1 -
alpha`` is far off near alpha = 1 (0 at alpha = 1 - 1e-8).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from test_adapter import GRID

import jrmsprop
from jrmsprop import FunctionalRMSprop

ALPHAS = (0.99, 0.999, 0.9999, 1 - 1e-8)
STEPS = 8


def _data():
    rng = np.random.default_rng(22)
    p0 = rng.standard_normal((3, 40)).astype(np.float32)
    grads = rng.standard_normal((STEPS, 3, 40)).astype(np.float32)
    return p0, grads


def _run(tx, p0, grads):
    """Params (numpy) and state after a jitted step per gradient."""
    params = [jnp.asarray(p) for p in p0]
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for g in grads:
        params, state = step(params, state, [jnp.asarray(x) for x in g])
    return [np.asarray(p) for p in params], state


def _pure(kw, p0, grads):
    return _run(jrmsprop.rmsprop(**kw), p0, grads)


def _adapter(kw, p0, grads, foreach):
    opt = FunctionalRMSprop([jnp.asarray(p) for p in p0], foreach=foreach, **kw)
    for g in grads:
        opt.step([jnp.asarray(x) for x in g])
    return [np.asarray(p) for p in opt.param_group["params"]], opt


def _torch(kw, p0, grads, dtype=torch.float32):
    params = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in p0]
    opt = torch.optim.RMSprop(params, **kw)
    for g in grads:
        for p, x in zip(params, g):
            p.grad = torch.tensor(x, dtype=dtype)
        opt.step()
    return [p.detach().numpy() for p in params]


def _kwargs(config, alpha):
    kw = {"lr": 1e-2, **config}
    if alpha is not None:
        kw["alpha"] = alpha
    return kw


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("alpha", [None, 0.99, 0.999, 0.9999], ids=str)
@pytest.mark.parametrize("config", GRID, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_bit_for_bit_with_jitted_rmsprop_on_torchs_grid(config, alpha, foreach):
    if alpha is not None and "alpha" in config:
        pytest.skip("the grid entry sets alpha")
    kw = _kwargs(config, alpha)
    p0, grads = _data()
    theirs, state = _pure(kw, p0, grads)
    ours, opt = _adapter(kw, p0, grads, foreach)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    for i in range(len(p0)):
        np.testing.assert_array_equal(
            np.asarray(opt.state[i]["square_avg"]), np.asarray(state.square_avg[i])
        )
    # and close to torch: torch's float32 run is within assert_close of ours
    for a, t in zip(ours, _torch(kw, p0, grads)):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(t))


@pytest.mark.parametrize(
    "config", GRID[:9], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
)
def test_alpha_one_minus_1e8_near_rmsprop_and_torch(config):
    """alpha = 1 - 1e-8 is 1.0 in float32: where the documented limit lies.

    jitted rmsprop holds alpha as a constant, and XLA removes ``square_avg *
    1.0`` from its program, which changes where XLA:CPU fuses a multiply-add:
    the adapter (a runtime alpha) then rounds ``square_avg + (1 - alpha) * g
    * g`` once where rmsprop rounds it twice, or the other way. Both are as
    close to torch's float64 run as torch's own float32 run is.
    """
    kw = _kwargs(config, 1 - 1e-8)
    p0, grads = _data()
    theirs, _ = _pure(kw, p0, grads)
    ours, _ = _adapter(kw, p0, grads, False)
    exact = _torch(kw, p0, grads, torch.float64)
    torch32 = _torch(kw, p0, grads)
    for a, b, e, t in zip(ours, theirs, exact, torch32):
        scale = np.max(np.abs(t - e)) + 1e-6 * np.max(np.abs(e))
        assert np.max(np.abs(a - e)) <= 4 * scale
        assert np.max(np.abs(b - e)) <= 4 * scale
        # 1 - alpha in float32 would be 0: steps of lr * g / eps, 10,000x too big
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.max(np.abs(b)))


def test_one_step_at_alpha_one_minus_1e8_is_torchs():
    """The issue's case: torch gives -8.999; 1 - alpha in float32 gave -99999."""
    tp = torch.ones(1, requires_grad=True)
    topt = torch.optim.RMSprop([tp], lr=1e-3, alpha=1 - 1e-8)
    tp.grad = torch.ones(1)
    topt.step()
    opt = FunctionalRMSprop([jnp.ones(1, jnp.float32)], lr=1e-3, alpha=1 - 1e-8)
    opt.step([jnp.ones(1, jnp.float32)])
    ours = np.asarray(opt.param_group["params"][0])
    np.testing.assert_array_max_ulp(ours, tp.detach().numpy(), maxulp=1)


def _injected_run(tx, p0, grads):
    return _run(tx, p0, grads)[0]


@pytest.mark.parametrize("alpha", [0.9999, 1 - 1e-8])
def test_inject_hyperparams_traced_alpha_limit_and_remedy(alpha):
    """README: a traced float32 alpha computes 1 - alpha in float32; static_args fixes it."""
    p0, grads = _data()
    theirs = _injected_run(jrmsprop.rmsprop(lr=1e-2, alpha=alpha), p0, grads)
    static = optax.inject_hyperparams(jrmsprop.rmsprop, static_args=("alpha",))
    remedied = _injected_run(static(lr=1e-2, alpha=alpha), p0, grads)
    for a, b in zip(remedied, theirs):
        np.testing.assert_array_equal(a, b)
    traced = _injected_run(
        optax.inject_hyperparams(jrmsprop.rmsprop)(lr=1e-2, alpha=alpha), p0, grads
    )
    assert any(not np.array_equal(a, b) for a, b in zip(traced, theirs))
    if alpha == 1 - 1e-8:  # 1 - alpha is 0 in float32: steps of lr * g / eps
        assert max(np.abs(a).max() for a in traced) > 10 * max(np.abs(b).max() for b in theirs)


def test_inject_hyperparams_float64_params_get_torchs_float64_numbers(x64):
    """README: with float64 params a traced alpha is float64, 1 - alpha rounded as in double."""
    p0, grads = _data()
    p0, grads = p0.astype(np.float64), grads.astype(np.float64)
    tx = optax.inject_hyperparams(jrmsprop.rmsprop)(lr=1e-2, alpha=1 - 1e-8)
    ours = _injected_run(tx, p0, grads)
    exact = _torch({"lr": 1e-2, "alpha": 1 - 1e-8}, p0, grads, torch.float64)
    for a, e in zip(ours, exact):
        np.testing.assert_allclose(a, e, rtol=1e-12)
