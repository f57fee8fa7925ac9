"""The compiled steps, seen by XLA: memory traffic and the platforms they lower for.

Speed is guarded without timing: XLA's ``cost_analysis()["bytes accessed"]``
of the compiled step. The adapter's step (``FunctionalRMSprop``, its
hyperparameters traced so that changing them never recompiles) moves the
bytes of the pure jitted ``rmsprop`` step for every configuration of torch's
grid, with both ``foreach`` settings where the layout keeps one parameter per
unit (a flat unit concatenates and splits its members: more traffic by
design). ``rmsprop`` with a momentum array moves the bytes of the same
momentum as a Python number. And both steps lower for GPU and TPU with
``jax.export``, which needs no device: nothing in them only the CPU can run.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from torch_reference import TORCH_GRID

import jrmsprop
from jrmsprop import units

# Each leaf is a unit of its own with foreach=True too (>= LARGE_LEAF elements).
SHAPES = [(256, 256), (320, 256)]
assert all(np.prod(s) >= units.LARGE_LEAF for s in SHAPES)
# The lr schedule of SPEC section 5: the adapter's lr is a runtime value, so
# its step is the default one; the pure step reads its count.
SCHEDULE = optax.linear_schedule(1e-2, 1e-3, 100)
CONFIGS = [*TORCH_GRID, {"lr": "schedule"}]
# The adapter's six traced scalars against the pure step's count and step vector.
SCALAR_BYTES = 256


def _ids(config):
    return ",".join(f"{k}={v}" for k, v in config.items()) or "default"


def _bytes(compiled) -> float:
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["bytes accessed"]


def _arrays(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        x = rng.standard_normal(shape)
        if np.dtype(dtype).kind == "c":
            x = x + 1j * rng.standard_normal(shape)
        out.append(jnp.asarray(x, dtype))
    return out


def _pure_step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def _pure_call(config, dtype, shapes=SHAPES):
    """The pure step's jitted function and arguments."""
    config = dict(config)
    if config.get("lr") == "schedule":
        config["lr"] = SCHEDULE
    tx = jrmsprop.rmsprop(**config)
    params = _arrays(dtype, shapes)
    return _pure_step(tx), (params, tx.init(params), _arrays(dtype, shapes, seed=1))


def _adapter(config, dtype, foreach, shapes=SHAPES):
    """A new adapter and the gradients of its first step (which compiles what later ones run)."""
    config = {k: v for k, v in config.items() if k != "lr" or v != "schedule"}
    opt = jrmsprop.FunctionalRMSprop(_arrays(dtype, shapes), foreach=foreach, **config)
    return opt, _arrays(dtype, shapes, seed=1)


def _adapter_calls(opt, grads, donate=True):
    """The compiled calls ``opt.step(grads)`` makes, as (jitted function, args, static kwargs).

    The arguments are laid out as ``jrmsprop.transaction.run`` lays them out
    for a step where every parameter has a gradient;
    ``test_adapter_calls_are_the_steps_calls`` holds them to the real step.
    """
    plan = opt._check(grads)
    fn = units._step_units if donate else units._step_units_kept
    static = {"maximize": opt.maximize, "decay": bool(plan.hyper[3] != 0)}
    if not opt.foreach:
        states = plan.states
        if not plan.exact:  # a dict of the units to run: here every position
            states = [states[i] for i in plan.stepping]
        return [(fn, (plan.leaves, plan.grads, states, plan.hyper, None), static)]
    calls = []
    for u, _, _ in plan.todo:
        members = opt._layout.units[u]
        if opt._layout.is_flat(u):
            mask = np.ones(len(members), bool)
            args = (
                (tuple(plan.leaves[i] for i in members),),
                (tuple(plan.grads[i] for i in members),),
                (plan.states[u],),
                plan.hyper,
                (mask,),
            )
        else:
            (i,) = members
            args = ((plan.leaves[i],), (plan.grads[i],), (plan.states[u],), plan.hyper, None)
        calls.append((fn, args, static))
    return calls


def _adapter_bytes(opt, grads) -> float:
    return sum(
        _bytes(fn.lower(*args, **static).compile()) for fn, args, static in _adapter_calls(opt, grads)
    )


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("shapes", [SHAPES, [(3, 4), (5,), (2, 2)]], ids=["large", "flat"])
def test_adapter_calls_are_the_steps_calls(foreach, shapes):
    """The calls measured below are the step's: run undonated, they give its result bit for bit."""
    config = {"centered": True, "momentum": 0.9, "weight_decay": 0.1}
    opt, grads = _adapter(config, "float32", foreach, shapes)
    opt.step(grads)  # a second step: every buffer exists
    calls = _adapter_calls(opt, grads, donate=False)
    assert len(calls) == (len(opt._layout.units) if foreach else 1)
    outs = [fn(*args, **static) for fn, args, static in calls]
    twin = copy.deepcopy(opt)
    twin.step(grads)
    got = [x for new_params, _ in outs for x in jax.tree.leaves(new_params)]
    order = [i for members in opt._layout.units for i in members]
    want = [twin.param_group["params"][i] for i in order]
    assert len(got) == len(want) == len(shapes)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _check_same_bytes(config, dtype, foreach):
    func, args = _pure_call(config, dtype)
    pure = _bytes(func.lower(*args).compile())
    opt, grads = _adapter(config, dtype, foreach)
    adapter = _adapter_bytes(opt, grads)
    # One extra pass over the smallest parameter is far more than SCALAR_BYTES.
    assert abs(adapter - pure) <= SCALAR_BYTES, (adapter, pure, adapter / pure)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "complex64"])
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_adapter_step_moves_the_pure_steps_bytes(config, dtype, foreach):
    _check_same_bytes(config, dtype, foreach)


@pytest.mark.parametrize("dtype", ["float64", "complex128"])
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_adapter_step_moves_the_pure_steps_bytes_64(x64, config, dtype):
    """In 64 bits, one foreach setting: the layout (the same for both here) is dtype-blind."""
    _check_same_bytes(config, dtype, False)


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
@pytest.mark.parametrize("config", TORCH_GRID, ids=_ids)
def test_array_momentum_moves_the_bytes_of_a_python_momentum(config, dtype):
    """A momentum array (concrete, as given to ``rmsprop``) costs no select at run time.

    Both are given the state the array builds (it always keeps a momentum
    buffer): with momentum 0 the buffer is left as it is either way.
    """
    momentum = config.get("momentum", 0.0)
    params, grads = _arrays(dtype), _arrays(dtype, seed=1)
    with_array = jrmsprop.rmsprop(**{**config, "momentum": jnp.asarray(momentum)})
    state = with_array.init(params)
    python = jrmsprop.rmsprop(**{**config, "momentum": momentum})
    got = [
        _bytes(_pure_step(tx).lower(params, state, grads).compile())
        for tx in (with_array, python)
    ]
    assert got[0] == got[1]


# --------------------------------------------------------- GPU and TPU lowering

PLATFORMS = ["cuda", "tpu"]
EXPORT_CONFIGS = [
    {},
    {"maximize": True, "centered": True, "weight_decay": 0.1, "momentum": 0.1},
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "complex64"])
@pytest.mark.parametrize("config", EXPORT_CONFIGS, ids=_ids)
def test_pure_step_lowers_for_gpu_and_tpu(config, dtype):
    func, args = _pure_call(config, dtype, shapes=[(4, 3), (5,)])
    exported = jax.export.export(func, platforms=PLATFORMS)(*args)
    assert exported.platforms == tuple(PLATFORMS)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "complex64"])
@pytest.mark.parametrize("config", EXPORT_CONFIGS, ids=_ids)
def test_adapter_step_lowers_for_gpu_and_tpu(config, dtype, foreach):
    # foreach=True: one unit of one large parameter, one flat unit of two small ones.
    opt, grads = _adapter(config, dtype, foreach, shapes=[(256, 256), (4, 3), (5,)])
    calls = _adapter_calls(opt, grads)
    assert len(calls) == (2 if foreach else 1)
    for fn, args, static in calls:
        exported = jax.export.export(fn, platforms=PLATFORMS)(*args, **static)
        assert exported.platforms == tuple(PLATFORMS)
