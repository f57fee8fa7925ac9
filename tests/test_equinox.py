"""An equinox model trained with jrmsprop in equinox's own filter pattern equals the same
torch.nn model trained with torch.optim.RMSprop, in both APIs.

The pattern: ``opt.init(eqx.filter(model, eqx.is_array))``, gradients from
``eqx.filter_value_and_grad``, ``opt.update(grads, state, eqx.filter(model, eqx.is_array))``,
``eqx.apply_updates``. The filtered params hold ``None`` where the model holds no array
(activation functions, strings, ints, a frozen submodule): not a parameter, as in optax. A
``None`` gradient where the params hold an array is torch's "no gradient": that parameter is
skipped.
"""

import copy
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch.testing import assert_close

import jrmsprop

ROOT = Path(__file__).resolve().parents[1]
STEPS = 100
# Every state buffer in use: centered, momentum, and decay on all params. lr=1e-3: at 1e-2 this
# training is chaotic in float32 (measured: rounding differences between torch and XLA grow to
# 3e-4 in the weights by step 100, while float64 still agrees to 2e-13).
KWARGS = {"lr": 1e-3, "centered": True, "momentum": 0.9, "weight_decay": 0.01}
# float64: both sides compute the same formulas in double precision, so after 100 steps they
# agree far below assert_close's float64 defaults; float32: torch's default tolerances.
TOLERANCES = {"float64": {"rtol": 1e-10, "atol": 1e-12}, "float32": {}}
BUFFERS = ("square_avg", "grad_avg", "momentum_buffer")
DTYPES = {"float64": jnp.float64, "float32": jnp.float32}


def _data(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(dtype)
    return x, np.sin(x.sum(axis=1, keepdims=True)).astype(dtype)


def _mlp(dtype: str) -> eqx.nn.MLP:
    return eqx.nn.MLP(3, 1, 16, 2, activation=jnp.tanh, dtype=DTYPES[dtype], key=jax.random.key(0))


def _torch_linear(linear: eqx.nn.Linear) -> torch.nn.Linear:
    """A torch Linear holding a copy of ``linear``'s weights (both are (out, in))."""
    weight = torch.from_numpy(np.array(linear.weight))
    layer = torch.nn.Linear(linear.in_features, linear.out_features, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.from_numpy(np.array(linear.bias)))
    return layer


def _torch_mlp(mlp: eqx.nn.MLP) -> torch.nn.Sequential:
    """The same network in torch: Linear, tanh, Linear, tanh, Linear."""
    layers: list[torch.nn.Module] = []
    for linear in mlp.layers:
        layers += [_torch_linear(linear), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def _mse(model: Callable, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def _torch_train(net: torch.nn.Module, params, x, y, steps=STEPS, **kwargs):
    """``steps`` of torch.optim.RMSprop on ``params``; returns the optimizer and the losses."""
    opt = torch.optim.RMSprop(params, **kwargs)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.mean((net(tx) - ty) ** 2)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return opt, np.array(losses)


def _assert_leaves_match(ours, theirs: list[torch.Tensor], **tol) -> None:
    """The array leaves of ``ours``, in leaf order, equal ``theirs`` (torch's parameter order)."""
    leaves = jax.tree.leaves(eqx.filter(ours, eqx.is_array))
    for i, (leaf, tp) in enumerate(zip(leaves, theirs, strict=True)):
        assert_close(
            torch.from_numpy(np.array(leaf)),
            tp.detach(),
            msg=lambda m, i=i: f"leaf {i}: {m}",
            **tol,
        )


def _train_pure(model, x, y, steps=STEPS, **kwargs):
    """equinox's documented loop with jrmsprop.rmsprop under eqx.filter_jit."""
    opt = jrmsprop.rmsprop(**kwargs)
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def train_step(model, state, x, y):
        loss, grads = eqx.filter_value_and_grad(_mse)(model, x, y)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(steps):
        model, state, loss = train_step(model, state, x, y)
        losses.append(float(loss))
    return model, state, np.array(losses)


def _train_adapter(model, x, y, steps=STEPS, **kwargs):
    """FunctionalRMSprop over the partitioned arrays, stepped with the filtered gradients."""
    params, static = eqx.partition(model, eqx.is_array)
    opt = jrmsprop.FunctionalRMSprop(params, **kwargs)
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(_mse))
    losses = []
    for _ in range(steps):
        # An equinox module is immutable: each step rebinds param_group["params"].
        model = eqx.combine(opt.param_group["params"], static)
        loss, grads = value_and_grad(model, x, y)
        opt.step(eqx.filter(grads, eqx.is_array))
        losses.append(float(loss))
    return eqx.combine(opt.param_group["params"], static), opt, np.array(losses)


def _buffer_tolerances(dtype: str, net: torch.nn.Module, x, y) -> dict[str, dict]:
    """assert_close tolerances for each state buffer.

    float64: tight. float32: torch's defaults, with atol widened where torch's own float32
    error is larger: the same torch run in float64 from the same weights measures that error,
    ``own``. The momentum buffer needs it: it sums ``g / (sqrt(v - grad_avg**2) + eps)``, whose
    centered variance cancels digits (measured: torch float32 is up to 3.4e-5 from float64
    there, jrmsprop float32 up to 4.8e-5). The claim is that jrmsprop's float32 error is
    within twice torch's own; by the triangle inequality it is then within ``3 * own`` of torch
    float32, the atol used.
    """
    if dtype == "float64":
        return dict.fromkeys(BUFFERS, TOLERANCES["float64"])
    net32, net64 = copy.deepcopy(net), copy.deepcopy(net).double()
    opt32, _ = _torch_train(net32, net32.parameters(), x, y, **KWARGS)
    opt64, _ = _torch_train(
        net64, net64.parameters(), x.astype("float64"), y.astype("float64"), **KWARGS
    )
    tolerances = {}
    for name in BUFFERS:
        own = max(
            float(torch.max(torch.abs(opt32.state[p][name].double() - opt64.state[q][name])))
            for p, q in zip(net32.parameters(), net64.parameters())
        )
        tolerances[name] = {"rtol": 1.3e-6, "atol": max(1e-5, 3 * own)}
    return tolerances


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_filter_pattern_with_rmsprop_trains_like_torch(dtype, x64_if_wide):
    x, y = _data(dtype)
    model = _mlp(dtype)
    net = _torch_mlp(model)
    buffer_tol = _buffer_tolerances(dtype, net, x, y)
    model, state, losses = _train_pure(model, jnp.asarray(x), jnp.asarray(y), **KWARGS)
    torch_opt, torch_losses = _torch_train(net, net.parameters(), x, y, **KWARGS)

    tol = TOLERANCES[dtype]
    assert losses[-1] < 0.5 * losses[0]  # it trained
    assert_close(losses, torch_losses, **tol)
    _assert_leaves_match(model, list(net.parameters()), **tol)
    # The filtered params hold None for the activation functions: the state does too, and
    # every array parameter has torch's buffers and step.
    params = eqx.filter(model, eqx.is_array)
    assert jax.tree.structure(state.square_avg) == jax.tree.structure(params)
    assert state.grad_avg.activation is None and state.square_avg.final_activation is None
    for name in BUFFERS:
        buffers = jax.tree.leaves(getattr(state, name))
        torch_buffers = [torch_opt.state[p][name] for p in net.parameters()]
        _assert_leaves_match(buffers, torch_buffers, **buffer_tol[name])
    assert np.asarray(state.step).tolist() == [STEPS] * len(jax.tree.leaves(params))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_partitioned_model_with_functional_rmsprop_trains_like_torch(dtype, x64_if_wide):
    x, y = _data(dtype)
    model = _mlp(dtype)
    net = _torch_mlp(model)
    buffer_tol = _buffer_tolerances(dtype, net, x, y)
    model, opt, losses = _train_adapter(model, jnp.asarray(x), jnp.asarray(y), **KWARGS)
    torch_opt, torch_losses = _torch_train(net, net.parameters(), x, y, **KWARGS)

    tol = TOLERANCES[dtype]
    assert losses[-1] < 0.5 * losses[0]
    assert_close(losses, torch_losses, **tol)
    _assert_leaves_match(model, list(net.parameters()), **tol)
    # The adapter keys its state by position in jax.tree.leaves(params): torch's order here.
    assert sorted(opt.state) == list(range(len(list(net.parameters()))))
    for i, p in enumerate(net.parameters()):
        assert int(opt.state[i]["step"]) == STEPS
        for name in BUFFERS:
            assert_close(
                torch.from_numpy(np.array(opt.state[i][name])),
                torch_opt.state[p][name],
                **buffer_tol[name],
            )


def test_functional_rmsprop_rebinds_the_immutable_module_and_donates_its_arrays(x64):
    model = _mlp("float64")
    params = eqx.filter(model, eqx.is_array)
    opt = jrmsprop.FunctionalRMSprop(params, lr=1e-2)
    x, y = (jnp.asarray(a) for a in _data("float64"))
    grads = eqx.filter_grad(_mse)(model, x, y)
    opt.step(eqx.filter(grads, eqx.is_array))
    new = opt.param_group["params"]
    assert isinstance(new, eqx.nn.MLP) and new is not params
    assert jax.tree.structure(new) == jax.tree.structure(params)
    # The partitioned arrays are the model's own: the step donated them.
    assert model.layers[0].weight.is_deleted()
    assert not new.layers[0].weight.is_deleted()


class Regressor(eqx.Module):
    """An encoder MLP, a head, and fields that are not arrays (leaves of the pytree)."""

    encoder: eqx.nn.MLP
    head: eqx.nn.Linear
    activation: Callable
    name: str
    scale: int

    def __call__(self, x):
        return self.scale * self.head(self.activation(self.encoder(x)))


def _regressor() -> Regressor:
    key_encoder, key_head = jax.random.split(jax.random.key(1))
    encoder = eqx.nn.MLP(3, 8, 8, 1, activation=jnp.tanh, dtype=jnp.float64, key=key_encoder)
    head = eqx.nn.Linear(8, 1, dtype=jnp.float64, key=key_head)
    return Regressor(encoder, head, jax.nn.sigmoid, "regressor", 2)


class TorchRegressor(torch.nn.Module):
    def __init__(self, model: Regressor):
        super().__init__()
        self.encoder = _torch_mlp(model.encoder)
        self.head = _torch_linear(model.head)
        self.scale = model.scale

    def forward(self, x):
        return self.scale * self.head(torch.sigmoid(self.encoder(x)))


def _head_only(model: Regressor):
    """equinox's freezing recipe: a filter spec that is True on the head's arrays only."""
    spec = jax.tree.map(lambda _: False, model)
    return eqx.tree_at(lambda m: (m.head.weight, m.head.bias), spec, replace=(True, True))


def _arrays(module) -> list[np.ndarray]:
    """Copies of a module's arrays (the adapter's step donates the originals)."""
    return [np.array(leaf) for leaf in jax.tree.leaves(eqx.filter(module, eqx.is_array))]


def _assert_encoder_unchanged(model: Regressor, before: list[np.ndarray]) -> None:
    for old, new in zip(before, _arrays(model.encoder), strict=True):
        np.testing.assert_array_equal(new, old)  # bit for bit


def _split_mse(diff, static, x, y):
    return _mse(eqx.combine(diff, static), x, y)


def test_model_with_non_array_fields_trains_like_torch_in_both_apis(x64):
    x, y = _data("float64")
    jx, jy = jnp.asarray(x), jnp.asarray(y)
    net = TorchRegressor(_regressor())
    _, torch_losses = _torch_train(net, net.parameters(), x, y, **KWARGS)

    pure, state, losses = _train_pure(_regressor(), jx, jy, **KWARGS)
    adapted, _, adapter_losses = _train_adapter(_regressor(), jx, jy, **KWARGS)

    tol = TOLERANCES["float64"]
    for model, model_losses in ((pure, losses), (adapted, adapter_losses)):
        assert_close(model_losses, torch_losses, **tol)
        _assert_leaves_match(model, list(net.parameters()), **tol)
        assert (model.activation, model.name, model.scale) == (jax.nn.sigmoid, "regressor", 2)
    # The non-array fields are None in the filtered params, in the state too.
    assert (state.square_avg.activation, state.square_avg.name, state.square_avg.scale) == (
        None,
        None,
        None,
    )


def test_frozen_submodule_filtered_out_does_not_move_in_both_apis(x64):
    """Frozen by the filter spec: the params hold None there, so there is no parameter."""
    x, y = _data("float64")
    jx, jy = jnp.asarray(x), jnp.asarray(y)
    model = _regressor()
    spec = _head_only(model)
    encoder = _arrays(model.encoder)
    net = TorchRegressor(model)
    _, torch_losses = _torch_train(net, net.head.parameters(), x, y, **KWARGS)

    opt = jrmsprop.rmsprop(**KWARGS)
    state = opt.init(eqx.filter(model, spec))

    @eqx.filter_jit
    def train_step(model, state, x, y):
        diff, static = eqx.partition(model, spec)
        loss, grads = eqx.filter_value_and_grad(_split_mse)(diff, static, x, y)
        updates, state = opt.update(grads, state, diff)
        return eqx.apply_updates(model, updates), state, loss, updates

    pure = model
    for _ in range(STEPS):
        pure, state, _, updates = train_step(pure, state, jx, jy)
    assert updates.encoder.layers[0].weight is None  # as optax: no parameter, no update
    assert np.asarray(state.step).tolist() == [STEPS, STEPS]  # head weight and bias only

    diff, static = eqx.partition(model, spec)
    adapter = jrmsprop.FunctionalRMSprop(diff, **KWARGS)
    grad_fn = eqx.filter_jit(eqx.filter_grad(_split_mse))
    for _ in range(STEPS):
        adapter.step(grad_fn(adapter.param_group["params"], static, jx, jy))
    adapted = eqx.combine(adapter.param_group["params"], static)
    assert sorted(adapter.state) == [0, 1]

    tol = TOLERANCES["float64"]
    for trained in (pure, adapted):
        _assert_encoder_unchanged(trained, encoder)
        _assert_leaves_match(trained.head, list(net.head.parameters()), **tol)
    assert torch_losses[-1] < 0.5 * torch_losses[0]  # the head alone did learn


def test_frozen_submodule_without_gradient_is_skipped_as_torch_skips_it(x64):
    """Frozen by differentiating the head only, while the optimizer holds every array:
    a None gradient for an existing parameter, which torch skips (value, state and step)."""
    x, y = _data("float64")
    jx, jy = jnp.asarray(x), jnp.asarray(y)
    model = _regressor()
    spec = _head_only(model)
    encoder = _arrays(model.encoder)
    net = TorchRegressor(model)
    for p in net.encoder.parameters():
        p.requires_grad_(False)  # torch leaves .grad None: RMSprop skips them
    torch_opt, _ = _torch_train(net, net.parameters(), x, y, **KWARGS)

    opt = jrmsprop.rmsprop(**KWARGS)
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def train_step(model, state, x, y):
        diff, static = eqx.partition(model, spec)
        grads = eqx.filter_grad(_split_mse)(diff, static, x, y)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state

    pure = model
    for _ in range(STEPS):
        pure, state = train_step(pure, state, jx, jy)

    params, static = eqx.partition(model, eqx.is_array)
    adapter = jrmsprop.FunctionalRMSprop(params, **KWARGS)
    grad_fn = eqx.filter_jit(eqx.filter_grad(_split_mse))
    for _ in range(STEPS):
        current = eqx.combine(adapter.param_group["params"], static)
        diff, rest = eqx.partition(current, spec)
        adapter.step(eqx.filter(grad_fn(diff, rest, jx, jy), eqx.is_array))
    adapted = eqx.combine(adapter.param_group["params"], static)

    tol = TOLERANCES["float64"]
    for trained in (pure, adapted):
        _assert_encoder_unchanged(trained, encoder)
        _assert_leaves_match(trained, list(net.parameters()), **tol)
    n_encoder = len(encoder)
    # Leaf order: encoder arrays, then head weight and bias. torch has no state for the
    # encoder's parameters; jrmsprop's step stays 0 and square_avg zeros there.
    assert np.asarray(state.step).tolist() == [0] * n_encoder + [STEPS, STEPS]
    for leaf in jax.tree.leaves(state.square_avg.encoder):
        assert not np.any(np.asarray(leaf))
    assert sorted(adapter.state) == [n_encoder, n_encoder + 1]
    assert all(p not in torch_opt.state for p in net.encoder.parameters())


def test_rmsprop_gives_the_same_update_structure_as_optax_on_an_equinox_model(x64):
    model = _regressor()
    params = eqx.filter(model, eqx.is_array)
    x, y = (jnp.asarray(a) for a in _data("float64"))
    grads = eqx.filter_grad(_mse)(model, x, y)
    ours, _ = jrmsprop.rmsprop().update(grads, jrmsprop.rmsprop().init(params), params)
    theirs, _ = optax.rmsprop(1e-2).update(grads, optax.rmsprop(1e-2).init(params), params)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs) == jax.tree.structure(params)


def test_equinox_example_runs_and_agrees_with_torch_to_rounding():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "equinox_mlp.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    diff = re.search(r"jrmsprop vs torch .*: ([0-9.e+-]+)", result.stdout)
    rounding = re.search(r"rounding error .*: ([0-9.e+-]+)", result.stdout)
    assert diff and rounding, result.stdout
    assert float(diff.group(1)) <= 2 * float(rounding.group(1)) < 1e-5
    assert "verdict: the same trajectory" in result.stdout


def _docs_block(name: str) -> str:
    text = (ROOT / "docs" / "ecosystem.md").read_text()
    section = text[
        text.index(f"<!-- example: {name} -->") : text.index(f"<!-- end example: {name} -->")
    ]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL))


def test_docs_equinox_snippet_runs_and_trains():
    namespace: dict = {}
    # The docs are this repository's own text: running it is the point.
    exec(compile(_docs_block("equinox"), "docs/ecosystem.md equinox block", "exec"), namespace)  # noqa: S102
    x, y = namespace["x"], namespace["y"]
    untrained = namespace["eqx"].nn.MLP(2, 1, 32, 2, key=jax.random.key(0))
    for trained in (namespace["model"], namespace["adapted"]):
        assert float(_mse(trained, x, y)) < 0.5 * float(_mse(untrained, x, y))
