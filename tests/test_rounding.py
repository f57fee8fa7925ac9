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
def test_xla_on_cpu_flushes_a_subnormal_eps_to_zero_where_torch_keeps_it(dtype, x64_if_wide):
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


def _torch_run(param, grads, **config):
    p = torch.tensor(np.asarray(param)).requires_grad_()
    opt = torch.optim.RMSprop([p], **config)
    for g in grads:
        p.grad = torch.tensor(np.asarray(g))
        opt.step()
    return p.detach().numpy(), {k: v.numpy() for k, v in opt.state[p].items()}


def _jax_run(tx, param, grads, inner=lambda s: s):
    state = tx.init(jnp.asarray(param))
    p = jnp.asarray(param)
    update = jax.jit(tx.update)
    for g in grads:
        u, state = update(jnp.asarray(g), state, p)
        p = p + u
    return np.asarray(p), inner(state)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("alpha", [0.3, 0.9])  # lerp weight 1 - alpha: 0.7 (far branch), 0.1
@pytest.mark.parametrize("injected", [False, True])
def test_centered_grad_avg_follows_both_branches_of_torchs_lerp_bit_for_bit(
    dtype, alpha, injected, x64_if_wide
):
    """torch.lerp computes start + w * (end - start) for w < 0.5 and
    end - (end - start) * (1 - w) otherwise; grad_avg is torch's bit for bit either way,
    with a Python alpha and with an array alpha (inject_hyperparams: the traced branch)."""
    if injected and dtype == "float32" and alpha == 0.9:
        pytest.skip("a float32 alpha array gives 1 - alpha rounded in float32, not in double")
    rng = np.random.default_rng(7)
    param = rng.standard_normal(256).astype(dtype)
    grads = [rng.standard_normal(256).astype(dtype) for _ in range(3)]
    config = {"lr": 0.01, "alpha": alpha, "centered": True}
    _, want = _torch_run(param, grads, **config)
    if injected:
        tx = optax.inject_hyperparams(jrmsprop.rmsprop)(**config)
        _, state = _jax_run(tx, param, grads, lambda s: s.inner_state)
    else:
        _, state = _jax_run(jrmsprop.rmsprop(**config), param, grads)
    np.testing.assert_array_equal(np.asarray(state.grad_avg), want["grad_avg"])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_centered_variance_below_zero_gives_nan_as_torch_no_clamp(dtype, x64_if_wide):
    """torch takes sqrt(square_avg - grad_avg**2) as it is: where a state has
    square_avg < grad_avg**2 (a loaded or hand-made one) the step gives NaN there."""
    param = np.array([1.0, 2.0, 3.0], dtype)
    grad = np.array([0.5, -0.5, 0.25], dtype)
    square_avg = np.array([0.0, 4.0, 1e-6], dtype)  # elements 0 and 2 are below grad_avg**2
    grad_avg = np.array([1.0, 1.0, 0.5], dtype)

    p = torch.tensor(param).requires_grad_()
    torch_opt = torch.optim.RMSprop([p], lr=0.01, centered=True)
    torch_opt.load_state_dict(
        {
            "state": {
                0: {
                    "step": torch.tensor(1.0),
                    "square_avg": torch.tensor(square_avg),
                    "grad_avg": torch.tensor(grad_avg),
                }
            },
            "param_groups": [dict(torch_opt.state_dict()["param_groups"][0])],
        }
    )
    p.grad = torch.tensor(grad)
    torch_opt.step()
    want = p.detach().numpy()
    np.testing.assert_array_equal(np.isnan(want), [True, False, True])

    tx = jrmsprop.rmsprop(lr=0.01, centered=True)
    state = tx.init({"w": jnp.asarray(param)})._replace(
        square_avg={"w": jnp.asarray(square_avg)}, grad_avg={"w": jnp.asarray(grad_avg)}
    )
    updates, _ = jax.jit(tx.update)({"w": jnp.asarray(grad)}, state, {"w": jnp.asarray(param)})
    got = np.asarray(param + updates["w"])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[1], want[1])

    adapter = [jnp.asarray(param)]
    opt = jrmsprop.FunctionalRMSprop(adapter, lr=0.01, centered=True)
    opt.load_state_dict(
        {
            "state": {0: {"step": 1.0, "square_avg": square_avg, "grad_avg": grad_avg}},
            "param_groups": [{**opt.state_dict()["param_groups"][0]}],
        }
    )
    opt.step([jnp.asarray(grad)])
    np.testing.assert_array_equal(np.isnan(np.asarray(adapter[0])), np.isnan(want))


# Chosen elements (one step from a zero parameter) where reading square_avg or the momentum
# buffer back at its storage dtype, as torch does, decides the result: bit for bit torch's.
HALF_CASES = [
    (
        "float16",
        {"lr": 0.3, "alpha": 0.75, "eps": 0.0},
        [
            -0.00797271728515625,
            -0.005390167236328125,
            -0.005710601806640625,
            0.013702392578125,
            -0.0117645263671875,
            -0.00603485107421875,
            0.0045928955078125,
            -0.008209228515625,
            -6.41942024230957e-05,
            -0.006134033203125,
            0.005451202392578125,
            0.004863739013671875,
        ],
    ),
    (
        "bfloat16",
        {"lr": 0.01},
        [
            -1.2578125,
            -0.314453125,
            0.62890625,
            -0.96484375,
            -0.453125,
            -0.62890625,
            0.2265625,
            0.453125,
            1.9296875,
            1.8125,
            0.90625,
            0.314453125,
        ],
    ),
    (
        "float16",
        {"lr": 0.01, "momentum": 0.9},
        [
            -0.01276397705078125,
            0.059478759765625,
            -0.03082275390625,
            -0.0274658203125,
            -0.043701171875,
            -0.0241241455078125,
            0.0241546630859375,
            0.050537109375,
            0.02764892578125,
            -0.030517578125,
            0.022613525390625,
            -0.01110076904296875,
        ],
    ),
]


@pytest.mark.parametrize("dtype,config,grad", HALF_CASES)
def test_half_precision_state_is_read_back_at_its_storage_dtype_as_torch(dtype, config, grad):
    torch_dtype = getattr(torch, dtype)
    p = torch.zeros(len(grad), dtype=torch_dtype, requires_grad=True)
    torch_opt = torch.optim.RMSprop([p], **config)
    p.grad = torch.tensor(grad, dtype=torch.float32).to(torch_dtype)
    torch_opt.step()
    want = p.detach().float().numpy()

    params = jnp.zeros(len(grad), dtype)
    g = jnp.asarray(grad, jnp.float32).astype(dtype)
    tx = jrmsprop.rmsprop(**config)
    updates, _ = jax.jit(tx.update)(g, tx.init(params), params)
    np.testing.assert_array_equal(np.asarray((params + updates).astype(jnp.float32)), want)

    adapter = [jnp.zeros(len(grad), dtype)]
    jrmsprop.FunctionalRMSprop(adapter, **config).step([g])
    np.testing.assert_array_equal(np.asarray(adapter[0].astype(jnp.float32)), want)


ARRAY_HYPER = {"lr": 0.01, "eps": 1e-3, "weight_decay": 0.1, "momentum": 0.9}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("array_dtype", ["float64", "float32"])
def test_array_hyperparameters_act_in_the_math_dtype_as_python_floats_do(
    dtype, array_dtype, x64_if_wide
):
    """torch casts a scalar hyperparameter to the kernel's math dtype (float32 for half
    types): an array lr, eps, weight_decay or momentum gives bit for bit the numbers of
    the same Python float; neither kept in its own (wider) dtype nor rounded to the
    leaf's half dtype (bfloat16's 0.01 is 0.010009765625)."""
    rng = np.random.default_rng(11)
    param = jnp.asarray(rng.standard_normal(512), dtype)
    grads = [jnp.asarray(rng.standard_normal(512), dtype) for _ in range(3)]
    arrays = {k: jnp.asarray(v, array_dtype) for k, v in ARRAY_HYPER.items()}
    got, _ = _jax_run(jrmsprop.rmsprop(alpha=0.9, **arrays), param, grads)
    want, _ = _jax_run(jrmsprop.rmsprop(alpha=0.9, **ARRAY_HYPER), param, grads)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_injected_alpha_for_bfloat16_leaves_needs_hyperparam_dtype_float32():
    """optax.inject_hyperparams stores the hyperparameters in the params' dtype: for
    bfloat16 params alpha=0.99 becomes 0.98828125, and 1 - alpha is 17% off torch's.
    With hyperparam_dtype=jnp.float32 (the README's remedy) jrmsprop takes them in float32,
    torch's math dtype, and matches torch's bfloat16 state at bfloat16's resolution."""
    rng = np.random.default_rng(12)
    grad = rng.standard_normal(256).astype(np.float32)
    p = torch.zeros(256, dtype=torch.bfloat16, requires_grad=True)
    torch_opt = torch.optim.RMSprop([p], lr=0.01, alpha=0.99)
    p.grad = torch.tensor(grad).to(torch.bfloat16)
    torch_opt.step()
    want = torch_opt.state[p]["square_avg"].float().numpy()
    params = jnp.zeros(256, jnp.bfloat16)
    g = jnp.asarray(grad).astype(jnp.bfloat16)

    def square_avg(**kwargs):
        tx = optax.inject_hyperparams(jrmsprop.rmsprop, **kwargs)(lr=0.01, alpha=0.99)
        _, state = jax.jit(tx.update)(g, tx.init(params), params)
        return np.asarray(state.inner_state.square_avg.astype(jnp.float32))

    np.testing.assert_allclose(square_avg(hyperparam_dtype=jnp.float32), want, rtol=2**-7, atol=0)
    rounded = square_avg()  # optax's default: alpha in bfloat16
    assert np.median(np.abs(rounded / np.where(want == 0, 1, want) - 1)) > 0.1


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_optimization_barrier_per_stored_buffer_and_its_memory_figure(dtype, monkeypatch):
    """rmsprop_math materializes each new state buffer once (jax.lax.optimization_barrier)
    so the donated old buffer is dead before it is reused. The step's lowered program holds
    one barrier per stored buffer, and its compiled temporaries (memory_analysis) are no
    larger than without the barriers. Measured here (XLA CPU, jax 0.10.2), the two compiled
    programs are the same size: the test pins the barrier and that it costs nothing."""
    n = 1 << 20
    tx = jrmsprop.rmsprop(lr=0.01, momentum=0.9, centered=True)
    params = {"w": jnp.ones(n, dtype)}

    def compiled():
        def step(p, s, g):  # a new function each time: traced afresh
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        state = tx.init(params)
        lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
        return lowered.as_text(), lowered.compile().memory_analysis().temp_size_in_bytes

    text, temp = compiled()
    assert text.count("optimization_barrier") == 3  # square_avg, grad_avg, momentum_buffer
    monkeypatch.setattr(jax.lax, "optimization_barrier", lambda x: x)
    plain_text, plain_temp = compiled()
    assert plain_text.count("optimization_barrier") == 0
    assert temp <= plain_temp
    assert temp <= 4 * n  # at most one float32 parameter-sized temporary
