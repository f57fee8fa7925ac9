"""A torch run moved by name (jrmsprop.interop.run): nothing half-written, nothing narrowed.

`to_torch` checks everything before its first write and puts back what it wrote when a write
fails; what torch keeps (momentum buffers at momentum 0, its own group keys, frozen
parameters) comes back; `from_torch` refuses what it would narrow or misread and holds one
copy of the run. Every test runs with JAX's default x64 off unless it asks for `x64`.
"""

from __future__ import annotations

import gc
import pathlib
import subprocess
import sys
import tracemalloc
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch.optim import lr_scheduler as L
from torch.testing import assert_close

from jrmsprop import RMSpropState
from jrmsprop import interop
from jrmsprop.interop import run


@pytest.fixture(autouse=True)
def _x64_off():
    """JAX's default mode; a test taking the `x64` fixture turns it on inside this."""
    with jax.enable_x64(False):
        yield


# ---------------------------------------------------------------- helpers


def _layernorm_linear():
    # Sorted names ('0.bias', '0.weight', ...) are not torch's order ('0.weight', '0.bias').
    return torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))


def _run(groups=1, scheduler=False, momentum=0.9, centered=True, steps=3, width=3, seed=0):
    """A small torch run after `steps` steps; '0.bias' skips the first (its step is one less)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, width))
    hyper = {"lr": 1e-2, "momentum": momentum, "centered": centered}
    if groups == 1:
        opt = torch.optim.RMSprop(model.parameters(), **hyper)
    else:
        opt = torch.optim.RMSprop(
            [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 1e-3}],
            **hyper,
        )
    sched = L.StepLR(opt, step_size=2, gamma=0.5) if scheduler else None
    x = torch.randn(5, 4)
    for t in range(steps):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        if t == 0:
            model[0].bias.grad = None
        opt.step()
        if sched is not None:
            sched.step()
    return model, opt, sched


def _jax_steps(params, tx, opt_state, n=2):
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    for _ in range(n):
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params, opt_state


def _bytes(x):
    """Everything of a torch object's state, tensors as (dtype, shape, bytes)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        return ("tensor", str(t.dtype), tuple(t.shape), raw)
    if isinstance(x, Mapping):
        return {k: _bytes(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_bytes(v) for v in x)
    return x


def _torch_bytes(model, opt, sched):
    return (
        _bytes(dict(model.named_parameters())),
        _bytes(opt.state_dict()),
        _bytes(opt.param_groups),
        None if sched is None else _bytes(sched.state_dict()),
    )


def _edit_states(opt_state, fn, label=None):
    """`opt_state` with `fn` applied to its RMSpropStates (those under `label`, if given)."""
    is_state = lambda x: isinstance(x, RMSpropState)

    def edit(path, node):
        if not is_state(node):
            return node
        keys = [getattr(k, "key", None) for k in path]
        return fn(node) if label is None or label in keys else node

    return jax.tree_util.tree_map_with_path(edit, opt_state, is_leaf=is_state)


# ------------------------------------------- to_torch: every check before the first write


def _donating_step(tree):
    """The user's own jitted step donating its input: the arrays passed are deleted."""
    return jax.jit(lambda t: jax.tree.map(lambda x: x + 0, t), donate_argnums=0)(tree)


def _deleted_param(params, state, model, opt, sched):
    _donating_step(params)
    return params, state  # the stale ones, not what the step returned


def _deleted_state(params, state, model, opt, sched):
    _donating_step(state)
    return params, state


def _other_runs_state(params, state, model, opt, sched):
    other_model, other_opt, _ = _run(width=5)  # same names, another layer width
    return params, interop.from_torch(other_model, other_opt)[2]


def _negative_step(params, state, model, opt, sched):
    # The step vector is in the leaf order of the params: '0.bias', '0.weight', ...
    return params, _edit_states(state, lambda s: s._replace(step=s.step.at[1].set(-3)))


def _fractional_step(params, state, model, opt, sched):
    return params, _edit_states(
        state, lambda s: s._replace(step=s.step.astype(jnp.float32).at[1].set(3.5))
    )


def _extra_name(params, state, model, opt, sched):
    return {**params, "2.weight": jnp.zeros((3, 3))}, state


def _missing_name(params, state, model, opt, sched):
    return {k: v for k, v in params.items() if k != "0.bias"}, state


def _another_dtype(params, state, model, opt, sched):
    return {**params, "1.weight": params["1.weight"].astype(jnp.bfloat16)}, state


def _scheduler_past_the_state(params, state, model, opt, sched):
    for _ in range(3):
        sched.step()
    return params, state


@pytest.mark.parametrize(
    "spoil, error, message",
    [
        (_deleted_param, ValueError, r"params\['0.weight'\] was deleted, donated to a jax.jit"),
        (_deleted_state, ValueError, r"opt_state, param group 0's .* was deleted, donated"),
        (_other_runs_state, ValueError, r"square_avg of '1.weight' is float32\[5, 4\]"),
        (_negative_step, ValueError, r"step of '0.weight'.*non-negative integer, got -3"),
        (_fractional_step, ValueError, r"step of '0.weight'.*integer, got 3.5"),
        (_extra_name, ValueError, r"not the model's parameters: \['2.weight'\]"),
        (_missing_name, ValueError, r"missing: \['0.bias'\]"),
        (_another_dtype, ValueError, r"params\['1.weight'\] is bfloat16\[3, 4\].*float32"),
        (_scheduler_past_the_state, ValueError, r"last_epoch 6, past the state's position"),
    ],
    ids=lambda x: getattr(x, "__name__", "")[:30],
)
def test_to_torch_refuses_before_writing_anything(spoil, error, message):
    model, opt, sched = _run(scheduler=True)
    params, tx, state = interop.from_torch(model, opt, sched, horizon=100)
    params, state = _jax_steps(params, tx, state)
    params, state = spoil(dict(params), state, model, opt, sched)
    before = _torch_bytes(model, opt, sched)
    with pytest.raises(error, match=message):
        interop.to_torch(params, state, model, opt, sched)
    assert _torch_bytes(model, opt, sched) == before


def test_to_torch_refuses_groups_whose_counts_disagree():
    model, opt, _ = _run(groups=2)
    params, tx, state = interop.from_torch(model, opt)
    state = _edit_states(state, lambda s: s._replace(count=s.count + 1), label="group1")
    before = _torch_bytes(model, opt, None)
    with pytest.raises(ValueError, match=r"different counts \[3, 4\]"):
        interop.to_torch(params, state, model, opt)
    assert _torch_bytes(model, opt, None) == before


def test_steps_are_taken_by_name_not_by_sorted_position():
    model, opt, _ = _run()
    steps = {n: float(opt.state[p]["step"]) for n, p in model.named_parameters()}
    assert steps["0.bias"] == 2 and steps["0.weight"] == 3
    params, _, state = interop.from_torch(model, opt)
    fresh_model, fresh_opt, _ = _run(steps=0)
    interop.to_torch(params, state, fresh_model, fresh_opt)
    for name, p in fresh_model.named_parameters():
        assert float(fresh_opt.state[p]["step"]) == steps[name], name


def test_without_a_scheduler_count_is_the_largest_step():
    model, opt, _ = _run(groups=2)  # '0.bias' took 2 steps, the others 3
    _, _, state = interop.from_torch(model, opt)
    counts = []
    _edit_states(state, lambda s: counts.append(int(s.count)) or s)
    assert counts == [3, 3]


# ------------------------------------------------ to_torch: staged writes, all or nothing


class _Injected(RuntimeError):
    pass


def _raise_on_call(n, real):
    calls = []

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)  # the write happens, then it fails
        calls.append(1)
        if len(calls) == n:
            raise _Injected(f"injected after write {n}")
        return result

    return wrapped


@pytest.mark.parametrize(
    "where", ["load_state_dict", "parameter 1", "parameter 2", "parameter 4", "write_state"]
)
def test_an_exception_in_any_write_puts_model_optimizer_and_scheduler_back(where, monkeypatch):
    model, opt, sched = _run(groups=2, scheduler=True)
    params, tx, state = interop.from_torch(model, opt, sched, horizon=100)
    params, state = _jax_steps(params, tx, state, n=3)
    before = _torch_bytes(model, opt, sched)
    if where == "load_state_dict":
        real = type(opt).load_state_dict.__get__(opt)
        monkeypatch.setattr(opt, "load_state_dict", _raise_on_call(1, real))
    elif where == "write_state":
        monkeypatch.setattr(run, "write_state", _raise_on_call(1, run.write_state))
    else:
        n = int(where.split()[1])
        monkeypatch.setattr(run, "_write_parameter", _raise_on_call(n, run._write_parameter))
    with pytest.raises(_Injected):
        interop.to_torch(params, state, model, opt, sched)
    assert _torch_bytes(model, opt, sched) == before
    monkeypatch.undo()
    interop.to_torch(params, state, model, opt, sched)  # and then it goes through
    assert sched.last_epoch == 6
    assert_close(model[1].weight.detach(), torch.from_numpy(np.asarray(params["1.weight"])))


# ----------------------------------------------- what torch keeps comes back as it was


def _grad_stream(model, n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        {name: torch.randn(p.shape, generator=gen) for name, p in model.named_parameters()}
        for _ in range(n)
    ]


def _torch_steps(model, opt, grads):
    for g in grads:
        for name, p in model.named_parameters():
            p.grad = g[name].clone() if name in g else None
        opt.step()


def test_momentum_buffers_torch_keeps_at_momentum_zero_come_back():
    def build():
        torch.manual_seed(0)
        model = _layernorm_linear()
        return model, torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.9)

    model, opt = build()
    ref_model, ref_opt = build()
    grads = _grad_stream(model, 8)
    for m, o in ((model, opt), (ref_model, ref_opt)):
        _torch_steps(m, o, grads[:2])
        o.param_groups[0]["momentum"] = 0.0  # torch keeps the buffers, untouched
        _torch_steps(m, o, grads[2:4])
    params, tx, state = interop.from_torch(model, opt)
    assert state.momentum_buffer is None
    for g in grads[4:6]:
        g = {k: jnp.asarray(v.numpy()) for k, v in g.items()}
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    interop.to_torch(params, state, model, opt)
    _torch_steps(ref_model, ref_opt, grads[4:6])
    for m, o in ((model, opt), (ref_model, ref_opt)):
        o.param_groups[0]["momentum"] = 0.9
        _torch_steps(m, o, grads[6:])  # a KeyError: 'momentum_buffer' if it was dropped
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert_close(p.detach(), q.detach(), msg=name)
        assert_close(opt.state[p]["momentum_buffer"], ref_opt.state[q]["momentum_buffer"])


def test_groups_come_back_with_torchs_own_keys_only():
    model, opt, sched = _run(groups=2, scheduler=True)
    keys = [set(g) for g in opt.param_groups]
    params, tx, state = interop.from_torch(model, opt, sched, horizon=100)
    params, state = _jax_steps(params, tx, state)
    interop.to_torch(params, state, model, opt, sched)
    assert [set(g) for g in opt.param_groups] == keys
    assert not {"dampening", "nesterov", "fused"} & set(opt.state_dict()["param_groups"][0])
    assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups] == [0.0025, 0.00025]


def _frozen_run():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = torch.optim.RMSprop(
        filter(lambda p: p.requires_grad, model.parameters()), lr=1e-2, momentum=0.9
    )
    return model, opt


def test_frozen_parameters_outside_the_optimizer_go_there_and_back():
    model, opt = _frozen_run()
    ref_model, ref_opt = _frozen_run()
    trained = {"2.weight", "2.bias"}
    grads = [{k: v for k, v in g.items() if k in trained} for g in _grad_stream(model, 6)]
    _torch_steps(model, opt, grads[:2])
    _torch_steps(ref_model, ref_opt, grads[:4])
    params, tx, state = interop.from_torch(model, opt)
    assert sorted(params) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    frozen = {k: np.array(params[k]) for k in ("0.weight", "0.bias")}
    for g in grads[2:4]:
        # JAX's grads reach the frozen ones too (jax.grad differentiates every leaf): ignored.
        g = {k: jnp.ones_like(p) for k, p in params.items()} | {
            k: jnp.asarray(v.numpy()) for k, v in g.items()
        }
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    for k, v in frozen.items():
        np.testing.assert_array_equal(params[k], v)
    # The same from the checkpoint's dicts, naming the frozen ones.
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    from_dicts = interop.from_torch_state_dicts(
        model.state_dict(), opt.state_dict(), names, frozen=["0.weight", "0.bias"]
    )
    assert sorted(from_dicts[0]) == sorted(params)
    # Back: every parameter by name, the frozen ones too (here changed in JAX on purpose).
    params = {**params, "0.bias": params["0.bias"] + 1}
    interop.to_torch(params, state, model, opt)
    _torch_steps(model, opt, grads[4:])
    _torch_steps(ref_model, ref_opt, grads[4:])
    assert_close(model[2].weight.detach(), ref_model[2].weight.detach())
    assert_close(model[0].bias.detach(), ref_model[0].bias.detach() + 1)
    # Without the frozen names, to_torch leaves those parameters as they are.
    before = model[0].weight.detach().clone()
    interop.to_torch(
        {k: v for k, v in params.items() if k in trained}, state, model, opt
    )
    assert torch.equal(model[0].weight.detach(), before)


def test_frozen_names_must_be_outside_the_optimizer_and_in_the_model():
    model, opt = _frozen_run()
    names = ["2.weight", "2.bias"]
    with pytest.raises(ValueError, match=r"frozen names \['2.bias'\] are optimizer parameters"):
        interop.from_torch_state_dicts(
            model.state_dict(), opt.state_dict(), names, frozen=["2.bias"]
        )
    with pytest.raises(ValueError, match=r"has no parameters \['9.weight'\]"):
        interop.from_torch_state_dicts(
            model.state_dict(), opt.state_dict(), names, frozen=["9.weight"]
        )


# --------------------------------------------------------- on the way in: nothing narrowed


def _float64_run(steps):
    torch.manual_seed(0)
    model = _layernorm_linear().double()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.9)
    grads = [{k: v.double() for k, v in g.items()} for g in _grad_stream(model, steps)]
    _torch_steps(model, opt, grads)
    return model, opt


@pytest.mark.parametrize("steps", [0, 2], ids=["before torch's first step", "after it"])
def test_a_float64_model_with_x64_off_is_refused_naming_x64_and_both_remedies(steps):
    model, opt = _float64_run(steps)
    with pytest.raises(ValueError) as refused:
        interop.from_torch(model, opt)
    message = str(refused.value)
    assert "'0.weight' is float64" in message and "jax_enable_x64" in message
    assert 'jax.config.update("jax_enable_x64", True)' in message
    assert "model.float(), then optimizer.load_state_dict(optimizer.state_dict())" in message
    with pytest.raises(ValueError, match="jax_enable_x64"):
        interop.from_torch_state_dicts(
            model.state_dict(), opt.state_dict(), [n for n, _ in model.named_parameters()]
        )
    # The second remedy, as the message says it.
    model.float()
    opt.load_state_dict(opt.state_dict())
    params, tx, state = interop.from_torch(model, opt)
    dtypes = {p.dtype for p in jax.tree.leaves((params, state.square_avg))}
    assert dtypes == {jnp.dtype(jnp.float32)}


def test_a_float64_model_with_x64_on_stays_float64(x64):
    model, opt = _float64_run(2)
    params, tx, state = interop.from_torch(model, opt)
    dtypes = {p.dtype for p in jax.tree.leaves((params, state.momentum_buffer))}
    assert dtypes == {jnp.dtype(jnp.float64)}


def _dicts():
    model, opt, _ = _run(scheduler=False)
    return model.state_dict(), opt.state_dict(), [n for n, _ in model.named_parameters()]


def _no_params_key(m, o, n):
    o["param_groups"][0].pop("params")
    return m, o, n


def _dict_as_a_name(m, o, n):
    return m, o, [{"name": x} for x in n]


def _dict_as_a_param_id(m, o, n):
    o["param_groups"][0]["params"][0] = {"id": 0}
    return m, o, n


def _state_entry_not_a_dict(m, o, n):
    o["state"][0] = 3
    return m, o, n


def _model_dict_not_a_dict(m, o, n):
    return list(m.values()), o, n


def _one_name_twice(m, o, n):
    return m, o, [n[0], n[0], *n[2:]]


def _missing_name(m, o, n):
    return {k: v for k, v in m.items() if k != "1.bias"}, o, n


def _one_name_short(m, o, n):
    return m, o, n[:-1]


def _buffer_of_another_shape(m, o, n):
    o["state"][2]["square_avg"] = torch.zeros(5, 4)
    return m, o, n


def _buffer_of_a_wider_dtype(m, o, n):
    o["state"][2]["square_avg"] = o["state"][2]["square_avg"].double()
    return m, o, n


@pytest.mark.parametrize(
    "spoil, error, message",
    [
        (_no_params_key, ValueError, r"param_groups'\]\[0\] has no 'params'"),
        (_dict_as_a_name, TypeError, r"param_names must hold parameter names \(str\); got dict"),
        (_dict_as_a_param_id, TypeError, r"\['params'\] holds dict \{'id': 0\}.*ints"),
        (_state_entry_not_a_dict, TypeError, r"\['state'\]\[0\] must be a dict of tensors"),
        (_model_dict_not_a_dict, TypeError, r"model's state dict must be a dict.*got list"),
        (_one_name_twice, ValueError, r"\['0.weight'\] are given for more than one parameter"),
        (_missing_name, ValueError, r"the model has no parameters \['1.bias'\]"),
        (_one_name_short, ValueError, r"has 4 parameters across its param groups, 3 names"),
        (_buffer_of_another_shape, ValueError, r"'1.weight'.*square_avg has shape \(5, 4\)"),
        (_buffer_of_a_wider_dtype, ValueError, r"'1.weight'.*float64.*never narrowed"),
    ],
    ids=lambda x: getattr(x, "__name__", "")[:30],
)
def test_malformed_state_dicts_are_named_not_bare_errors(spoil, error, message):
    model_sd, opt_sd, names = spoil(*_dicts())
    with pytest.raises(error, match=message):
        interop.from_torch_state_dicts(model_sd, opt_sd, names)


def _sched_dicts(make):
    model, opt, _ = _run(steps=0)
    sched = make(opt)
    opt.step()
    sched.step()
    return model.state_dict(), opt.state_dict(), [n for n, _ in model.named_parameters()], sched


@pytest.mark.parametrize(
    "cls, saved, message",
    [
        (L.ExponentialLR, lambda o: L.StepLR(o, 3), r"ExponentialLR's: it has \['step_size'\]"),
        (L.StepLR, lambda o: L.ExponentialLR(o, 0.5), r"StepLR's: it lacks \['step_size'\]"),
        (L.StepLR, lambda o: L.CosineAnnealingLR(o, 5), r"lacks \['gamma', 'step_size'\]"),
    ],
    ids=["ExponentialLR given StepLR's", "StepLR given ExponentialLR's", "StepLR given cosine"],
)
def test_a_scheduler_state_dict_of_another_class_is_refused(cls, saved, message):
    model_sd, opt_sd, names, sched = _sched_dicts(saved)
    with pytest.raises(ValueError, match=message):
        interop.from_torch_state_dicts(
            model_sd, opt_sd, names, (cls, sched.state_dict()), horizon=10
        )
    # Its own class goes through.
    interop.from_torch_state_dicts(
        model_sd, opt_sd, names, (type(sched), sched.state_dict()), horizon=10
    )


def test_from_torch_params_do_not_share_memory_with_torch():
    model, opt, _ = _run()
    params, _, state = interop.from_torch(model, opt)
    kept = jax.tree.map(np.array, (params, state))
    _torch_steps(model, opt, _grad_stream(model, 1))  # in place, on torch's tensors
    jax.tree.map(np.testing.assert_array_equal, (params, state), kept)


# ---------------------------------------------------------- checkpoints with prefixes


@pytest.mark.parametrize("wrap, prefix", [
    (torch.nn.DataParallel, "module."),
    (torch.compile, "_orig_mod."),
], ids=["DataParallel", "torch.compile"])
def test_a_wrapped_models_checkpoint_loads_with_its_prefix_stripped(wrap, prefix):
    model, opt, _ = _run()
    wrapped = wrap(model)
    checkpoint = {"model": wrapped.state_dict(), "optimizer": opt.state_dict()}
    assert all(k.startswith(prefix) for k in checkpoint["model"])
    model_sd = dict(checkpoint["model"])
    torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(model_sd, prefix)
    names = [n for n, _ in model.named_parameters()]
    params, _, state = interop.from_torch_state_dicts(model_sd, checkpoint["optimizer"], names)
    expected_params, _, expected_state = interop.from_torch(model, opt)
    jax.tree.map(np.testing.assert_array_equal, (params, state), (expected_params, expected_state))
    # The wrapper itself works too: its names carry the prefix.
    assert sorted(interop.from_torch(wrapped, opt)[0]) == sorted(prefix + n for n in names)


# -------------------------------------------------------------- one copy of the run


def test_from_torch_holds_nothing_but_the_arrays_it_returns():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
    opt = torch.optim.RMSprop(model.parameters(), momentum=0.9, centered=True)
    _torch_steps(model, opt, _grad_stream(model, 1))
    interop.from_torch(model, opt)  # warm up: JAX's runtime and small ops
    gc.collect()
    live = {id(a) for a in jax.live_arrays()}
    tracemalloc.start()
    try:
        params, tx, state = interop.from_torch(model, opt)
        gc.collect()
        numpy_only = tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)
        snapshot = tracemalloc.take_snapshot().filter_traces([numpy_only])
    finally:
        tracemalloc.stop()
    returned = jax.tree.leaves((params, state))
    new = [a for a in jax.live_arrays() if id(a) not in live]
    # Every JAX array alive is one of the returned leaves: no replaced zeros, no copies.
    assert {id(a) for a in new} == {id(a) for a in returned}
    n_bytes = sum(a.nbytes for a in returned)
    assert n_bytes == 4 * 4 * sum(p.numel() for p in model.parameters()) + 4 + 4 * 8
    # And no numpy copy stays behind the JAX arrays (numpy's own allocations, traced).
    assert sum(stat.size for stat in snapshot.statistics("filename")) < n_bytes / 100


def test_the_migration_benchmark_runs_and_prints_both_directions():
    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "migration_memory.py"
    out = subprocess.run(
        [sys.executable, str(script), "--params", "20_000"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout.splitlines()
    assert out[0].split()[:3] == ["direction", "params", "JAX"]
    assert [line.split()[0] for line in out[1:]] == ["from_torch", "to_torch"]
    # 12 Linear(40, 40) layers: 19,680 parameters, four float32 arrays each.
    assert all(line.split()[1] == "19,680" for line in out[1:])
