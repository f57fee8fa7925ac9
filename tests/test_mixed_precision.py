"""Mixed precision: narrower gradients upcast losslessly, in both APIs; the rest refused."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrmsprop

# (param dtype, gradient dtype) pairs that upcast losslessly.
UPCASTS = [
    (jnp.float32, jnp.bfloat16),
    (jnp.float32, jnp.float16),
    (jnp.float64, jnp.float16),
    (jnp.float64, jnp.bfloat16),
    (jnp.float64, jnp.float32),
    (jnp.complex128, jnp.complex64),
]


def _grads(dtype, k):
    rng = np.random.default_rng(k)
    g = rng.standard_normal((2, 3)) * 0.1
    if jnp.issubdtype(dtype, jnp.complexfloating):
        g = g + 1j * rng.standard_normal((2, 3)) * 0.1
    return {"w": jnp.asarray(g).astype(dtype)}


def _params(dtype):
    w = jnp.arange(6.0).reshape(2, 3) / 7
    return {"w": (w + 1j * w if jnp.issubdtype(dtype, jnp.complexfloating) else w).astype(dtype)}


@pytest.mark.parametrize(("pdtype", "gdtype"), UPCASTS, ids=lambda d: jnp.dtype(d).name)
def test_rmsprop_narrow_gradients_equal_their_upcast(pdtype, gdtype, x64_if_wide):
    tx = jrmsprop.rmsprop(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)
    runs = []
    for cast in (False, True):
        params, state = _params(pdtype), tx.init(_params(pdtype))
        for k in range(3):
            g = _grads(gdtype, k)
            if cast:
                g = jax.tree.map(lambda x: x.astype(pdtype), g)
            updates, state = jax.jit(tx.update)(g, state, params)
            params = optax.apply_updates(params, updates)
        assert params["w"].dtype == pdtype and state.square_avg["w"].dtype == pdtype
        runs.append((params, state))
    (p1, s1), (p2, s2) = runs
    assert bool((p1["w"] == p2["w"]).all())
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        assert bool((a == b).all())


@pytest.mark.parametrize(("pdtype", "gdtype"), UPCASTS, ids=lambda d: jnp.dtype(d).name)
def test_adapter_narrow_gradients_equal_their_upcast(pdtype, gdtype, x64_if_wide):
    runs = []
    for cast in (False, True):
        opt = jrmsprop.FunctionalRMSprop(_params(pdtype), lr=0.01, momentum=0.9)
        for k in range(3):
            g = _grads(gdtype, k)
            opt.step(jax.tree.map(lambda x: x.astype(pdtype), g) if cast else g)
        runs.append(np.asarray(opt.param_group["params"]["w"]))
    assert runs[0].dtype == np.dtype(pdtype)
    assert (runs[0] == runs[1]).all()


@pytest.mark.parametrize(
    ("pdtype", "gdtype", "message"),
    [
        (jnp.bfloat16, jnp.float32, r"wider.*astype\(jnp.bfloat16\)"),
        (jnp.float32, jnp.float64, r"wider.*astype\(jnp.float32\)"),
        (jnp.complex64, jnp.complex128, r"wider.*astype\(jnp.complex64\)"),
        (jnp.bfloat16, jnp.float16, "accepted gradient dtypes for a bfloat16 parameter: bfloat16"),
        (jnp.complex64, jnp.float32, "a real gradient for a complex parameter"),
        (jnp.float32, jnp.complex64, "a complex gradient for a real parameter"),
        (jnp.float32, jnp.float8_e4m3fn, "accepted gradient dtypes for a float32 parameter"),
    ],
    ids=str,
)
def test_other_gradient_dtypes_are_refused_in_both_apis(pdtype, gdtype, message, x64_if_wide):
    params = _params(pdtype)
    g = {"w": jnp.ones((2, 3), gdtype)}
    tx = jrmsprop.rmsprop()
    with pytest.raises(TypeError, match=message):
        tx.update(g, tx.init(params), params)
    opt = jrmsprop.FunctionalRMSprop(params)
    before = np.asarray(opt.param_group["params"]["w"])
    with pytest.raises(TypeError, match=message):
        opt.step(g)
    assert (np.asarray(opt.param_group["params"]["w"]) == before).all()


@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2, jnp.float4_e2m1fn])
def test_float8_and_float4_params_are_refused_like_integers(dtype):
    params = {"w": jnp.zeros(3, dtype)}
    with pytest.raises(TypeError, match=r"\['w'\] is .*float8 or float4"):
        jrmsprop.rmsprop().init(params)
    with pytest.raises(TypeError, match="float8 or float4"):
        jrmsprop.FunctionalRMSprop(params)
