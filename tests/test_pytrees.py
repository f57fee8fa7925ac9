"""Every pytree shape a user brings runs in both APIs where optax.rmsprop runs it.

For each tree: the updates and the state have optax.rmsprop's structure on the same tree
(``None`` in params is an empty subtree: no parameter, update ``None``), and the numbers equal
torch.optim.RMSprop on the same arrays, in ``jax.tree.leaves`` order. A ``None`` gradient
where the params hold an array is torch's "no gradient": that parameter is skipped.
"""

import dataclasses
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch.testing import assert_close

import jrmsprop

STEPS = 20
# Every state buffer in use.
KWARGS = {"lr": 1e-2, "momentum": 0.9, "centered": True, "weight_decay": 0.01}
# float64 on both sides: the same formulas in double precision.
TOL = {"rtol": 1e-10, "atol": 1e-12}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Layer:
    """A registered dataclass: two array fields, an optional one, a static name."""

    w: jax.Array
    b: jax.Array
    gate: jax.Array | None
    name: str = dataclasses.field(metadata={"static": True})


@jax.tree_util.register_pytree_node_class
class Pair:
    """A hand-registered node whose second child may be ``None``."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def tree_flatten(self):
        return (self.first, self.second), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


@flax.struct.dataclass
class FlaxLayer:
    kernel: jax.Array
    bias: jax.Array | None
    activation: str = flax.struct.field(pytree_node=False)


def _random(seed: int = 0) -> Callable[..., jax.Array]:
    rng = np.random.default_rng(seed)
    return lambda *shape: jnp.asarray(rng.standard_normal(shape))


# Each builds the same params from the same random numbers on every call (fresh arrays: the
# adapter donates the ones it is given).
TREES: dict[str, Callable] = {
    "none_field": lambda a: {"w": a(3, 4), "b": None},
    "empty_containers": lambda a: {
        "w": a(3),
        "dict": {},
        "list": [],
        "tuple": (),
        "nested": [{"v": a(2)}, (), {"x": None}],
    },
    "masked_node": lambda a: {"w": a(3), "frozen": optax.MaskedNode(), "b": a(2)},
    "registered_dataclass": lambda a: Layer(w=a(4, 3), b=a(3), gate=None, name="layer"),
    "pytree_node_class": lambda a: [Pair(a(2, 2), None), Pair(a(3), a(1))],
    "flax_struct_dataclass": lambda a: {
        "layer": FlaxLayer(kernel=a(3, 2), bias=None, activation="tanh"),
        "head": FlaxLayer(kernel=a(2, 1), bias=a(1), activation="identity"),
    },
}


def _params(tree: str) -> object:
    return TREES[tree](_random())


def _targets(params) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_normal(np.shape(leaf)) for leaf in jax.tree.leaves(params)]


def _loss(params, targets) -> jax.Array:
    """A loss of every array leaf; jax.grad gives ``None`` wherever params hold ``None``."""
    leaves = jax.tree.leaves(params)
    return sum(jnp.sum((jnp.tanh(p) - t) ** 2) for p, t in zip(leaves, targets, strict=True))


def _torch_run(params, targets, steps=STEPS, skip=(), param_groups=None, **kwargs):
    """torch.optim.RMSprop on the array leaves of ``params`` (leaf order), with the same loss.

    ``skip``: steps at which leaf ``i`` gets no gradient, as pairs ``(step, i)``.
    ``param_groups``: lists of leaf indices with their own kwargs, instead of one group.
    """
    tensors = [torch.tensor(np.array(leaf), requires_grad=True) for leaf in jax.tree.leaves(params)]
    if param_groups is None:
        opt = torch.optim.RMSprop(tensors, **kwargs)
    else:
        opt = torch.optim.RMSprop(
            [{"params": [tensors[i] for i in idx], **kw} for idx, kw in param_groups], **kwargs
        )
    for k in range(steps):
        opt.zero_grad()
        loss = sum(
            torch.sum((torch.tanh(p) - torch.tensor(t)) ** 2) for p, t in zip(tensors, targets)
        )
        loss.backward()
        for step, i in skip:
            if step == k:
                tensors[i].grad = None
        opt.step()
    return tensors, opt


def _beside_optax(ours, theirs, targets):
    """A jitted step of jrmsprop and optax on the same gradients."""

    @jax.jit
    def step(params, state, optax_state):
        grads = jax.grad(_loss)(params, targets)
        updates, state = ours.update(grads, state, params)
        optax_updates, optax_state = theirs.update(grads, optax_state, params)
        return optax.apply_updates(params, updates), state, optax_state, updates, optax_updates

    return step


def _assert_numbers(params, tensors, indices=None) -> None:
    leaves = jax.tree.leaves(params)
    for i in range(len(leaves)) if indices is None else indices:
        assert_close(
            torch.from_numpy(np.array(leaves[i])),
            tensors[i].detach(),
            msg=lambda m, i=i: f"leaf {i}: {m}",
            **TOL,
        )


@pytest.mark.parametrize("tree", sorted(TREES))
def test_rmsprop_keeps_optax_structure_and_matches_torch(tree, x64):
    params = _params(tree)
    targets = _targets(params)
    ours, theirs = jrmsprop.rmsprop(**KWARGS), optax.rmsprop(1e-2, momentum=0.9, centered=True)
    state, optax_state = ours.init(params), theirs.init(params)
    # optax's second moment (nu) sits on the same tree as ours: None stays None, an empty
    # container stays empty, a MaskedNode stays a MaskedNode, custom nodes are kept.
    assert jax.tree.structure(state.square_avg) == jax.tree.structure(optax_state[0].nu)
    assert jax.tree.structure(state.square_avg) == jax.tree.structure(params)

    step = _beside_optax(ours, theirs, targets)

    for _ in range(STEPS):
        params, state, optax_state, updates, optax_updates = step(params, state, optax_state)
    assert jax.tree.structure(updates) == jax.tree.structure(optax_updates)
    assert jax.tree.structure(params) == jax.tree.structure(_params(tree))
    for buffer in (state.square_avg, state.grad_avg, state.momentum_buffer):
        assert jax.tree.structure(buffer) == jax.tree.structure(params)
    n = len(jax.tree.leaves(params))
    assert np.asarray(state.step).tolist() == [STEPS] * n

    tensors, torch_opt = _torch_run(_params(tree), targets, **KWARGS)
    _assert_numbers(params, tensors)
    for leaf, tensor in zip(jax.tree.leaves(state.square_avg), tensors):
        assert_close(torch.from_numpy(np.array(leaf)), torch_opt.state[tensor]["square_avg"], **TOL)


@pytest.mark.parametrize("tree", sorted(TREES))
def test_functional_rmsprop_keeps_the_structure_and_matches_torch(tree, x64):
    initial = _params(tree)
    targets = _targets(initial)
    opt = jrmsprop.FunctionalRMSprop(_params(tree), **KWARGS)
    grad = jax.jit(jax.grad(_loss))
    for _ in range(STEPS):
        opt.step(grad(opt.param_group["params"], targets))
    params = opt.param_group["params"]
    # As optax.apply_updates would give it back: same nodes, None and empty containers kept.
    assert jax.tree.structure(params) == jax.tree.structure(initial)
    assert type(params) is type(initial)
    n = len(jax.tree.leaves(initial))
    assert sorted(opt.state) == list(range(n))
    assert [int(opt.state[i]["step"]) for i in range(n)] == [STEPS] * n

    tensors, torch_opt = _torch_run(initial, targets, **KWARGS)
    _assert_numbers(params, tensors)
    for i, tensor in enumerate(tensors):
        for name in ("square_avg", "momentum_buffer", "grad_avg"):
            assert_close(
                torch.from_numpy(np.array(opt.state[i][name])), torch_opt.state[tensor][name], **TOL
            )


def test_none_field_gradient_is_none_as_jax_grad_gives_it():
    """The issue's case: ``{"w": ..., "b": None}`` with ``jax.grad``; optax's result kept."""
    params = {"w": jnp.ones(3), "b": None}
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    assert grads["b"] is None
    opt = jrmsprop.rmsprop(lr=0.1)
    updates, state = opt.update(grads, opt.init(params), params)
    optax_updates, _ = optax.rmsprop(0.1).update(grads, optax.rmsprop(0.1).init(params), params)
    assert updates["b"] is None and optax_updates["b"] is None
    assert state.square_avg["b"] is None
    assert optax.apply_updates(params, updates)["b"] is None


def test_params_with_no_arrays_give_optax_empty_updates_and_torch_empty_list_error():
    params = {"a": None, "b": {}, "c": [(), None]}
    opt = jrmsprop.rmsprop()
    updates, state = opt.update(params, opt.init(params), params)
    optax_updates, _ = optax.rmsprop(1e-2).update(params, optax.rmsprop(1e-2).init(params), params)
    assert jax.tree.structure(updates) == jax.tree.structure(optax_updates)
    assert np.asarray(state.step).shape == (0,)
    # The adapter keeps the rule of torch's scripted class for a parameter list with nothing in it.
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        jrmsprop.FunctionalRMSprop(params)


def test_masked_rmsprop_keeps_optax_structure_and_matches_torch_on_the_masked_in_leaves(x64):
    """optax.masked hands the inner transformation a tree with MaskedNode where the mask is
    False; masked-out gradients pass through unchanged, as with optax.rmsprop inside."""
    mask = {"w": True, "b": False, "v": True}

    def make():
        a = _random()
        return {"w": a(3, 2), "b": a(2), "v": a(4)}

    params = make()
    targets = _targets(params)
    ours = optax.masked(jrmsprop.rmsprop(**KWARGS), mask)
    theirs = optax.masked(optax.rmsprop(1e-2, momentum=0.9, centered=True), mask)
    state, optax_state = ours.init(params), theirs.init(params)
    square_avg = state.inner_state.square_avg
    assert isinstance(square_avg["b"], optax.MaskedNode)
    assert jax.tree.structure(square_avg) == jax.tree.structure(optax_state.inner_state[0].nu)

    step = _beside_optax(ours, theirs, targets)

    for _ in range(STEPS):
        params, state, optax_state, updates, optax_updates = step(params, state, optax_state)
        np.testing.assert_array_equal(updates["b"], optax_updates["b"])  # passed through
    assert jax.tree.structure(updates) == jax.tree.structure(optax_updates)
    assert np.asarray(state.inner_state.step).tolist() == [STEPS, STEPS]  # v and w

    # Leaf order: b, v, w. torch steps v and w; b moved by its raw gradients.
    tensors, _ = _torch_run(make(), targets, skip=[(k, 0) for k in range(STEPS)], **KWARGS)
    _assert_numbers(params, tensors, indices=[1, 2])


def test_multi_transform_with_rmsprop_equals_torch_param_groups(x64):
    # The labels follow the params' tree, None included.
    labels = {"w": "fast", "b": "slow", "frozen": "frozen", "none": None}

    def make():
        a = _random()
        return {"w": a(3, 2), "b": a(2), "frozen": a(4), "none": None}

    def multi(rms):
        return optax.multi_transform(
            {"fast": rms(1e-2), "slow": rms(1e-3), "frozen": optax.set_to_zero()}, labels
        )

    params = make()
    targets = _targets(params)
    ours = multi(lambda lr: jrmsprop.rmsprop(lr=lr, momentum=0.9))
    theirs = multi(lambda lr: optax.rmsprop(lr, momentum=0.9))
    state, optax_state = ours.init(params), theirs.init(params)
    for label in ("fast", "slow"):
        square_avg = state.inner_states[label].inner_state.square_avg
        nu = optax_state.inner_states[label].inner_state[0].nu
        assert jax.tree.structure(square_avg) == jax.tree.structure(nu)

    step = _beside_optax(ours, theirs, targets)

    for _ in range(STEPS):
        params, state, optax_state, updates, optax_updates = step(params, state, optax_state)
    assert jax.tree.structure(updates) == jax.tree.structure(optax_updates)
    assert updates["none"] is None

    # Leaf order: b, frozen, w. One torch param group per label; frozen not in the optimizer.
    initial = make()
    tensors, _ = _torch_run(
        initial, targets, param_groups=[([2], {"lr": 1e-2}), ([0], {"lr": 1e-3})], momentum=0.9
    )
    _assert_numbers(params, tensors, indices=[0, 2])
    np.testing.assert_array_equal(params["frozen"], initial["frozen"])


def _skip_schedule():
    """(step, leaf) pairs without a gradient: leaf 0 ("b") at steps 3..6, leaf 1 ("w") at 10."""
    return [(k, 0) for k in range(3, 7)] + [(10, 1)]


def _skipping_grads(params, targets, k):
    grads = jax.grad(_loss)(params, targets)
    if 3 <= k < 7:
        grads["b"] = None
    if k == 10:
        grads["w"] = None
    return grads


def _skip_params():
    a = _random()
    return {"w": a(3, 2), "b": a(2), "none": None}


def test_none_gradient_for_an_array_parameter_skips_it_in_rmsprop(x64):
    params = _skip_params()
    targets = _targets(params)
    opt = jrmsprop.rmsprop(**KWARGS)
    state = opt.init(params)
    update = jax.jit(opt.update)
    for k in range(STEPS):
        grads = _skipping_grads(params, targets, k)
        before_b, before_sq, before_step = params["b"], state.square_avg["b"], state.step
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        assert updates["none"] is None
        if grads["b"] is None:  # torch's skip: value, state and step as they were
            np.testing.assert_array_equal(params["b"], before_b)
            np.testing.assert_array_equal(state.square_avg["b"], before_sq)
            assert int(state.step[0]) == int(before_step[0])
            assert int(state.step[1]) == int(before_step[1]) + 1
    assert np.asarray(state.step).tolist() == [STEPS - 4, STEPS - 1]  # b, w

    tensors, torch_opt = _torch_run(_skip_params(), targets, skip=_skip_schedule(), **KWARGS)
    _assert_numbers(params, tensors)
    for i, name in enumerate(("b", "w")):
        assert int(state.step[i]) == int(torch_opt.state[tensors[i]]["step"])
        for buffer in ("square_avg", "momentum_buffer", "grad_avg"):
            assert_close(
                torch.from_numpy(np.array(getattr(state, buffer)[name])),
                torch_opt.state[tensors[i]][buffer],
                **TOL,
            )


def test_none_gradient_for_an_array_parameter_skips_it_in_functional_rmsprop(x64):
    initial = _skip_params()
    targets = _targets(initial)
    opt = jrmsprop.FunctionalRMSprop(_skip_params(), **KWARGS)
    for k in range(STEPS):
        params = opt.param_group["params"]
        grads = _skipping_grads(params, targets, k)
        before_b = np.array(params["b"])
        before = {key: np.array(v) for key, v in opt.state.get(0, {}).items()}
        opt.step(grads)
        if grads["b"] is None:
            np.testing.assert_array_equal(opt.param_group["params"]["b"], before_b)
            for key, value in before.items():
                np.testing.assert_array_equal(opt.state[0][key], value)
    assert opt.param_group["params"]["none"] is None
    assert [int(opt.state[i]["step"]) for i in (0, 1)] == [STEPS - 4, STEPS - 1]

    tensors, torch_opt = _torch_run(initial, targets, skip=_skip_schedule(), **KWARGS)
    _assert_numbers(opt.param_group["params"], tensors)
    for i, tensor in enumerate(tensors):
        for name in ("square_avg", "momentum_buffer", "grad_avg"):
            assert_close(
                torch.from_numpy(np.array(opt.state[i][name])), torch_opt.state[tensor][name], **TOL
            )
