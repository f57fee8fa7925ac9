"""torch's optimizer state dict by position, both ways, checked.

torch numbers its parameters in the order they were given to the optimizer
(``model.parameters()`` order for ``RMSprop(model.parameters())``); here
parameter ``i`` is ``jax.tree.leaves(params)[i]``. Build the JAX params as a
list (or any pytree whose leaves come in that order), e.g.
``[jnp.array(p.detach().numpy()) for p in model.parameters()]`` (``jnp.array``
copies: ``jnp.asarray`` may share memory with the torch tensor, which torch's
next in-place step would then change under JAX's feet). A dict of params
flattens in sorted key order, which is usually NOT torch's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jrmsprop.interop._torch import _dtype_name, _import_torch, _number, _to_numpy, _to_tensor
from jrmsprop.transform import RMSpropState
from jrmsprop.validation import (
    check_hyperparams,
    check_state_entry,
    path_str,
    state_dict_parts,
    step_count,
)

# jrmsprop.rmsprop's keyword arguments, with its defaults.
_DEFAULTS = {
    "lr": 1e-2,
    "alpha": 0.99,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "momentum": 0.0,
    "centered": False,
    "maximize": False,
}
_FLOAT_KEYS = ("lr", "alpha", "eps", "weight_decay", "momentum")


def _single_group(state_dict: Mapping) -> Mapping:
    groups = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
    if isinstance(groups, (list, tuple)) and len(groups) > 1:
        raise ValueError(
            f"from_torch_state_dict: the torch state has {len(groups)} param_groups; "
            "one is supported. Convert each group on its own (with the params of that "
            "group) and combine them with optax.multi_transform."
        )
    _, group = state_dict_parts(state_dict, "from_torch_state_dict")
    if "centered" not in group:
        raise ValueError(
            "from_torch_state_dict: the param group has no 'centered' "
            f"(its keys: {sorted(map(str, group))}): not torch.optim.RMSprop's state"
        )
    return group


def _group_hyperparams(group: Mapping) -> dict:
    """A torch RMSprop param group's hyperparameters as :func:`jrmsprop.rmsprop`'s kwargs."""
    hyperparams = {key: _number(group[key]) for key in _FLOAT_KEYS}
    hyperparams["centered"] = bool(group["centered"])
    hyperparams["maximize"] = bool(group.get("maximize", False))
    check_hyperparams(**hyperparams)
    return hyperparams


def _buffer(entry: Mapping, key: str, leaf: jax.Array, who: str, where: str) -> jax.Array:
    """torch's ``entry[key]`` for ``leaf``: its shape, its dtype or one it holds losslessly.

    A lower-precision buffer (float32 for float64 params, bfloat16 for
    float32) is upcast exactly, as ``load_state_dict`` casts; a wider one, or
    one of the other kind (real for complex), would lose information: refused.
    """
    if isinstance(entry[key], (bool, int, float, complex)):
        raise TypeError(
            f"{who}: torch {key} at {where} is a Python {type(entry[key]).__name__}, not a "
            f"tensor: a state buffer is a tensor of the parameter's shape {tuple(leaf.shape)}"
        )
    value = _to_numpy(entry[key])  # a view: copied once below, where JAX takes it
    if tuple(value.shape) != tuple(leaf.shape):
        raise ValueError(
            f"{who}: shape mismatch at {where}: torch {key} has shape {tuple(value.shape)}, "
            f"the JAX leaf has shape {tuple(leaf.shape)}"
        )
    dtype = jnp.dtype(value.dtype)
    if dtype != leaf.dtype:
        lossless = jnp.iscomplexobj(value) == jnp.iscomplexobj(leaf) and (
            jnp.promote_types(dtype, leaf.dtype) == leaf.dtype
        )
        if not lossless:
            raise ValueError(
                f"{who}: dtype mismatch at {where}: torch {key} is {_dtype_name(entry[key])}, the "
                f"JAX leaf is {leaf.dtype.name}; a torch state is imported into params of "
                "its own dtype or of a wider one of the same kind (float32 into float64), "
                "never narrowed: build the params in the checkpoint's dtype"
            )
    # jnp.array copies (torch steps its tensors in place); an upcast copies once more.
    array = jnp.array(value)
    return array if array.dtype == leaf.dtype else array.astype(leaf.dtype)


def _buffers(
    entry: Mapping | None,
    leaf: Any,
    hyperparams: Mapping,
    torch_id: Any,
    who: str,
    where: str,
) -> tuple:
    """``(step, square_avg, momentum_buffer, grad_avg)`` of one parameter from torch's entry.

    No entry (a parameter torch never stepped): zeros and step 0, what torch
    creates at its first step. Buffers the configuration does not use are ``None``.
    """
    momentum, centered = hyperparams["momentum"], hyperparams["centered"]
    if entry is None:
        # One array per buffer: a jax.jit may donate each of them.
        zeros = lambda: jnp.zeros(leaf.shape, leaf.dtype)
        return 0, zeros(), zeros() if momentum > 0 else None, zeros() if centered else None
    check_state_entry(torch_id, entry, momentum, centered, f"{who}: {where}")
    return (
        step_count(entry["step"], f"{who}: {where}"),
        _buffer(entry, "square_avg", leaf, who, where),
        _buffer(entry, "momentum_buffer", leaf, who, where) if momentum > 0 else None,
        _buffer(entry, "grad_avg", leaf, who, where) if centered else None,
    )


def _check_flattening_order(tree: Any, who: str) -> None:
    """Refuses a dict that JAX flattens in another order than it was built in.

    JAX flattens a ``dict`` in sorted key order; the position-based functions
    pair torch's parameter ``i`` with leaf ``i``, so a dict built in torch's
    registration order (``{name: ... for name, _ in model.named_parameters()}``)
    would pair the wrong tensors, silently where the shapes agree.
    """

    def reordered(node: Any) -> bool:
        if type(node) is not dict:
            return False
        try:
            return list(node) != sorted(node)
        except TypeError:
            return True

    for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=reordered)[0]:
        if reordered(node):
            raise ValueError(
                f"{who}: the dict at {path_str(path)} has keys in the order {list(node)}, but "
                f"JAX flattens a dict in sorted order, {sorted(map(str, node))}, and this "
                "function pairs torch's parameter i with leaf i (torch numbers parameters "
                "in registration order): some would take another parameter's state. Use "
                "jrmsprop.interop.from_torch / to_torch, which match by name, or pass a "
                "list (or OrderedDict) in model.parameters() order"
            )


def from_torch_state_dict(state_dict: Mapping, params: Any) -> tuple[dict, RMSpropState]:
    """Reads ``torch.optim.RMSprop.state_dict()`` as jrmsprop hyperparams and state.

    torch's parameter ``i`` (``param_groups[0]["params"][i]``) is
    ``jax.tree.leaves(params)[i]``. A parameter torch never stepped has no state
    entry there; it starts here at zeros with step 0, which is what torch
    would create at its first step. ``count`` (what an lr schedule reads) is
    set to the largest per-parameter step, the number of optimizer steps taken
    if every parameter had a gradient every step. The ``lr`` read is the one
    stored in the param group, i.e. after any ``torch.optim.lr_scheduler``
    has set it.

    Args:
      state_dict: ``optimizer.state_dict()`` of a ``torch.optim.RMSprop`` with one
        param group (torch tensors or arrays), e.g. from
        ``torch.load(path, weights_only=True)``.
      params: the JAX params, a pytree whose leaves are torch's parameters in
        torch's order, with the same shapes and dtypes.

    Returns:
      ``(hyperparams, state)``: ``hyperparams`` is a dict of
      :func:`jrmsprop.rmsprop`'s keyword arguments (``lr``, ``alpha``, ``eps``,
      ``weight_decay``, ``momentum``, ``centered``, ``maximize``), so
      ``jrmsprop.rmsprop(**hyperparams)`` continues the run with ``state``.

    Raises:
      ValueError: the number of parameters, a shape, a dtype or a state entry does
        not match; the message names torch's side and the JAX side.

    Example::

      >>> import jax.numpy as jnp, torch, jrmsprop
      >>> model = torch.nn.Linear(3, 2)
      >>> opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9)
      >>> model(torch.ones(4, 3)).sum().backward(); opt.step()
      >>> params = [jnp.array(p.detach().numpy()) for p in model.parameters()]
      >>> hyperparams, state = jrmsprop.from_torch_state_dict(opt.state_dict(), params)
      >>> tx = jrmsprop.rmsprop(**hyperparams)  # continue with tx.update(grads, state, params)
    """
    group = _single_group(state_dict)
    hyperparams = _group_hyperparams(group)
    _check_flattening_order(params, "from_torch_state_dict")
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    ids = list(group["params"])
    if len(ids) != len(leaves_with_paths):
        raise ValueError(
            f"from_torch_state_dict: the torch state has {len(ids)} parameters "
            f"(param_groups[0]['params']), the JAX params have {len(leaves_with_paths)} "
            "leaves (jax.tree.leaves(params)); parameter i of torch must be leaf i"
        )
    unknown = set(state_dict["state"]) - set(ids)
    if unknown:
        raise ValueError(
            f"from_torch_state_dict: torch state entries {sorted(unknown)} belong to no "
            f"parameter of param_groups[0]['params'] = {ids}"
        )

    steps, square_avgs, buffers, grad_avgs = [], [], [], []
    for position, (torch_id, (path, leaf)) in enumerate(zip(ids, leaves_with_paths)):
        where = f"torch parameter {position} (id {torch_id}) / JAX leaf {path_str(path)}"
        entry = state_dict["state"].get(torch_id)
        step, square_avg, buffer, grad_avg = _buffers(
            entry, jnp.asarray(leaf), hyperparams, torch_id, "from_torch_state_dict", where
        )
        steps.append(step)
        square_avgs.append(square_avg)
        buffers.append(buffer)
        grad_avgs.append(grad_avg)
    uses_momentum = hyperparams["momentum"] > 0

    unflatten = lambda leaves: jax.tree.unflatten(treedef, leaves)
    state = RMSpropState(
        count=jnp.asarray(max(steps, default=0), jnp.int32),
        step=jnp.asarray(steps, jnp.int32).reshape(len(steps)),
        square_avg=unflatten(square_avgs),
        momentum_buffer=unflatten(buffers) if uses_momentum else None,
        grad_avg=unflatten(grad_avgs) if hyperparams["centered"] else None,
    )
    return hyperparams, state


def to_torch_state_dict(hyperparams: Mapping, state: RMSpropState) -> dict:
    """Writes jrmsprop hyperparams and state as ``torch.optim.RMSprop.state_dict()``.

    The result loads with ``torch.optim.RMSprop(model.parameters()).load_state_dict``
    when ``jax.tree.leaves`` of the params come in ``model.parameters()`` order.
    A parameter whose step is 0 gets no state entry, as in torch before its
    first gradient.

    Args:
      hyperparams: :func:`jrmsprop.rmsprop`'s keyword arguments as numbers
        (missing ones take its defaults), e.g. the dict
        :func:`from_torch_state_dict` returns or ``inject_hyperparams``'s
        ``state.hyperparams``. A schedule has no torch equivalent: pass its
        current value.
      state: the :class:`jrmsprop.RMSpropState` to write.

    Returns:
      ``{"state": {i: entry}, "param_groups": [group]}`` with torch tensors:
      each ``entry`` has ``"step"`` and ``"square_avg"``, and
      ``"momentum_buffer"`` and ``"grad_avg"`` when the state has them.

    Example::

      >>> import jax.numpy as jnp, torch, jrmsprop
      >>> params = [jnp.ones((2, 3)), jnp.zeros(2)]
      >>> hyperparams = {"lr": 1e-3, "momentum": 0.9}
      >>> state = jrmsprop.rmsprop(**hyperparams).init(params)
      >>> model = torch.nn.Linear(3, 2)  # parameters() in the same order: weight, bias
      >>> opt = torch.optim.RMSprop(model.parameters())
      >>> opt.load_state_dict(jrmsprop.to_torch_state_dict(hyperparams, state))

    Raises:
      ImportError: torch is not installed.
      TypeError: ``state`` is not an :class:`jrmsprop.RMSpropState`, or a hyperparameter
        is a schedule.
      ValueError: an unknown hyperparameter, or a state that does not fit the
        hyperparameters (momentum > 0 without a momentum buffer, centered
        without ``grad_avg``).
    """
    if not isinstance(state, RMSpropState):
        raise TypeError(
            f"to_torch_state_dict: state must be a jrmsprop.RMSpropState, got "
            f"{type(state).__name__}"
        )
    unknown = set(hyperparams) - set(_DEFAULTS)
    if unknown:
        raise ValueError(
            f"to_torch_state_dict: unknown hyperparameters {sorted(unknown)}; "
            f"expected some of {sorted(_DEFAULTS)}"
        )
    merged = {**_DEFAULTS, **hyperparams}
    for key in _FLOAT_KEYS:
        if callable(merged[key]):
            raise TypeError(
                f"to_torch_state_dict: {key} is a schedule; torch stores a number: "
                f"pass its value at the current step, {key}=schedule(state.count)"
            )
        merged[key] = float(_number(merged[key]))
    merged["centered"] = bool(_number(merged["centered"]))
    merged["maximize"] = bool(_number(merged["maximize"]))
    check_hyperparams(**merged)
    if merged["momentum"] > 0 and state.momentum_buffer is None:
        raise ValueError(
            f"to_torch_state_dict: momentum={merged['momentum']} but the state has no "
            "momentum_buffer (it was created with momentum=0)"
        )
    if merged["centered"] and state.grad_avg is None:
        raise ValueError(
            "to_torch_state_dict: centered=True but the state has no grad_avg "
            "(it was created with centered=False)"
        )

    _check_flattening_order(state.square_avg, "to_torch_state_dict")
    torch = _import_torch()
    square_avgs, treedef = jax.tree.flatten(state.square_avg)
    steps = np.asarray(state.step).tolist()
    if len(steps) != len(square_avgs) or np.ndim(state.step) != 1:
        raise ValueError(
            f"to_torch_state_dict: state.step has shape {np.shape(state.step)}; it must be "
            f"a vector with one entry per parameter ({len(square_avgs)})"
        )
    buffers = (
        [None] * len(steps)
        if state.momentum_buffer is None
        else treedef.flatten_up_to(state.momentum_buffer)  # type: ignore[attr-defined]
    )
    grad_avgs = (
        [None] * len(steps)
        if state.grad_avg is None
        else treedef.flatten_up_to(state.grad_avg)  # type: ignore[attr-defined]
    )
    torch_state = {}
    for i, (step, square_avg, buffer, grad_avg) in enumerate(
        zip(steps, square_avgs, buffers, grad_avgs)
    ):
        if step == 0:
            continue
        # torch keeps step as a float32 scalar tensor (torch.tensor(0.0) + 1 per step).
        entry = {"step": torch.tensor(float(step)), "square_avg": _to_tensor(square_avg)}
        if buffer is not None:
            entry["momentum_buffer"] = _to_tensor(buffer)
        if grad_avg is not None:
            entry["grad_avg"] = _to_tensor(grad_avg)
        torch_state[i] = entry
    group = {
        "lr": merged["lr"],
        "momentum": merged["momentum"],
        "alpha": merged["alpha"],
        "eps": merged["eps"],
        "centered": merged["centered"],
        "weight_decay": merged["weight_decay"],
        "capturable": False,
        "foreach": None,
        "maximize": merged["maximize"],
        "differentiable": False,
        "params": list(range(len(steps))),
    }
    return {"state": torch_state, "param_groups": [group]}


def state_dict_tensors(state_dict: Mapping) -> dict:
    """A state dict in ``torch.optim``'s layout with numpy values, as torch writes it.

    Every array becomes a tensor of its dtype (bfloat16 included), each
    hyperparameter a Python number, and the group gains torch's
    ``capturable`` and ``differentiable`` (``False``): what
    ``FunctionalRMSprop.state_dict(tensors=True)`` returns, which
    ``torch.load(..., weights_only=True)`` reads back and
    ``torch.optim.RMSprop.load_state_dict`` takes.

    Args:
      state_dict: ``{"state": {i: {name: array}}, "param_groups": [{...}]}``.

    Returns:
      A new dict; the input is not changed.
    """
    _import_torch()
    state = {
        index: {key: _to_tensor(value) for key, value in entry.items()}
        for index, entry in state_dict["state"].items()
    }
    groups = []
    for group in state_dict["param_groups"]:
        group = {
            key: _number(value) if key in _FLOAT_KEYS else value for key, value in group.items()
        }
        group.setdefault("capturable", False)
        group.setdefault("differentiable", False)
        groups.append(group)
    return {"state": state, "param_groups": groups}
