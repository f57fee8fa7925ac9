"""FunctionalRMSprop against torch's scripted ``_FunctionalRMSprop``, step by step.

Every comparison runs the real torch class on the same gradients. To keep the
suite fast, one optimizer holds parameters of all four dtypes (one jitted
call per step) and each run draws its ``None`` patterns from a few fixed ones
(one compile per pattern).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from compile_counter import CompileCounter
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from signal_handlers import ctrl_c  # noqa: F401 (a fixture: Ctrl-C raises, however launched)

from jrmsprop import FunctionalRMSprop, units

with warnings.catch_warnings():
    # torch deprecates TorchScript optimizers; the class is still the reference.
    warnings.simplefilter("ignore")
    from torch.distributed.optim.functional_rmsprop import _FunctionalRMSprop

# torch's RMSprop test grid, plus momentum alone, the RL eps and alpha=0.9.
GRID = [
    {},
    {"lr": 1e-3},
    {"weight_decay": 0.1},
    {"maximize": True},
    {"centered": True, "weight_decay": 0.1},
    {"maximize": True, "weight_decay": 0.1},
    {"centered": True, "weight_decay": 0.1, "momentum": 0.1},
    {"maximize": True, "centered": True, "weight_decay": 0.1, "momentum": 0.1},
    {"momentum": 0.9},
    {"eps": 0.01},
    {"alpha": 0.9},
]
# Parameters of every dtype; the last one never receives a gradient.
SPECS = [
    ((3, 2), np.float32),
    ((4,), np.float64),
    ((2, 3), np.complex64),
    ((3,), np.complex128),
    ((5,), np.float32),
    ((2,), np.float64),
]
NEVER = len(SPECS) - 1


def _new_torch_rmsprop(params, **kwargs):
    # The scripted class warns on every construction that TorchScript is deprecated,
    # under its own "always" filter that no ignore filter overrides: record it away.
    with warnings.catch_warnings(record=True):
        return _FunctionalRMSprop(params, **kwargs)


def _draw(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    x = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def _pair(rng, specs=SPECS, **kwargs):
    """The same initial parameters in torch and in jrmsprop, and both optimizers."""
    init = [_draw(rng, shape, dtype) for shape, dtype in specs]
    torch_params = [torch.tensor(x) for x in init]
    jax_params = [jnp.asarray(x) for x in init]
    foreach = kwargs.pop("foreach", False)
    return (
        torch_params,
        _new_torch_rmsprop(torch_params, **kwargs),
        jax_params,
        FunctionalRMSprop(jax_params, foreach=foreach, **kwargs),
    )


def _both_step(rng, mask, torch_opt, jax_opt, specs=SPECS):
    grads = [_draw(rng, shape, dtype) if m else None for (shape, dtype), m in zip(specs, mask)]
    torch_opt.step([None if g is None else torch.tensor(g) for g in grads])
    jax_opt.step([None if g is None else jnp.asarray(g) for g in grads])


def _as_torch(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x))


def assert_same(torch_params, torch_opt, jax_params, jax_opt):
    """Params and every state entry (keys included) match at assert_close defaults."""
    for i, (tp, jp) in enumerate(zip(torch_params, jax_params)):
        torch.testing.assert_close(_as_torch(jp), tp, msg=lambda m, i=i: f"param {i}: {m}")
    jax_state = jax_opt.state
    torch_state = {
        i: torch_opt.state[p] for i, p in enumerate(torch_params) if p in torch_opt.state
    }
    assert set(jax_state) == set(torch_state)
    for i, entry in torch_state.items():
        assert set(jax_state[i]) == set(entry), (i, set(jax_state[i]), set(entry))
        for key, value in entry.items():
            mine = _as_torch(jax_state[i][key])
            if key == "step":
                mine = mine.to(value.dtype)  # torch counts steps in a float tensor
            torch.testing.assert_close(mine, value, msg=lambda m, k=key, i=i: f"{i}/{k}: {m}")


def _patterns(rng, n=3):
    """A few random None patterns (one compile each); the last param never steps."""
    out = [[True] * len(SPECS)]
    for _ in range(n - 1):
        out.append(list(rng.random(len(SPECS)) < 0.6))
    for mask in out:
        mask[NEVER] = False
    return out


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("config", GRID, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_matches_scripted_torch_on_its_grid(config, foreach, x64):
    rng = np.random.default_rng(zlib.crc32(repr((config, foreach)).encode()))
    torch_params, torch_opt, jax_params, jax_opt = _pair(rng, foreach=foreach, **config)
    patterns = _patterns(rng)
    for step in range(50):
        mask = patterns[rng.integers(len(patterns))]
        _both_step(rng, mask, torch_opt, jax_opt)
        if step % 10 == 9:
            assert_same(torch_params, torch_opt, jax_params, jax_opt)
    assert NEVER not in jax_opt.state
    assert len(jax_opt.state) == NEVER


def test_hand_written_lr_schedule_matches_torch(x64):
    rng = np.random.default_rng(7)
    torch_params, torch_opt, jax_params, jax_opt = _pair(rng, momentum=0.5, centered=True)
    for step in range(50):
        lr = 0.01 * 0.95**step
        torch_opt.defaults["lr"] = lr
        jax_opt.defaults["lr"] = lr
        _both_step(rng, [True] * NEVER + [False], torch_opt, jax_opt)
    assert_same(torch_params, torch_opt, jax_params, jax_opt)


def _param_leaves(opt):
    return [np.array(x) for x in jax.tree.leaves(opt.param_group["params"])]


def _assert_within_rounding(a, b, ulps=8):
    """Within ``ulps`` ulps of the pair's largest magnitude (see the README's foreach bullet)."""
    a, b = np.asarray(a), np.asarray(b)
    if not np.issubdtype(a.dtype, np.inexact):  # step counts: equal
        np.testing.assert_array_equal(a, b)
        return
    scale = np.finfo(a.dtype).eps * max(np.abs(a).max(initial=0), np.abs(b).max(initial=0), 1e-30)
    assert np.abs(a - b).max(initial=0) <= ulps * scale, (np.abs(a - b).max(), scale)


def test_foreach_equals_loop(x64):
    rng = np.random.default_rng(3)
    init = [_draw(rng, shape, dtype) for shape, dtype in SPECS]
    config = {"centered": True, "momentum": 0.3, "weight_decay": 0.05, "maximize": True}
    loop = FunctionalRMSprop([jnp.asarray(x) for x in init], **config)
    fused = FunctionalRMSprop([jnp.asarray(x) for x in init], foreach=True, **config)
    for mask in _patterns(rng, 4) * 5:
        grads = [jnp.asarray(_draw(rng, s, d)) if m else None for (s, d), m in zip(SPECS, mask)]
        loop.step(grads)
        fused.step(grads)
    # Up to rounding: XLA:CPU fuses a different product into a multiply-add in the flat unit.
    for a, b in zip(_param_leaves(loop), _param_leaves(fused)):
        _assert_within_rounding(a, b)
    assert loop.state.keys() == fused.state.keys()
    for i, entry in loop.state.items():
        assert entry.keys() == fused.state[i].keys()
        np.testing.assert_array_equal(np.array(entry["step"]), np.array(fused.state[i]["step"]))
        for key in entry:
            _assert_within_rounding(np.array(entry[key]), np.array(fused.state[i][key]))


def test_foreach_units_chunked_and_large_leaves_equal_loop(monkeypatch):
    # Small limits so a handful of leaves crosses every unit boundary: chunks
    # of 3 same-dtype leaves, and leaves of >= 8 elements in units of their own.
    monkeypatch.setattr(units, "UNIT_LEAVES", 3)
    monkeypatch.setattr(units, "LARGE_LEAF", 8)
    rng = np.random.default_rng(23)
    specs = [((2,), np.float32)] * 4 + [((3, 3), np.float32), ((2,), np.complex64)] * 2
    specs += [((3,), np.float32)] * 3
    init = [_draw(rng, s, d) for s, d in specs]
    loop = FunctionalRMSprop([jnp.asarray(x) for x in init], momentum=0.2)
    fused = FunctionalRMSprop([jnp.asarray(x) for x in init], momentum=0.2, foreach=True)
    assert fused._layout.units == [[0, 1, 2], [3, 8, 9], [4], [5, 7], [6], [10]]
    masks = [[True] * len(specs), [k % 3 != 1 for k in range(len(specs))]]
    for mask in masks * 3:
        grads = [jnp.asarray(_draw(rng, s, d)) if m else None for (s, d), m in zip(specs, mask)]
        loop.step(grads)
        fused.step(grads)
    for a, b in zip(_param_leaves(loop), _param_leaves(fused)):
        _assert_within_rounding(a, b)
    for i, entry in loop.state.items():
        for key in entry:
            _assert_within_rounding(np.array(entry[key]), np.array(fused.state[i][key]))


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_changing_defaults_never_recompiles(foreach, x64):
    rng = np.random.default_rng(11)
    specs = SPECS[:3]
    params = [jnp.asarray(_draw(rng, s, d)) for s, d in specs]
    opt = FunctionalRMSprop(params, weight_decay=0.1, momentum=0.5, foreach=foreach)
    grads = [jnp.asarray(_draw(rng, s, d)) for s, d in specs]
    with CompileCounter() as first:
        opt.step(grads)
    assert first.count >= 1  # the listener sees compiles: the zero below means something
    with CompileCounter() as counter:
        for k in range(6):
            opt.defaults.update(
                lr=1e-3 * (k + 1),
                alpha=0.9 + 0.01 * k,
                eps=10.0 ** -(k + 3),
                weight_decay=0.05 * (k + 1),
                momentum=0.1 * (k + 1),
            )
            opt.step(grads)
        jax.block_until_ready(opt.param_group["params"])
    assert counter.count == 0
    # Executables are shared: a second optimizer of the same structure compiles nothing.
    twin = FunctionalRMSprop(
        [jnp.asarray(_draw(rng, s, d)) for s, d in specs],
        weight_decay=0.3,
        momentum=0.2,
        foreach=foreach,
    )
    with CompileCounter() as counter:
        twin.step(grads)
        twin.step(grads)
    assert counter.count == 0


def test_zero_weight_decay_is_its_own_executable_compiled_once():
    opt = FunctionalRMSprop([jnp.ones(3), jnp.ones(2)], weight_decay=0.0)
    grads = [jnp.ones(3), jnp.ones(2)]
    opt.step(grads)
    with CompileCounter() as first_decay:
        opt.defaults["weight_decay"] = 0.1
        opt.step(grads)
    assert first_decay.count == 1  # torch's `weight_decay != 0` branch, compiled once
    with CompileCounter() as counter:
        for wd in (0.0, 0.2, 0.0, 0.05):
            opt.defaults["weight_decay"] = wd
            opt.step(grads)
    assert counter.count == 0


def test_state_is_donated_and_params_replaced():
    params = [jnp.ones(3), jnp.ones(2)]
    opt = FunctionalRMSprop(params, momentum=0.9)
    opt.step([jnp.ones(3), jnp.ones(2)])
    old_param = params[0]
    old_state = opt._states[0]
    grad = jnp.full(3, 2.0)
    opt.step([grad, None])
    assert all(buf.is_deleted() for buf in old_state if buf is not None)
    assert old_param.is_deleted()  # documented: params are donated too
    assert not grad.is_deleted()
    assert not params[0].is_deleted()
    assert opt.param_group["params"] is params


def test_pytree_params_dict_updated_in_place_tuple_rebound(x64):
    rng = np.random.default_rng(5)
    values = [_draw(rng, s, d) for s, d in SPECS[:3]]
    grads = [[_draw(rng, s, d) for s, d in SPECS[:3]] for _ in range(4)]
    as_list = [jnp.asarray(v) for v in values]
    reference = FunctionalRMSprop(as_list, centered=True)
    tree = {"b": jnp.asarray(values[1]), "net": {"w": [jnp.asarray(values[0])]}}
    inner = tree["net"]["w"]
    as_dict = FunctionalRMSprop(tree, centered=True)
    as_tuple = FunctionalRMSprop(tuple(jnp.asarray(v) for v in values), centered=True)
    for g in grads:
        reference.step([jnp.asarray(x) for x in g])
        as_dict.step({"b": jnp.asarray(g[1]), "net": {"w": [jnp.asarray(g[0])]}})
        as_tuple.step(tuple(jnp.asarray(x) for x in g))
    assert as_dict.param_group["params"] is tree and tree["net"]["w"] is inner
    np.testing.assert_array_equal(np.array(tree["net"]["w"][0]), np.array(as_list[0]))
    np.testing.assert_array_equal(np.array(tree["b"]), np.array(as_list[1]))
    assert isinstance(as_tuple.param_group["params"], tuple)
    for a, b in zip(as_tuple.param_group["params"], as_list):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    # Positions follow jax.tree.leaves: "b" sorts before "net".
    np.testing.assert_array_equal(
        np.array(as_dict.state[0]["grad_avg"]), np.array(reference.state[1]["grad_avg"])
    )


def test_seed_errors_word_for_word():
    with pytest.raises(ValueError) as torch_error:
        _new_torch_rmsprop([])
    with pytest.raises(ValueError) as mine:
        FunctionalRMSprop([])
    assert str(mine.value) == str(torch_error.value) == "optimizer got an empty parameter list"
    assert FunctionalRMSprop([], _allow_empty_param_list=True).param_group["params"] == []

    torch_opt = _new_torch_rmsprop([torch.ones(2), torch.ones(3)])
    with pytest.raises(ValueError) as torch_error:
        torch_opt.step([torch.ones(2)])
    opt = FunctionalRMSprop([jnp.ones(2), jnp.ones(3)])
    with pytest.raises(ValueError) as mine:
        opt.step([jnp.ones(2)])
    assert str(mine.value) == str(torch_error.value)
    assert "Params length: 2. Gradients length: 1" in str(mine.value)


def _snapshot(opt):
    state = opt.state_dict()
    return _param_leaves(opt), state


def _assert_unchanged(opt, before):
    params, state = _snapshot(opt)
    for a, b in zip(params, before[0]):
        np.testing.assert_array_equal(a, b)
    assert state["state"].keys() == before[1]["state"].keys()
    for i, entry in state["state"].items():
        assert entry.keys() == before[1]["state"][i].keys()
        for key in entry:
            np.testing.assert_array_equal(entry[key], before[1]["state"][i][key])
    assert state["param_groups"] == before[1]["param_groups"]


BAD_STEPS = [
    ("length", lambda g: g[:-1], ValueError, "does not equal to the size"),
    (
        "shape",
        lambda g: [jnp.ones((2, 3), g[0].dtype)] + g[1:],
        ValueError,
        r"shape mismatch at \[0\]",
    ),
    # numpy float64: wider than float32, also in JAX's default mode
    ("dtype", lambda g: [np.asarray(g[0], np.float64)] + g[1:], TypeError, r"mismatch at \[0\]"),
    ("python float", lambda g: g[:1] + [0.5] + g[2:], TypeError, "not an array"),
    ("string", lambda g: g[:1] + ["grad"] + g[2:], TypeError, "not an array"),
    ("structure", lambda g: {"a": g[0]}, ValueError, "structure of the gradients"),
]
BAD_DEFAULTS = [
    ("lr", float("nan"), "Invalid learning rate: nan"),
    ("lr", -1.0, "Invalid learning rate: -1.0"),
    ("eps", -1e-8, "Invalid epsilon value: -1e-08"),
    ("alpha", float("nan"), "Invalid alpha value: nan"),
    ("weight_decay", -0.1, "Invalid weight_decay value: -0.1"),
    ("momentum", -0.5, "Invalid momentum value: -0.5"),
]


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_failed_step_changes_nothing_and_optimizer_stays_usable(foreach):
    rng = np.random.default_rng(9)
    specs = [((3,), np.float32), ((2,), np.float32), ((2,), np.complex64)]
    init = [_draw(rng, s, d) for s, d in specs]
    config = {"momentum": 0.5, "centered": True, "foreach": foreach}
    opt = FunctionalRMSprop([jnp.asarray(x) for x in init], **config)
    twin = FunctionalRMSprop([jnp.asarray(x) for x in init], **config)

    def grads():
        return [jnp.asarray(_draw(rng, s, d)) for s, d in specs]

    g = grads()
    opt.step([g[0], None, g[2]])
    twin.step([g[0], None, g[2]])
    for name, corrupt, error, match in BAD_STEPS:
        before = _snapshot(opt)
        with pytest.raises(error, match=match):
            opt.step(corrupt(grads()))
        _assert_unchanged(opt, before)
    for name, value, message in BAD_DEFAULTS:
        before = _snapshot(opt)
        saved = opt.defaults[name]
        opt.defaults[name] = value
        with pytest.raises(ValueError) as raised:
            opt.step(grads())
        assert str(raised.value) == message
        opt.defaults[name] = saved
        _assert_unchanged(opt, before)
    # A gradient that is the parameter array itself cannot be donated with it:
    # foreach checks it (ValueError), a single dispatch is refused by jax.
    before = _snapshot(opt)
    with pytest.raises((ValueError, RuntimeError), match="donat"):
        opt.step([opt.param_group["params"][0], *grads()[1:]])
    _assert_unchanged(opt, before)
    # A parameter replaced by one of another shape is caught before anything runs.
    params = opt.param_group["params"]
    kept = params[1]
    params[1] = jnp.ones(5, jnp.float32)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=r"shape mismatch at \[1\]"):
        opt.step(grads())
    _assert_unchanged(opt, before)
    params[1] = kept
    # A parameter whose state was created with momentum=0 cannot take momentum.
    plain = FunctionalRMSprop([jnp.ones(2)], foreach=foreach)
    plain.step([jnp.ones(2)])
    plain.defaults["momentum"] = 0.9
    before = _snapshot(plain)
    with pytest.raises(ValueError, match="needs a momentum_buffer for parameter 0"):
        plain.step([jnp.ones(2)])
    _assert_unchanged(plain, before)
    # Still usable, and exactly where a twin that saw no errors is.
    for _ in range(3):
        g = grads()
        opt.step(g)
        twin.step(g)
    for a, b in zip(_param_leaves(opt), _param_leaves(twin)):
        np.testing.assert_array_equal(a, b)


def test_bad_constructor_arguments():
    shared = jnp.ones(2)
    with pytest.raises(ValueError, match=r"params \[0\] and \[2\] are the same array"):
        FunctionalRMSprop([shared, jnp.ones(2), shared])
    with pytest.raises(ValueError, match="Invalid learning rate: -0.1"):
        FunctionalRMSprop([jnp.ones(2)], lr=-0.1)
    with pytest.raises(TypeError, match=r"params leaf \[1\] is int32\[2\]"):
        FunctionalRMSprop([jnp.ones(2), jnp.ones(2, jnp.int32)])


def _torch_rmsprop_with_grads(torch_params, grads, **config):
    opt = torch.optim.RMSprop(torch_params, **config)
    for g in grads:
        for p, x in zip(torch_params, g):
            p.grad = None if x is None else torch.tensor(x)
        opt.step()
    return opt


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_loads_torch_state_dict_and_continues_as_torch(foreach, x64):
    rng = np.random.default_rng(13)
    specs = SPECS
    config = {"lr": 0.02, "momentum": 0.3, "centered": True, "weight_decay": 0.01}

    def draw_grads():
        return [_draw(rng, s, d) for s, d in specs[:NEVER]] + [None]

    init = [_draw(rng, s, d) for s, d in specs]
    torch_params = [torch.tensor(x, requires_grad=True) for x in init]
    torch_opt = _torch_rmsprop_with_grads(torch_params, [draw_grads() for _ in range(5)], **config)
    saved = torch_opt.state_dict()

    params = [jnp.array(p.detach().numpy()) for p in torch_params]
    opt = FunctionalRMSprop(params, foreach=foreach)  # hyperparameters come from the dict
    opt.load_state_dict(saved)
    assert opt.defaults["lr"] == 0.02 and opt.centered and opt.defaults["momentum"] == 0.3
    assert sorted(opt.state) == list(range(NEVER))

    for _ in range(10):
        g = draw_grads()
        for p, x in zip(torch_params, g):
            p.grad = None if x is None else torch.tensor(x)
        torch_opt.step()
        opt.step([None if x is None else jnp.asarray(x) for x in g])
    for tp, jp in zip(torch_params, params):
        torch.testing.assert_close(_as_torch(jp), tp.detach())
    theirs = torch_opt.state_dict()["state"]
    mine = opt.state_dict()["state"]
    assert mine.keys() == theirs.keys()
    for i in theirs:
        assert mine[i].keys() == theirs[i].keys()
        for key, value in theirs[i].items():
            torch.testing.assert_close(torch.from_numpy(mine[i][key]), value)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_state_dict_round_trip_in_torch_layout(foreach, x64):
    rng = np.random.default_rng(17)
    init = [_draw(rng, s, d) for s, d in SPECS]
    opt = FunctionalRMSprop([jnp.asarray(x) for x in init], momentum=0.2, foreach=foreach)
    for mask in _patterns(rng):
        opt.step([jnp.asarray(_draw(rng, s, d)) if m else None for (s, d), m in zip(SPECS, mask)])
    saved = opt.state_dict()
    group = saved["param_groups"][0]
    assert group["params"] == list(range(len(SPECS)))
    assert {k: group[k] for k in ("lr", "alpha", "eps", "weight_decay", "momentum")} == (
        opt.defaults
    )
    assert NEVER not in saved["state"]
    for entry in saved["state"].values():
        assert list(entry) == ["step", "square_avg", "momentum_buffer"]
        assert all(isinstance(v, np.ndarray) for v in entry.values())
        assert entry["step"].dtype == np.float32 and entry["step"].shape == ()

    copy = FunctionalRMSprop(_param_leaves(opt), foreach=not foreach)
    copy.load_state_dict(saved)
    assert copy.foreach is (not foreach)  # a layout choice: not taken from the dict
    grads = [jnp.asarray(_draw(rng, s, d)) for s, d in SPECS]
    opt.step(grads)
    copy.step(grads)
    for a, b in zip(_param_leaves(opt), _param_leaves(copy)):
        np.testing.assert_array_equal(a, b)

    # torch.optim.RMSprop loads it (as tensors) and continues as we do.
    torch_params = [torch.tensor(x) for x in _param_leaves(copy)]
    torch_opt = torch.optim.RMSprop(torch_params)
    as_tensors = {
        "state": {
            i: {k: torch.from_numpy(v) for k, v in e.items()}
            for i, e in copy.state_dict()["state"].items()
        },
        "param_groups": copy.state_dict()["param_groups"],
    }
    torch_opt.load_state_dict(as_tensors)
    grads = [_draw(rng, s, d) for s, d in SPECS]
    for p, g in zip(torch_params, grads):
        p.grad = torch.tensor(g)
    torch_opt.step()
    copy.step([jnp.asarray(g) for g in grads])
    for tp, jp in zip(torch_params, _param_leaves(copy)):
        torch.testing.assert_close(torch.from_numpy(jp), tp)


def _torch_state_dict(optimizer_class, **config):
    """A real torch optimizer's state dict after one step on two params (3,) and (2,)."""
    params = [torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)]
    opt = optimizer_class(params, **config)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    return opt.state_dict()


def _with_entry(good, **changes):
    """``good`` with parameter 0's state entry changed (a value of ``...`` removes the key)."""
    entry = {k: v for k, v in good["state"][0].items() if changes.get(k, None) is not ...}
    entry.update({k: v for k, v in changes.items() if v is not ...})
    return {"state": {**good["state"], 0: entry}, "param_groups": good["param_groups"]}


def _with_group(good, **changes):
    return {"state": good["state"], "param_groups": [{**good["param_groups"][0], **changes}]}


# Each invalid state dict, built from a valid one (momentum 0.9, centered): (make, error, match).
BAD_STATE_DICTS = {
    "not a dict": (lambda good: [good], TypeError, "a state dict is a dict"),
    "no state key": (lambda good: {"param_groups": good["param_groups"]}, ValueError, "no 'state'"),
    "no param_groups key": (lambda good: {"state": good["state"]}, ValueError, "no 'param_groups'"),
    "two groups": (
        lambda good: {**good, "param_groups": good["param_groups"] * 2},
        ValueError,
        "different number of parameter groups",
    ),
    "torch Adam": (
        lambda good: _torch_state_dict(torch.optim.Adam),
        ValueError,
        r"not an RMSprop state dict .*'alpha', 'momentum'.*'exp_avg', 'exp_avg_sq'",
    ),
    "torch SGD": (
        lambda good: _torch_state_dict(torch.optim.SGD, lr=0.1, momentum=0.9),
        ValueError,
        r"not an RMSprop state dict \(the group has no 'alpha', 'eps'.*'dampening'",
    ),
    "group without lr": (
        lambda good: {
            "state": good["state"],
            "param_groups": [{k: v for k, v in good["param_groups"][0].items() if k != "lr"}],
        },
        ValueError,
        "the group has no 'lr'",
    ),
    "negative lr": (lambda good: _with_group(good, lr=-1.0), ValueError, "Invalid learning rate"),
    "wrong number of params": (
        lambda good: _with_group(good, params=[0]),
        ValueError,
        "doesn't match the size",
    ),
    "repeated index": (
        lambda good: _with_group(good, params=[0, 0]),
        ValueError,
        "repeat an index",
    ),
    "unknown index": (
        lambda good: {"state": {7: good["state"][0]}, "param_groups": good["param_groups"]},
        ValueError,
        "unknown parameter 7",
    ),
    "entry not a dict": (
        lambda good: {"state": {0: 3.0}, "param_groups": good["param_groups"]},
        TypeError,
        "must be a dict",
    ),
    "momentum_buffer None": (
        lambda good: _with_entry(good, momentum_buffer=None),
        ValueError,
        "has None for 'momentum_buffer'",
    ),
    "momentum_buffer missing": (
        lambda good: _with_entry(good, momentum_buffer=...),
        ValueError,
        "has no 'momentum_buffer', which momentum=0.9",
    ),
    "square_avg missing": (
        lambda good: _with_entry(good, square_avg=...),
        ValueError,
        "has no 'square_avg'",
    ),
    "square_avg None": (
        lambda good: _with_entry(good, square_avg=None),
        ValueError,
        "has None for 'square_avg'",
    ),
    "grad_avg missing while centered": (
        lambda good: _with_entry(good, grad_avg=...),
        ValueError,
        "has no 'grad_avg'",
    ),
    "step missing": (lambda good: _with_entry(good, step=...), ValueError, "has no 'step'"),
    "step negative": (
        lambda good: _with_entry(good, step=np.float32(-1)),
        ValueError,
        "finite non-negative integer",
    ),
    "step fractional": (
        lambda good: _with_entry(good, step=np.float32(2.5)),
        ValueError,
        "finite non-negative integer",
    ),
    "step NaN": (
        lambda good: _with_entry(good, step=float("nan")),
        ValueError,
        "finite non-negative integer",
    ),
    "step string": (
        lambda good: _with_entry(good, step="3"),
        ValueError,
        "finite non-negative integer",
    ),
    "square_avg wrong shape": (
        lambda good: _with_entry(good, square_avg=np.zeros(4, np.float32)),
        ValueError,
        r"has shape \(4,\), the parameter has shape \(3,\)",
    ),
    "square_avg complex for a real param": (
        lambda good: _with_entry(good, square_avg=np.zeros(3, np.complex64)),
        TypeError,
        "the parameter is float32",
    ),
    "grad_avg object array": (
        lambda good: _with_entry(good, grad_avg=np.array([None, None, None])),
        TypeError,
        "not a float or complex array",
    ),
    "momentum_buffer integers": (
        lambda good: _with_entry(good, momentum_buffer=np.zeros(3, np.int32)),
        TypeError,
        "not a float or complex array",
    ),
}


@pytest.mark.parametrize("case", BAD_STATE_DICTS)
def test_each_invalid_state_dict_is_refused_and_changes_nothing(case):
    make, error, match = BAD_STATE_DICTS[case]
    params = [jnp.ones(3, jnp.float32), jnp.ones(2, jnp.float32)]
    opt = FunctionalRMSprop(params, momentum=0.9, centered=True)
    opt.step([jnp.ones(3, jnp.float32), None])
    good = opt.state_dict()
    before = _snapshot(opt)
    with pytest.raises(error, match=match):
        opt.load_state_dict(make(good))
    _assert_unchanged(opt, before)
    opt.load_state_dict(good)  # the valid one still loads, and the optimizer still steps
    opt.step([jnp.ones(3, jnp.float32), jnp.ones(2, jnp.float32)])
    assert opt.state[0]["step"] == 2 and opt.state[1]["step"] == 1


def test_loaded_state_dict_accepts_torch_tensors_with_conjugate_and_negative_bits():
    x = torch.tensor([1 - 2j, 3 - 0.5j], dtype=torch.complex64)
    conj, neg = x.conj(), x.conj().imag  # lazy views: the conjugate and the negative bit
    assert conj.is_conj() and neg.is_neg()
    group = {"lr": 0.1, "alpha": 0.9, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0}
    state_dict = {
        "state": {
            0: {"step": torch.tensor(4.0), "square_avg": conj},
            1: {"step": torch.tensor(1.0), "square_avg": neg},
        },
        "param_groups": [{**group, "params": [0, 1]}],
    }
    opt = FunctionalRMSprop([jnp.zeros(2, jnp.complex64), jnp.zeros(2, jnp.float32)])
    opt.load_state_dict(state_dict)
    np.testing.assert_array_equal(np.array(opt.state[0]["square_avg"]), [1 + 2j, 3 + 0.5j])
    np.testing.assert_array_equal(np.array(opt.state[1]["square_avg"]), [2.0, 0.5])
    assert int(opt.state[0]["step"]) == 4


def _many(n=200, shape=(4,)):
    """``n`` float32 params of ones: with foreach=True, units of 64 (the last one partial)."""
    return [jnp.ones(shape, jnp.float32) for _ in range(n)]


def _deleted():
    bad = jnp.ones(4, jnp.float32)
    bad.delete()
    return bad


# Gradients refused before anything is donated, each at the LAST position (in
# the last foreach unit: earlier units would already have run): (corrupt, error, match).
BAD_LAST_GRADIENT = {
    "deleted": (lambda opt, g: g[:-1] + [_deleted()], ValueError, r"\[199\] is a deleted array"),
    "another parameter": (
        lambda opt, g: g[:-1] + [opt.param_group["params"][0]],
        ValueError,
        r"\[199\] is parameter \[0\], which the step donates",
    ),
    "its own parameter": (
        lambda opt, g: g[:-1] + [opt.param_group["params"][-1]],
        ValueError,
        r"\[199\] is parameter \[199\]",
    ),
    "a state buffer": (
        lambda opt, g: g[:-1] + [_a_state_buffer(opt)],
        ValueError,
        "a buffer of the optimizer state",
    ),
    "float64 numpy for float32": (
        lambda opt, g: g[:-1] + [np.ones(4, np.float64)],
        TypeError,
        r"dtype mismatch at \[199\]: gradients is float64, params is float32",
    ),
    "wrong shape": (
        lambda opt, g: g[:-1] + [jnp.ones(5, jnp.float32)],
        ValueError,
        r"shape mismatch at \[199\]",
    ),
    "a list": (lambda opt, g: g[:-1] + [[1.0] * 4], TypeError, "is a list, not an array"),
    # A shape that broadcasts against the parameter's: the step's own trace must refuse it.
    "broadcastable shape": (
        lambda opt, g: g[:-1] + [jnp.ones(1, jnp.float32)],
        ValueError,
        r"shape mismatch at \[199\]",
    ),
    "wider JAX dtype": (
        lambda opt, g: g[:-1] + [jnp.ones(4, jnp.complex64)],
        TypeError,
        r"dtype mismatch at \[199\]: gradients is complex64, params is float32",
    ),
}


def _a_state_buffer(opt):
    """A live state buffer of parameter 199 (reachable only through private names)."""
    from jrmsprop.units import unpack

    return unpack(opt._states[199])[0]


@pytest.mark.parametrize(
    ("case", "foreach"),
    # With foreach=True no state buffer has a parameter's shape (they are flat).
    [
        (case, foreach)
        for case in BAD_LAST_GRADIENT
        for foreach in (False, True)
        if not (case == "a state buffer" and foreach)
    ],
)
def test_bad_gradient_in_the_last_unit_changes_nothing(case, foreach):
    corrupt, error, match = BAD_LAST_GRADIENT[case]
    opt = FunctionalRMSprop(_many(), momentum=0.5, foreach=foreach)
    opt.step([jnp.full(4, 0.5, jnp.float32) for _ in range(200)])
    before = _snapshot(opt)
    grads = [jnp.full(4, 0.25, jnp.float32) for _ in range(200)]
    with pytest.raises(error, match=match):
        opt.step(corrupt(opt, grads))
    assert not any(p.is_deleted() for p in opt.param_group["params"])
    _assert_unchanged(opt, before)
    opt.step(grads)
    assert {int(e["step"]) for e in opt.state.values()} == {2}


def test_the_usual_step_leaves_shapes_dtypes_and_deletion_to_the_compiled_call():
    """foreach=False over the arrays the last step wrote: the fast path (see _diagnose)."""
    opt = FunctionalRMSprop(_many())
    grads = [jnp.full(4, 0.5, jnp.float32) for _ in range(200)]
    assert opt._check(grads).dispatch
    opt.step(grads)
    assert opt._check(grads).dispatch
    assert not FunctionalRMSprop(_many(), foreach=True)._check(grads).dispatch
    opt.param_group["params"][7] = jnp.ones(4, jnp.float32)  # not written by the step
    assert not opt._check(grads).dispatch


@pytest.mark.parametrize("position", [0, 150, 199])
def test_a_parameter_deleted_after_the_step_wrote_it_is_named_and_nothing_changes(position):
    opt = FunctionalRMSprop(_many(), momentum=0.5)
    grads = [jnp.full(4, 0.5, jnp.float32) for _ in range(200)]
    opt.step(grads)
    before = _snapshot(opt)
    params = opt.param_group["params"]
    params[position].delete()  # the very array the step wrote: JAX's dispatch refuses it
    with pytest.raises(ValueError, match=rf"parameter \[{position}\] is a deleted array"):
        opt.step(grads)
    assert [i for i, p in enumerate(params) if p.is_deleted()] == [position]
    params[position] = jnp.asarray(before[0][position])
    _assert_unchanged(opt, before)
    opt.step(grads)
    assert {int(e["step"]) for e in opt.state.values()} == {2}


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_plain_state_is_stored_as_one_array_per_unit_and_every_writer_agrees(foreach):
    from jrmsprop.units import pack, unpack

    grads = [jnp.full(4, 0.5, jnp.float32) for _ in range(200)]
    opt = FunctionalRMSprop(_many(), foreach=foreach)
    opt.step(grads)
    assert all(isinstance(s, jax.Array) for s in opt._states)  # units.pack's form
    assert unpack(opt._states[0])[1:] == (None, None)
    with_momentum = FunctionalRMSprop(_many(), momentum=0.5, foreach=foreach)
    with_momentum.step(grads)
    assert all(type(s) is tuple for s in with_momentum._states)
    assert pack(unpack(with_momentum._states[0])) is with_momentum._states[0]
    # load_state_dict and the layout switch store the same form: no new executable after them.
    twin = FunctionalRMSprop([jnp.asarray(p) for p in _param_leaves(opt)], foreach=foreach)
    twin.load_state_dict(opt.state_dict())
    twin.foreach = not foreach
    twin.foreach = foreach
    with CompileCounter() as counter:
        twin.step(grads)
        opt.step(grads)
    assert counter.count == 0
    np.testing.assert_array_equal(_param_leaves(twin), _param_leaves(opt))


@pytest.mark.parametrize("flag", ["jax_debug_nans", "jax_debug_infs"])
def test_refused_calls_are_named_with_a_debug_flag_on(flag):
    """With the flag on nothing is donated (another path out of the run): still named."""
    opt = FunctionalRMSprop(_many())
    grads = [jnp.full(4, 0.5, jnp.float32) for _ in range(200)]
    opt.step(grads)
    before = _snapshot(opt)
    params = opt.param_group["params"]
    jax.config.update(flag, True)
    try:
        with pytest.raises(ValueError, match=r"shape mismatch at \[5\]"):
            opt.step(grads[:5] + [jnp.ones(1, jnp.float32)] + grads[6:])
        params[9].delete()
        with pytest.raises(ValueError, match=r"parameter \[9\] is a deleted array"):
            opt.step(grads)
    finally:
        jax.config.update(flag, False)
    params[9] = jnp.asarray(before[0][9])
    _assert_unchanged(opt, before)


def test_a_deleted_gradient_after_a_refused_step_is_named_even_with_none_gradients():
    opt = FunctionalRMSprop(_many())
    grads = [jnp.full(4, 0.5, jnp.float32) for _ in range(200)]
    opt.step(grads)
    before = _snapshot(opt)
    some = [None if i % 3 else g for i, g in enumerate(grads)]
    some[198] = _deleted()
    with pytest.raises(ValueError, match=r"gradient at \[198\] is a deleted array"):
        opt.step(some)
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_bad_parameter_container_is_refused_before_anything_runs(foreach):
    opt = FunctionalRMSprop(_many(), foreach=foreach)
    grads = [jnp.full(4, 0.5, jnp.float32) for _ in range(200)]
    opt.step(grads)
    params = opt.param_group["params"]
    before = _snapshot(opt)
    kept = params[150]
    params[150] = params[3]  # one array at two positions: it cannot be donated twice
    with pytest.raises(ValueError, match=r"params \[3\] and \[150\] are the same array"):
        opt.step(grads)
    params[150] = _deleted()
    with pytest.raises(ValueError, match=r"parameter \[150\] is a deleted array"):
        opt.step(grads)
    params[150] = np.asarray(kept, np.float64)
    with pytest.raises(TypeError, match=r"dtype mismatch at \[150\]"):
        opt.step(grads)
    params[150] = kept
    assert not any(p.is_deleted() for p in params)
    _assert_unchanged(opt, before)
    params[150] = np.array(kept)  # a numpy parameter of the right dtype is taken
    opt.step(grads)
    assert isinstance(params[150], jax.Array)
    np.testing.assert_array_equal(np.array(params[150]), np.array(params[0]))


class _FailingUnits:
    """``transaction.step_units`` that fails on its ``fail_at``-th call, as a device out of memory."""

    def __init__(self, real, fail_at):
        self.real, self.fail_at, self.calls = real, fail_at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory (simulated)")
        return self.real(*args, **kwargs)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_device_error_mid_step_deletes_nothing_and_commits_what_ran(foreach, monkeypatch):
    from jrmsprop import transaction

    opt = FunctionalRMSprop(_many(), momentum=0.5, foreach=foreach)
    twin = FunctionalRMSprop(_many(), momentum=0.5, foreach=foreach)
    grads = [jnp.full(4, 0.5, jnp.float32) for _ in range(200)]
    for o in (opt, twin):
        o.step(grads)
    before = _snapshot(opt)
    twin.step(grads)
    failing = _FailingUnits(transaction.step_units, fail_at=3 if foreach else 1)
    monkeypatch.setattr(transaction, "step_units", failing)
    if foreach:  # units 0 and 1 ran (positions 0..127) and are committed; 2 and 3 are not
        with pytest.raises(RuntimeError, match="after 2 of 4 units ran. Parameters") as raised:
            opt.step(grads)
        assert "RESOURCE_EXHAUSTED" in str(raised.value.__cause__)
    else:  # one call: nothing ran, nothing changed
        with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
            opt.step(grads)
    monkeypatch.undo()
    params = opt.param_group["params"]
    assert not any(p.is_deleted() for p in params)
    took = 128 if foreach else 0
    after = _param_leaves(opt)
    steps = opt.state_dict()["state"]
    for i in range(200):
        expected = _param_leaves(twin)[i] if i < took else before[0][i]
        np.testing.assert_array_equal(after[i], expected)
        assert steps[i]["step"] == (2 if i < took else 1)
    opt.step(grads)  # usable; the parameters that missed the step stay one behind
    steps = [int(e["step"]) for e in opt.state_dict()["state"].values()]
    assert steps == [3] * took + [2] * (200 - took)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_device_error_that_consumed_its_inputs_says_which_are_lost(foreach, monkeypatch):
    from jrmsprop import transaction

    def consumed_then_failed(params, *args, **kwargs):
        for p in jax.tree.leaves(params)[:2]:
            p.delete()  # as a device fault after donation would leave them
        raise RuntimeError("INTERNAL: device fault (simulated)")

    opt = FunctionalRMSprop(_many(100), foreach=foreach)
    monkeypatch.setattr(transaction, "step_units", consumed_then_failed)
    with pytest.raises(RuntimeError, match=r"except \['\[0\]', '\[1\]'\]: the device consumed"):
        opt.step([jnp.ones(4, jnp.float32)] * 100)


def test_state_is_a_snapshot_that_survives_later_steps():
    for foreach in (False, True):
        opt = FunctionalRMSprop(_many(10), momentum=0.5, centered=True, foreach=foreach)
        opt.step([jnp.full(4, 0.5, jnp.float32)] * 10)
        snapshot = opt.state
        kept = {k: np.array(v) for k, v in snapshot[3].items()}
        for _ in range(2):
            opt.step([jnp.full(4, 0.25, jnp.float32)] * 10)
        for key, value in kept.items():  # readable after the steps, and as it was
            np.testing.assert_array_equal(np.array(snapshot[3][key]), value)
        assert int(opt.state[3]["step"]) == 3


def _ctrl_c_outcome(opt, params, steps_before):
    """After a possibly interrupted step: nothing deleted, every param took it or none did."""
    assert not any(p.is_deleted() for p in params)
    steps = {int(e["step"]) for e in opt.state_dict()["state"].values()}
    assert len(steps) == 1 and steps <= {steps_before, steps_before + 1}, steps
    # Same start, same gradients: params that took the same steps are equal.
    values = np.stack([np.array(p) for p in params])
    assert (values == values[0]).all()
    return steps.pop()


def test_ctrl_c_at_each_unit_of_a_foreach_step_is_raised_after_the_commit(monkeypatch, ctrl_c):
    # Deterministic: the SIGINT arrives while unit k runs, for every k.
    from jrmsprop import transaction

    params = _many(2000)
    opt = FunctionalRMSprop(params, momentum=0.5, foreach=True)
    grads = [jnp.full(4, 0.5, jnp.float32) for _ in range(2000)]
    opt.step(grads)
    units_per_step = len(opt._layout.units)
    real = transaction.step_units
    for k in range(units_per_step):
        calls = []

        def interrupting(*args, k=k, calls=calls, **kwargs):
            calls.append(1)
            if len(calls) == k + 1:
                os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)

        monkeypatch.setattr(transaction, "step_units", interrupting)
        with pytest.raises(KeyboardInterrupt):
            opt.step(grads)
        monkeypatch.undo()
        assert len(calls) == units_per_step  # held back until every unit ran
        assert _ctrl_c_outcome(opt, params, k + 1) == k + 2  # and the step committed
    opt.step(grads)


def test_real_ctrl_c_from_a_timer_at_random_moments_of_a_foreach_step(ctrl_c):
    params = _many(2000)
    opt = FunctionalRMSprop(params, momentum=0.5, foreach=True)
    grads = [jnp.full(4, 0.5, jnp.float32) for _ in range(2000)]
    opt.step(grads)
    started = time.perf_counter()
    opt.step(grads)
    jax.block_until_ready(params)
    duration = time.perf_counter() - started
    rng = np.random.default_rng(1234)  # fixed delays: the same trials on every run
    steps = 2
    main = threading.main_thread().ident
    for delay in rng.uniform(0.0, 1.3, size=30) * duration:
        timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGINT))
        try:
            timer.start()
            opt.step(grads)
            timer.join()
            time.sleep(0.01)  # a signal sent after the step lands here
        except KeyboardInterrupt:
            pass
        timer.join()
        steps = _ctrl_c_outcome(opt, params, steps)
    opt.step(grads)
    assert _ctrl_c_outcome(opt, params, steps) == steps + 1


def test_step_puts_back_the_callers_sigint_handler():
    seen = []

    def handler(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        opt = FunctionalRMSprop(_many(3), foreach=True)
        opt.step([jnp.ones(4, jnp.float32)] * 3)
        assert signal.getsignal(signal.SIGINT) is handler
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert seen == [signal.SIGINT]  # the caller's handler is live again
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_two_threads_stepping_one_optimizer_apply_every_step_once(foreach):
    opt = FunctionalRMSprop(_many(150), momentum=0.5, centered=True, foreach=foreach)
    twin = FunctionalRMSprop(_many(150), momentum=0.5, centered=True, foreach=foreach)
    grads = [jnp.full(4, 0.5, jnp.float32) for _ in range(150)]
    errors = []
    barrier = threading.Barrier(2)

    def worker():
        try:
            barrier.wait()
            for _ in range(40):
                opt.step(grads)
                opt.state_dict()  # reads interleave with the other thread's steps
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for _ in range(80):
        twin.step(grads)
    assert {int(e["step"]) for e in opt.state.values()} == {80}
    for a, b in zip(_param_leaves(opt), _param_leaves(twin)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("switch", ["maximize", "centered off"])
def test_switching_maximize_or_centered_off_mid_run_matches_torch(switch, foreach, x64):
    rng = np.random.default_rng(zlib.crc32(f"{switch}{foreach}".encode()))
    config = {"momentum": 0.3, "centered": switch == "centered off"}
    torch_params, torch_opt, jax_params, jax_opt = _pair(rng, foreach=foreach, **config)
    mask = [True] * NEVER + [False]
    for step in range(12):
        if step == 5:
            for opt in (torch_opt, jax_opt):
                if switch == "maximize":
                    opt.maximize = True
                else:
                    opt.centered = False  # torch keeps the grad_avg buffers, unchanged
        if step == 8:
            mask = [k % 2 == 0 for k in range(len(SPECS))]  # new params get state too
        _both_step(rng, mask, torch_opt, jax_opt)
    assert_same(torch_params, torch_opt, jax_params, jax_opt)
    # The state dict of the switched optimizer loads and continues as the original.
    copy = FunctionalRMSprop(_param_leaves(jax_opt), foreach=foreach)
    copy.load_state_dict(jax_opt.state_dict())
    grads = [jnp.asarray(_draw(rng, s, d)) for s, d in SPECS]
    jax_opt.step(grads)
    copy.step(grads)
    for a, b in zip(_param_leaves(jax_opt), _param_leaves(copy)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_centered_on_after_uncentered_state_raises_at_once(foreach):
    torch_params = [torch.ones(3)]
    torch_opt = _new_torch_rmsprop(torch_params)
    torch_opt.step([torch.ones(3)])
    torch_opt.centered = True
    with pytest.raises(KeyError, match="grad_avg"):  # torch: at the next step
        torch_opt.step([torch.ones(3)])

    opt = FunctionalRMSprop([jnp.ones(3), jnp.ones(2)], foreach=foreach)
    opt.centered = True  # no state yet: simply centered from the start
    opt.centered = False
    opt.step([jnp.ones(3), None])
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=r"centered=True needs a grad_avg .* parameters \[0\]"):
        opt.centered = True
    assert opt.centered is False
    _assert_unchanged(opt, before)
    opt.step([jnp.ones(3), jnp.ones(2)])  # still usable, still not centered
    assert "grad_avg" not in opt.state[1]


def test_switching_foreach_mid_run_moves_the_state_and_changes_no_number(x64):
    rng = np.random.default_rng(31)
    init = [_draw(rng, s, d) for s, d in SPECS]
    config = {"momentum": 0.3, "centered": True, "weight_decay": 0.01}
    switched = FunctionalRMSprop([jnp.asarray(x) for x in init], **config)
    steady = FunctionalRMSprop([jnp.asarray(x) for x in init], **config)
    masks = _patterns(rng, 3)
    for step in range(9):
        if step in (3, 6):
            switched.foreach = not switched.foreach
        grads = [
            jnp.asarray(_draw(rng, s, d)) if m else None
            for (s, d), m in zip(SPECS, masks[step % 3])
        ]
        switched.step(grads)
        steady.step(grads)
    assert switched.foreach is False and len(switched._layout.units) == len(SPECS)
    switched.foreach = True
    assert len(switched._layout.units) == 4  # one flat unit per dtype
    for a, b in zip(_param_leaves(switched), _param_leaves(steady)):
        np.testing.assert_array_equal(a, b)
    ours, theirs = switched.state_dict(), steady.state_dict()
    assert ours["state"].keys() == theirs["state"].keys()
    for i, entry in theirs["state"].items():
        assert ours["state"][i].keys() == entry.keys()
        for key, value in entry.items():
            np.testing.assert_array_equal(ours["state"][i][key], value)


def _is_none(x):
    return x is None


def test_equinox_partitioned_params_with_none_fields():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(3, 2, width_size=8, depth=2, key=jax.random.PRNGKey(0))
    params, static = eqx.partition(model, eqx.is_array)
    treedef = jax.tree.structure(params)
    assert None in jax.tree.leaves(params, is_leaf=lambda x: x is None)  # fields without arrays
    as_list = [jnp.copy(x) for x in jax.tree.leaves(params)]
    reference = FunctionalRMSprop(as_list, momentum=0.5, foreach=True)
    opt = FunctionalRMSprop(params, momentum=0.5, foreach=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 3))

    def loss(p):
        return jnp.mean(jax.vmap(eqx.combine(p, static))(x) ** 2)

    for step in range(6):
        grads = eqx.filter(jax.grad(loss)(opt.param_group["params"]), eqx.is_array)
        if step % 2:  # no gradient for the first layer's bias: torch's skip
            grads = eqx.tree_at(lambda m: m.layers[0].bias, grads, None)
        opt.step(grads)
        reference.step(treedef.flatten_up_to(grads))
    new = opt.param_group["params"]
    assert jax.tree.structure(new) == treedef  # still the partitioned MLP, Nones included
    for a, b in zip(jax.tree.leaves(new), as_list):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    assert int(opt.state[1]["step"]) == 3 and int(opt.state[0]["step"]) == 6
    with pytest.raises(ValueError, match="structure of the gradients does not match"):
        opt.step(eqx.tree_at(lambda m: m.activation, grads, jnp.ones(1), is_leaf=_is_none))


def test_repr_shows_hyperparameters_and_state_size():
    opt = FunctionalRMSprop([jnp.ones((10, 10), jnp.float32), jnp.ones(5)], lr=0.05, centered=True)
    assert "lr=0.05" in repr(opt) and "2 params" in repr(opt) and "state 0 B" in repr(opt)
    opt.step([jnp.ones((10, 10), jnp.float32), None])
    # square_avg and grad_avg of the stepped float32 param: 2 * 100 * 4 bytes.
    assert "1 with state, state 800 B" in repr(opt)


class AgainstScriptedTorch(RuleBasedStateMachine):
    """Interleaved steps, ``defaults`` changes and ``None`` patterns, on both."""

    SPECS = (((3,), np.float32), ((2, 2), np.float64), ((2,), np.complex64))

    @initialize(
        centered=st.booleans(),
        maximize=st.booleans(),
        momentum=st.sampled_from([0.0, 0.5]),
        foreach=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def build(self, centered, maximize, momentum, foreach, seed):
        self.rng = np.random.default_rng(seed)
        self.had_momentum = momentum > 0
        config = {"centered": centered, "maximize": maximize, "momentum": momentum}
        self.torch_params, self.torch_opt, self.jax_params, self.jax_opt = _pair(
            self.rng, self.SPECS, foreach=foreach, **config
        )

    @rule(mask=st.lists(st.booleans(), min_size=3, max_size=3))
    def step(self, mask):
        _both_step(self.rng, mask, self.torch_opt, self.jax_opt, self.SPECS)

    @rule(
        name=st.sampled_from(["lr", "alpha", "eps", "weight_decay", "momentum"]),
        value=st.sampled_from([0.0, 1e-3, 0.05, 0.3, 0.9]),
    )
    def set_default(self, name, value):
        if name == "momentum" and not self.had_momentum:
            return  # torch raises a KeyError for a buffer it never created
        if name in ("lr", "alpha") and value == 0.0:
            value = 0.5
        self.torch_opt.defaults[name] = value
        self.jax_opt.defaults[name] = value

    @invariant()
    def same(self):
        if hasattr(self, "jax_opt"):
            assert_same(self.torch_params, self.torch_opt, self.jax_params, self.jax_opt)


AgainstScriptedTorch.TestCase.settings = settings(
    max_examples=8,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# float64 among the params: x64 for the whole machine run (a context, on the test's thread).
test_interleaved_steps_and_defaults_match_torch = pytest.mark.usefixtures("x64")(
    AgainstScriptedTorch.TestCase
)


LONG_RUN_CONFIGS = [
    {},
    {"centered": True},
    {"centered": True, "momentum": 0.9},
    {"momentum": 0.9, "weight_decay": 0.1, "maximize": True},
    {"centered": True, "momentum": 0.3, "weight_decay": 0.05, "maximize": True},
]


@pytest.mark.parametrize("config", LONG_RUN_CONFIGS, ids=lambda c: ",".join(c) or "plain")
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
def test_foreach_stays_within_rounding_of_loop_over_a_long_run(dtype, config, x64_if_wide):
    """The README's bound: foreach=True is foreach=False up to rounding, params and state
    within 8 ulps of their largest value after 500 steps with random None gradients
    (measured at most 3.5), step counts equal. Not bitwise: XLA:CPU contracts a * b + c
    into a fused multiply-add, and in ``square_avg * alpha + (1 - alpha) * g * g`` (and
    the momentum and weight-decay sums) which product it fuses depends on how the flat
    unit's program is fused."""
    rng = np.random.default_rng(11)
    specs = [((3, 4), dtype), ((5,), dtype), ((), dtype), ((2, 2), dtype), ((70,), dtype)]
    init = [_draw(rng, s, d) for s, d in specs]
    loop = FunctionalRMSprop([jnp.asarray(x) for x in init], lr=1e-2, **config)
    fused = FunctionalRMSprop([jnp.asarray(x) for x in init], foreach=True, lr=1e-2, **config)
    for _ in range(500):
        mask = rng.random(len(specs)) > 0.2
        grads = [jnp.asarray(_draw(rng, s, d)) if m else None for (s, d), m in zip(specs, mask)]
        loop.step(grads)
        fused.step(grads)
    for a, b in zip(_param_leaves(loop), _param_leaves(fused)):
        _assert_within_rounding(a, b)
    assert loop.state.keys() == fused.state.keys()
    for i, entry in loop.state.items():
        assert entry.keys() == fused.state[i].keys()
        np.testing.assert_array_equal(np.array(entry["step"]), np.array(fused.state[i]["step"]))
        for key in entry:
            _assert_within_rounding(np.array(entry[key]), np.array(fused.state[i][key]))
