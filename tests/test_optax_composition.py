"""jrmsprop inside optax's combinators equals the torch idiom each one stands for.

Params are a flat dict named as a torch module names its parameters; the same
names index torch's parameters, so every comparison is by name.
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch.testing import assert_close
from torch_reference import jitted_step

import jrmsprop

SHAPES = {
    "body.weight": (8, 4),
    "body.bias": (8,),
    "norm.weight": (8,),
    "norm.bias": (8,),
    "head.weight": (2, 8),
    "head.bias": (2,),
}
STEPS = 100


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}


def _grads(dtype, steps=STEPS, seed=1, scales=None):
    """A gradient stream; step ``t`` is multiplied by ``scales[t]`` when given."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        scale = 1.0 if scales is None else scales[t]
        out.append({n: (scale * rng.standard_normal(s)).astype(dtype) for n, s in SHAPES.items()})
    return out


def _torch_params(params):
    return {n: torch.nn.Parameter(torch.from_numpy(p.copy())) for n, p in params.items()}


def _set_grads(torch_params, grads):
    for name, p in torch_params.items():
        p.grad = torch.from_numpy(grads[name].copy())


def _assert_matches_torch(params, rms_state, torch_params, torch_opt, names=None):
    """Params, and every buffer of ``rms_state`` (an RMSpropState over ``names``)."""
    names = sorted(torch_params) if names is None else names
    # state.step has one entry per leaf of the state's params, in leaf order.
    leaf_keys = [
        jax.tree_util.keystr(path)
        for path, _ in jax.tree_util.tree_flatten_with_path(rms_state.square_avg)[0]
    ]
    for name in names:
        assert_close(
            np.array(params[name]),
            torch_params[name].detach().numpy(),
            msg=lambda m, n=name: f"param {n}: {m}",
        )
        torch_state = torch_opt.state[torch_params[name]]
        assert int(rms_state.step[leaf_keys.index(f"[{name!r}]")]) == int(torch_state["step"]), name
        for buffer in ("square_avg", "momentum_buffer", "grad_avg"):
            ours = getattr(rms_state, buffer)
            if ours is None:
                assert buffer not in torch_state or buffer == "momentum_buffer"
                continue
            assert_close(
                np.array(ours[name]),
                torch_state[buffer].numpy(),
                msg=lambda m, n=name, b=buffer: f"{b} of {n}: {m}",
            )


def _train(opt, params, grads):
    """Runs ``opt`` over ``grads`` under one jit; returns params, state, #compiles."""
    params = jax.tree.map(jnp.asarray, params)
    state = opt.init(params)
    step = jitted_step(opt)
    for g in grads:
        params, state = step(params, state, g)
    return params, state, step._cache_size()


# -- clip_by_global_norm -----------------------------------------------------
#
# torch.nn.utils.clip_grad_norm_ multiplies by min(max_norm / (norm + 1e-6), 1);
# optax.clip_by_global_norm multiplies by max_norm / norm when norm >= max_norm
# and leaves the gradient alone otherwise. Below the threshold both are exact
# identities; above it they differ by the factor norm / (norm + 1e-6), a
# relative 1e-6 / norm. With max_norm = 100 that is at most 1e-8, under the
# float64 default tolerance, so the trajectories must agree at torch's defaults.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_by_global_norm_chain_matches_torch_clip_grad_norm(dtype, x64_if_wide):
    max_norm = 100.0
    # Gradient norms from ~40 (not clipped) to ~4000 (clipped hard).
    scales = np.geomspace(4.0, 400.0, STEPS)[np.random.default_rng(2).permutation(STEPS)]
    grads = _grads(dtype, scales=scales)
    norms = [
        np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in s.values())) for s in grads
    ]
    assert min(norms) < max_norm < max(norms)  # both regimes are exercised

    params0 = _params(dtype)
    opt = optax.chain(optax.clip_by_global_norm(max_norm), jrmsprop.rmsprop(momentum=0.5))
    params, state, _ = _train(opt, params0, grads)

    torch_params = _torch_params(params0)
    torch_opt = torch.optim.RMSprop(torch_params.values(), momentum=0.5)
    for g in grads:
        _set_grads(torch_params, g)
        torch.nn.utils.clip_grad_norm_(torch_params.values(), max_norm)
        torch_opt.step()
    _assert_matches_torch(params, state[1], torch_params, torch_opt)


def test_clipping_formulas_differ_by_the_documented_factor(x64):
    """Near the threshold the difference is visible; it is exactly norm/(norm+1e-6)."""
    max_norm = 1.0
    grads = {n: g * 0.3 for n, g in _grads(np.float64, steps=1)[0].items()}
    norm = float(optax.tree.norm(grads))
    assert 1.0 < norm < 10.0

    ours, _ = optax.clip_by_global_norm(max_norm).update(
        jax.tree.map(jnp.asarray, grads), optax.EmptyState()
    )
    torch_params = _torch_params(_params(np.float64))
    _set_grads(torch_params, grads)
    torch.nn.utils.clip_grad_norm_(torch_params.values(), max_norm)
    torch_grads = {n: p.grad for n, p in torch_params.items()}
    for name in grads:
        # Not equal at the default tolerance: the 1e-6 is visible here.
        with pytest.raises(AssertionError):
            assert_close(np.array(ours[name]), torch_grads[name].numpy(), rtol=1e-9, atol=0)
        assert_close(
            np.array(ours[name]) * (norm / (norm + 1e-6)),
            torch_grads[name].numpy(),
            rtol=1e-12,
            atol=0,
        )


# -- inject_hyperparams --------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inject_hyperparams_changes_match_torch_param_groups_without_recompiling(
    dtype, x64_if_wide
):
    params0, grads = _params(dtype), _grads(dtype)
    opt = optax.inject_hyperparams(jrmsprop.rmsprop, static_args=("centered", "maximize"))(
        lr=1e-2, momentum=0.9, weight_decay=0.01, centered=True
    )
    params = jax.tree.map(jnp.asarray, params0)
    state = opt.init(params)
    step = jitted_step(opt)

    torch_params = _torch_params(params0)
    torch_opt = torch.optim.RMSprop(
        torch_params.values(), lr=1e-2, momentum=0.9, weight_decay=0.01, centered=True
    )
    for t, g in enumerate(grads):
        # A hand-written schedule, as torch users write it: decay lr every step,
        # drop momentum halfway.
        lr = 1e-2 * 0.97**t
        momentum = 0.9 if t < STEPS // 2 else 0.3
        for name, value in (("lr", lr), ("momentum", momentum)):
            state.hyperparams[name] = jnp.asarray(value, state.hyperparams[name].dtype)
            torch_opt.param_groups[0][name] = value
        params, state = step(params, state, g)
        _set_grads(torch_params, g)
        torch_opt.step()

    assert step._cache_size() == 1  # new values, same compiled step
    _assert_matches_torch(params, state.inner_state, torch_params, torch_opt)


# -- multi_transform as param groups -------------------------------------------


def _label(name):
    if name.startswith("head.weight"):
        return "head"
    return "no_decay" if name.endswith(".bias") or name.startswith("norm.") else "decay"


GROUPS = {  # label -> torch param-group options == jrmsprop.rmsprop kwargs
    "decay": {"lr": 1e-2, "weight_decay": 0.1, "momentum": 0.9},
    "no_decay": {"lr": 1e-2, "weight_decay": 0.0, "momentum": 0.9},
    "head": {"lr": 1e-1, "weight_decay": 0.1, "centered": True},
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multi_transform_equals_torch_param_groups(dtype, x64_if_wide):
    params0, grads = _params(dtype), _grads(dtype)
    labels = {name: _label(name) for name in SHAPES}
    assert set(labels.values()) == set(GROUPS)
    opt = optax.multi_transform(
        {label: jrmsprop.rmsprop(**kw) for label, kw in GROUPS.items()}, labels
    )
    params, state, _ = _train(opt, params0, grads)

    torch_params = _torch_params(params0)
    torch_opt = torch.optim.RMSprop(
        [
            {"params": [p for n, p in torch_params.items() if labels[n] == label], **kw}
            for label, kw in GROUPS.items()
        ]
    )
    for g in grads:
        _set_grads(torch_params, g)
        torch_opt.step()

    for label in GROUPS:
        # multi_transform hands each inner transformation the full tree with the
        # other labels masked out; the names of this label are the ones stepped.
        names = [n for n in SHAPES if labels[n] == label]
        inner = state.inner_states[label].inner_state
        _assert_matches_torch(params, inner, torch_params, torch_opt, names)
    # No decay on biases and norms really means an unchanged-by-decay path:
    # the same run with decay everywhere ends elsewhere.
    decayed, _, _ = _train(
        jrmsprop.rmsprop(lr=1e-2, weight_decay=0.1, momentum=0.9), params0, grads
    )
    assert not np.allclose(decayed["norm.weight"], params["norm.weight"])


# -- MultiSteps gradient accumulation ------------------------------------------


def test_multisteps_equals_torch_gradient_accumulation():
    k = 4
    dtype = np.float32
    params0, grads = _params(dtype), _grads(dtype)
    opt = optax.MultiSteps(jrmsprop.rmsprop(momentum=0.9, centered=True), every_k_schedule=k)
    params = jax.tree.map(jnp.asarray, params0)
    state = opt.init(params)
    step = jitted_step(opt)

    torch_params = _torch_params(params0)
    torch_opt = torch.optim.RMSprop(torch_params.values(), momentum=0.9, centered=True)
    for p in torch_params.values():
        p.grad = torch.zeros_like(p)
    for t, g in enumerate(grads):
        before = params
        params, state = step(params, state, g)
        # torch: (loss / k).backward() adds g / k into .grad; step every k.
        for name, p in torch_params.items():
            p.grad.add_(torch.from_numpy(g[name]) / k)
        if (t + 1) % k == 0:
            torch_opt.step()
            torch_opt.zero_grad(set_to_none=False)
        else:
            for name in SHAPES:  # between emits the params do not move, bit for bit
                np.testing.assert_array_equal(params[name], before[name])
    assert int(state.inner_opt_state.count) == STEPS // k
    _assert_matches_torch(params, state.inner_opt_state, torch_params, torch_opt)


# -- apply_if_finite -----------------------------------------------------------


def test_apply_if_finite_skips_a_nan_step_with_params_and_state_intact():
    dtype = np.float32
    params0, grads = _params(dtype), _grads(dtype)
    bad_steps = {30: np.nan, 60: np.inf}
    for t, value in bad_steps.items():
        grads[t]["body.weight"][1, 2] = value
    opt = optax.apply_if_finite(
        jrmsprop.rmsprop(momentum=0.9, centered=True), max_consecutive_errors=3
    )
    params = jax.tree.map(jnp.asarray, params0)
    state = opt.init(params)
    step = jitted_step(opt)

    torch_params = _torch_params(params0)
    torch_opt = torch.optim.RMSprop(torch_params.values(), momentum=0.9, centered=True)
    for t, g in enumerate(grads):
        before_params, before_state = params, state
        params, state = step(params, state, g)
        if t in bad_steps:
            assert not bool(state.last_finite)
            assert int(state.notfinite_count) == 1
            for a, b in zip(
                jax.tree.leaves((before_params, before_state.inner_state)),
                jax.tree.leaves((params, state.inner_state)),
            ):
                np.testing.assert_array_equal(a, b)  # bit for bit, NaN nowhere
            continue  # torch: the usual guard, `if torch.isfinite(loss): opt.step()`
        _set_grads(torch_params, g)
        torch_opt.step()

    assert int(state.total_notfinite) == len(bad_steps)
    _assert_matches_torch(params, state.inner_state, torch_params, torch_opt)


def test_docs_optax_block_runs():
    """The ecosystem page's optax snippet is real code, not prose."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "ecosystem.md").read_text()
    block = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)[0]
    namespace = {}
    exec(compile(block, "docs/ecosystem.md block 0", "exec"), namespace)  # noqa: S102
    params = {name: jnp.ones(shape) for name, shape in SHAPES.items() if name != "norm.bias"}
    tx = namespace["tx"]  # the last transformation the block built initializes and steps
    tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)


# -- optax's extra-arguments protocol ----------------------------------------


def test_update_takes_optax_extra_args_directly():
    """GradientTransformationExtraArgs: extra keyword arguments are accepted and ignored."""
    opt = jrmsprop.rmsprop(lr=0.1)
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([0.5, -1.0, 2.0])}
    plain, _ = opt.update(grads, opt.init(params), params)
    extra, _ = opt.update(grads, opt.init(params), params, value=jnp.asarray(3.0), foo=1)
    np.testing.assert_array_equal(plain["w"], extra["w"])


def test_chain_with_reduce_on_plateau_reads_the_value():
    """reduce_on_plateau needs ``value``: the chain passes it through jrmsprop to it."""
    opt = optax.chain(
        jrmsprop.rmsprop(lr=1.0),
        optax.contrib.reduce_on_plateau(factor=0.5, patience=0, accumulation_size=1),
    )
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    grads = {"w": jnp.ones(3)}
    update = jax.jit(opt.update)
    for _ in range(4):  # the loss never improves: the plateau lowers the scale
        updates, state = update(grads, state, params, value=jnp.asarray(1.0))
    scale = float(state[1].scale)
    assert scale < 1.0
    ref = jrmsprop.rmsprop(lr=1.0)
    ref_state = ref.init(params)
    for _ in range(4):
        ref_updates, ref_state = ref.update(grads, ref_state, params)
    np.testing.assert_allclose(updates["w"], scale * ref_updates["w"], rtol=1e-6)


def test_optimistix_minimise_runs_with_jrmsprop():
    """optimistix's OptaxMinimiser calls update(..., value=..., **): it converges."""
    optx = pytest.importorskip("optimistix")

    def loss(y, args):
        return jnp.sum((y - jnp.array([1.0, -2.0, 3.0])) ** 2)

    solver = optx.OptaxMinimiser(jrmsprop.rmsprop(lr=1e-2), rtol=1e-6, atol=1e-6)
    solution = optx.minimise(loss, solver, jnp.zeros(3), max_steps=5000, throw=False)
    np.testing.assert_allclose(solution.value, [1.0, -2.0, 3.0], atol=1e-2)


def test_masked_multi_transform_and_multisteps_see_one_step_entry_per_stepped_leaf():
    """optax.masked hands rmsprop the masked tree: MaskedNodes are no parameter, no step."""
    params = {"a": jnp.ones(2), "b": jnp.ones(3), "c": jnp.ones(())}
    mask = {"a": True, "b": False, "c": True}
    opt = optax.masked(jrmsprop.rmsprop(lr=0.1), mask)
    state = opt.init(params)
    assert state.inner_state.step.shape == (2,)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(opt.update)(grads, state, params)
    np.testing.assert_array_equal(state.inner_state.step, [1, 1])
    np.testing.assert_array_equal(updates["b"], grads["b"])  # passed through unmasked

    multi = optax.multi_transform(
        {"x": jrmsprop.rmsprop(lr=0.1), "y": jrmsprop.rmsprop(lr=0.2)},
        {"a": "x", "b": "y", "c": "x"},
    )
    mstate = multi.init(params)
    _, mstate = multi.update(grads, mstate, params)
    assert mstate.inner_states["x"].inner_state.step.tolist() == [1, 1]
    assert mstate.inner_states["y"].inner_state.step.tolist() == [1]

    acc = optax.MultiSteps(jrmsprop.rmsprop(lr=0.1), every_k_schedule=3)
    astate = acc.init(params)
    for _ in range(7):
        _, astate = acc.update(grads, astate, params)
    np.testing.assert_array_equal(astate.inner_opt_state.step, [2, 2, 2])
