"""Moving an RMSprop run between ``torch.optim.RMSprop`` and jrmsprop.

Parameter order: torch numbers its parameters in the order they were given to
the optimizer (``model.parameters()`` order for ``RMSprop(model.parameters())``);
here parameter ``i`` is ``jax.tree.leaves(params)[i]``. Build the JAX params as
a list (or any pytree whose leaves come in that order), e.g.
``[jnp.array(p.detach().numpy()) for p in model.parameters()]`` (``jnp.array``
copies: ``jnp.asarray`` may share memory with the torch tensor, which torch's
next in-place step would then change under JAX's feet). A dict of
params flattens in sorted key order, which is usually NOT torch's order.

Both functions take and return dicts, never paths: nothing is unpickled here.
Load a file saved by ``torch.save`` with ``torch.load(path, weights_only=True)``.
torch is imported only when a torch tensor has to be read or made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jrmsprop.transform import RMSpropState
from jrmsprop.validation import (
    check_hyperparams,
    check_state_entry,
    path_str,
    state_dict_parts,
    step_count,
)

# jrmsprop.rmsprop's keyword arguments, with its defaults.
__all__ = [
    "from_torch",
    "from_torch_state_dict",
    "from_torch_state_dicts",
    "to_torch",
    "to_torch_state_dict",
]

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


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "jrmsprop's torch interop needs PyTorch, which is not installed: pip install torch"
        ) from error
    return torch


def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (or any array) as a numpy array, dtype kept."""
    if hasattr(value, "detach"):
        torch = _import_torch()
        # A conjugated or negated view (x.conj(), -x lazily) is materialized first.
        tensor = value.detach().cpu().resolve_conj().resolve_neg()
        if tensor.dtype == torch.bfloat16:
            # numpy has no bfloat16: move the bits, then view them as ml_dtypes'.
            return tensor.view(torch.int16).numpy().view(jnp.bfloat16)
        return tensor.numpy()
    return np.asarray(value)


def _to_tensor(array: Any):
    """A JAX array as a torch tensor of the same dtype (a copy)."""
    torch = _import_torch()
    array = np.array(array)
    if array.dtype == jnp.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _dtype_name(value: Any) -> str:
    return str(value.dtype).removeprefix("torch.")


def _number(value: Any) -> Any:
    """A hyperparameter as a Python number (torch allows a tensor lr)."""
    if isinstance(value, (bool, int, float)):
        return value
    return _to_numpy(value).item()


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
    value = np.array(_to_numpy(entry[key]))  # a copy: torch steps its tensors in place
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
    return jnp.asarray(value).astype(leaf.dtype)


def _buffers(
    entry: Mapping | None,
    leaf: jax.Array,
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
        zeros = jnp.zeros_like(leaf)
        return 0, zeros, zeros if momentum > 0 else None, zeros if centered else None
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


def _label(index: int) -> str:
    return f"group{index}"


def _is_rmsprop_state(x: Any) -> bool:
    return isinstance(x, RMSpropState)


def _rmsprop_states(opt_state: Any, n_groups: int, who: str, with_positions: bool = False):
    """The :class:`RMSpropState` of each param group inside ``opt_state``.

    ``opt_state`` is what :func:`from_torch`'s ``tx`` builds, possibly inside a
    larger optax state (an ``optax.chain``): one ``RMSpropState``, or with
    several groups one under each group's label (``'group0'``, ...).
    """
    flat = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=_is_rmsprop_state)[0]
    found = [(pos, path, node) for pos, (path, node) in enumerate(flat) if _is_rmsprop_state(node)]
    if n_groups == 1 and len(found) == 1:
        return ([found[0][2]], [found[0][0]]) if with_positions else [found[0][2]]
    by_label: dict[str | None, Any] = {}
    for pos, path, node in found:
        labels = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        label = next(
            (lab for lab in labels if isinstance(lab, str) and lab.startswith("group")), None
        )
        by_label.setdefault(label, []).append((pos, node))
    states, positions = [], []
    for i in range(n_groups):
        nodes = by_label.get(_label(i), [])
        if len(nodes) != 1:
            raise ValueError(
                f"{who}: the optimizer has {n_groups} param groups; opt_state must hold one "
                f"jrmsprop.RMSpropState per group (under '{_label(i)}', as from_torch's tx "
                f"builds it), found {len(nodes)} under '{_label(i)}' and {len(found)} in all"
            )
        positions.append(nodes[0][0])
        states.append(nodes[0][1])
    return (states, positions) if with_positions else states


def _fill(
    state: RMSpropState, names: dict, entries: Mapping, hyperparams: Mapping, count: int, who: str
) -> RMSpropState:
    """``state`` (from ``tx.init``) with torch's buffers and steps, leaf by leaf by name."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(state.square_avg)
    columns = []
    for path, leaf in with_paths:
        name = path[0].key
        torch_id = names[name]
        where = f"parameter {name!r} (torch id {torch_id})"
        columns.append(_buffers(entries.get(torch_id), leaf, hyperparams, torch_id, who, where))
    steps, square_avgs, buffers, grad_avgs = (
        (list(c) for c in zip(*columns)) if columns else ([], [], [], [])
    )
    unflatten = lambda leaves: jax.tree.unflatten(treedef, leaves)
    return state._replace(
        count=jnp.asarray(count, jnp.int32),
        step=jnp.asarray(steps, jnp.int32).reshape(len(steps)),
        square_avg=unflatten(square_avgs),
        momentum_buffer=None if state.momentum_buffer is None else unflatten(buffers),
        grad_avg=None if state.grad_avg is None else unflatten(grad_avgs),
    )


def from_torch_state_dicts(
    model_state_dict: Mapping,
    optimizer_state_dict: Mapping,
    param_names: Sequence[str],
    scheduler: Any = None,
    *,
    steps_per_scheduler_step: int = 1,
    horizon: int | None = None,
) -> tuple[dict, Any, Any]:
    """:func:`from_torch` from a checkpoint's state dicts, without the torch objects.

    torch's optimizer state dict numbers its parameters, in the order they were
    given to the optimizer, across its groups; ``param_names`` gives the name of
    each (for ``RMSprop(model.parameters())``: ``[name for name, _ in
    model.named_parameters()]``; save the list beside the checkpoint when the
    model cannot be rebuilt). The values come from ``model_state_dict`` by those
    names, which also holds buffers (BatchNorm's running statistics: read them
    from it by name); only the named parameters become ``params``.

    Args:
      model_state_dict: ``model.state_dict()``, e.g. from
        ``torch.load(path, weights_only=True)``.
      optimizer_state_dict: ``torch.optim.RMSprop.state_dict()`` (any number of groups).
      param_names: one name per optimizer parameter, in the optimizer's order.
      scheduler: ``None``, a scheduler object, or ``(class, scheduler_state_dict)``
        (e.g. ``(torch.optim.lr_scheduler.StepLR, checkpoint["scheduler"])``;
        ``SequentialLR`` needs the object, as its state dict does not name the
        classes inside it). See ``jrmsprop.schedules.from_torch_scheduler``.
      steps_per_scheduler_step: optimizer steps per ``scheduler.step()``.
      horizon: optimizer steps to tabulate a scheduler that never settles for.

    Returns:
      ``(params, tx, opt_state)`` as :func:`from_torch`.

    Raises:
      ValueError: a name missing from ``model_state_dict``, repeated, or a number of
        names other than the optimizer's parameters; a state entry of no
        parameter; a hyperparameter, shape, dtype or state entry that does not fit.
      TypeError: a scheduler that cannot be translated (the message says what to do).
    """
    who = "from_torch_state_dicts"
    names = list(param_names)
    return _from_parts(
        who,
        model_state_dict,
        optimizer_state_dict,
        names,
        scheduler,
        steps_per_scheduler_step,
        horizon,
    )


def _from_parts(who, tensors, optimizer_state_dict, names, scheduler, k, horizon):
    if not isinstance(optimizer_state_dict, Mapping) or "param_groups" not in optimizer_state_dict:
        state_dict_parts(optimizer_state_dict, who)  # raises its clear error
    groups = list(optimizer_state_dict["param_groups"])
    entries = optimizer_state_dict.get("state", {})
    parts = []
    for i, group in enumerate(groups):
        sub = {
            "state": {j: entries[j] for j in group["params"] if j in entries},
            "param_groups": [group],
        }
        _, checked = state_dict_parts(sub, f"{who}: param_groups[{i}]")
        parts.append((list(checked["params"]), _group_hyperparams(checked)))
    ids = [j for group_ids, _ in parts for j in group_ids]
    if len(ids) != len(names):
        raise ValueError(
            f"{who}: the optimizer has {len(ids)} parameters across its param groups, "
            f"{len(names)} names were given; give one name per parameter, in the optimizer's order"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{who}: the names {repeated} are given for more than one parameter")
    unknown = sorted(set(entries) - set(ids), key=str)
    if unknown:
        raise ValueError(
            f"{who}: torch state entries {unknown} belong to no parameter of any param group"
        )
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(
            f"{who}: the model has no parameters {missing} (its names: {sorted(tensors)})"
        )
    id_of = dict(zip(names, ids))
    params = {name: jnp.array(_to_numpy(tensors[name])) for name in names}

    import optax

    from jrmsprop.transform import rmsprop

    schedules, count = (
        {},
        max((step_count(e["step"], f"{who}: state {j}") for j, e in entries.items()), default=0),
    )
    if scheduler is not None:
        from jrmsprop.schedules import schedules_of

        schedules, count = schedules_of(
            scheduler, groups, steps_per_scheduler_step=k, horizon=horizon
        )
    txs = []
    for i, (_, hp) in enumerate(parts):
        moved = {key: columns[i] for key, columns in schedules.items()}
        if "momentum" in moved:
            # A moving momentum (OneCycleLR's cycle_momentum) goes through optax's
            # inject_hyperparams, which hands rmsprop each step's value.
            txs.append(
                optax.inject_hyperparams(rmsprop, static_args=("centered", "maximize"))(
                    **{**hp, **moved}
                )
            )
        else:
            txs.append(rmsprop(**{**hp, **moved}))
    if len(parts) == 1:
        tx = txs[0]
    else:
        labels = {
            name: _label(i)
            for i, (group_ids, _) in enumerate(parts)
            for name, j in id_of.items()
            if j in group_ids
        }
        tx = optax.partition({_label(i): t for i, t in enumerate(txs)}, labels)
    opt_state = tx.init(params)
    states, where = _rmsprop_states(opt_state, len(parts), who, with_positions=True)
    filled = [_fill(state, id_of, entries, hp, count, who) for state, (_, hp) in zip(states, parts)]
    leaves, treedef = jax.tree.flatten(opt_state, is_leaf=_is_rmsprop_state)
    for position, state in zip(where, filled):
        leaves[position] = state
    opt_state = jax.tree.unflatten(treedef, leaves)
    # Every counter (inject_hyperparams' and its schedules' too) at the run's position.
    return (
        params,
        tx,
        jax.tree_util.tree_map_with_path(
            lambda path, x: (
                jnp.asarray(count, jnp.int32)
                if path and path[-1] == jax.tree_util.GetAttrKey("count")
                else x
            ),
            opt_state,
        ),
    )


def _named_ids(model: Any, optimizer: Any, who: str) -> list[str]:
    """The names of the optimizer's parameters, in its order, from the model."""
    torch = _import_torch()
    if not isinstance(optimizer, torch.optim.RMSprop):
        raise TypeError(
            f"{who}: optimizer must be a torch.optim.RMSprop, got {type(optimizer).__name__}"
        )
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = []
    for i, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            if id(p) not in name_of:
                raise ValueError(
                    f"{who}: optimizer.param_groups[{i}]['params'][{j}] (shape "
                    f"{tuple(p.shape)}) is not a parameter of the model "
                    "(model.named_parameters()): give the model the optimizer trains"
                )
            names.append(name_of[id(p)])
    left = [name for name in name_of.values() if name not in names]
    if left:
        raise ValueError(
            f"{who}: the model's parameters {left} are in no param group of the optimizer. "
            "torch never changes them; JAX would need their values too: add them to the "
            "optimizer (a group with lr=0 keeps them fixed), or keep them out of the "
            "migration by passing the state dicts to from_torch_state_dicts"
        )
    return names


def from_torch(
    model: Any,
    optimizer: Any,
    scheduler: Any = None,
    *,
    steps_per_scheduler_step: int = 1,
    horizon: int | None = None,
) -> tuple[dict, Any, Any]:
    """A torch RMSprop run as ``(params, tx, opt_state)``, matched by parameter name.

    - ``params``: ``{name: array}`` for ``model.named_parameters()`` (a tied
      weight appears once, under its first name, as there). Buffers are not
      parameters: read BatchNorm's running statistics from
      ``model.named_buffers()`` (or the model's state dict) by name.
    - ``tx``: :func:`jrmsprop.rmsprop` with the param group's hyperparameters;
      with several groups, one per group combined by name with
      ``optax.partition`` (group ``i`` labelled ``'group{i}'``). It chains as any
      optax transformation, e.g. ``optax.chain(optax.clip_by_global_norm(1.0), tx)``
      (initialise the chain, then put ``opt_state`` in its place).
    - ``opt_state``: exactly ``tx.init(params)``'s structure, holding torch's
      buffers and per-parameter steps; a parameter torch never stepped has zeros
      and step 0 and takes its first step as torch would.
    - With a ``scheduler``, each group's lr is an optax schedule continuing
      torch's (see ``jrmsprop.schedules.from_torch_scheduler``) and the
      state's ``count`` is ``last_epoch * steps_per_scheduler_step``; without
      one, each group keeps its current lr and ``count`` is the largest step.

    Every parameter of the model must be in the optimizer and every optimizer
    parameter in the model. Nothing is read by position.

    Args:
      model: the ``torch.nn.Module`` trained.
      optimizer: its ``torch.optim.RMSprop``.
      scheduler: ``None`` or its ``torch.optim.lr_scheduler`` scheduler.
      steps_per_scheduler_step: optimizer steps per ``scheduler.step()`` (the
        steps of an epoch for a scheduler stepped once per epoch).
      horizon: optimizer steps to tabulate a scheduler that never settles
        (``StepLR``, ``ExponentialLR``, ``CosineAnnealingLR``) for.

    Returns:
      ``(params, tx, opt_state)``.

    Raises:
      TypeError: not an RMSprop, or a scheduler that cannot be translated
        (``LambdaLR``, ``ReduceLROnPlateau``, ...; the message says what to do).
      ValueError: a parameter in no group or not in the model, a bad
        hyperparameter or state entry.

    Example::

      >>> import torch, jrmsprop
      >>> model = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
      >>> opt = torch.optim.RMSprop([
      ...     {"params": [model[1].weight], "weight_decay": 1e-2},
      ...     {"params": [model[0].weight, model[0].bias, model[1].bias]}], lr=1e-3)
      >>> model(torch.ones(3, 4)).sum().backward(); opt.step()
      >>> params, tx, opt_state = jrmsprop.interop.from_torch(model, opt)
      >>> sorted(params)
      ['0.bias', '0.weight', '1.bias', '1.weight']
    """
    names = _named_ids(model, optimizer, "from_torch")
    return _from_parts(
        "from_torch",
        dict(model.named_parameters()),
        optimizer.state_dict(),
        names,
        scheduler,
        steps_per_scheduler_step,
        horizon,
    )


def to_torch(
    params: Mapping,
    opt_state: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any = None,
    *,
    steps_per_scheduler_step: int = 1,
) -> None:
    """Writes a run from :func:`from_torch` back into torch's objects, in place.

    The model's parameters take ``params`` by name; the optimizer takes every
    buffer and step (``load_state_dict``, so torch checks them too; a parameter
    whose step is 0 has no state, as in torch before its first gradient); the
    scheduler, stepped on the host from where it stands to ``last_epoch =
    count // steps_per_scheduler_step``, takes its new position (``last_epoch``,
    ``_last_lr``, ``_step_count``, ...) and puts its lr in each group. torch
    then continues exactly as ``tx`` would. Without a scheduler the groups keep
    their hyperparameters (those ``tx`` was built from).

    Args:
      params: ``{name: array}`` as :func:`from_torch` returns it (any later value).
      opt_state: ``tx``'s state, or an optax state holding it (a chain).
      model: the ``torch.nn.Module`` to write into.
      optimizer: its ``torch.optim.RMSprop`` with the groups ``tx`` came from.
      scheduler: ``None`` or the scheduler ``tx``'s schedules came from, at its
        position then (or any earlier one: a fresh scheduler works).
      steps_per_scheduler_step: as given to :func:`from_torch`.

    Raises:
      ValueError: names, shapes or dtypes that do not match the model; an
        ``opt_state`` that does not fit the optimizer's groups; a scheduler
        already past the state's position. Nothing is written then.
    """
    who = "to_torch"
    torch = _import_torch()
    names = _named_ids(model, optimizer, who)
    model_params = dict(model.named_parameters())
    if not isinstance(params, Mapping) or set(params) != set(names):
        given = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(
            f"{who}: params must be a dict keyed by the model's parameter names "
            f"{sorted(names)}; got {given}"
        )
    for name in names:
        value, target = params[name], model_params[name]
        if tuple(np.shape(value)) != tuple(target.shape) or _dtype_name(value) != _dtype_name(
            target
        ):
            raise ValueError(
                f"{who}: params[{name!r}] is {_dtype_name(value)}{list(np.shape(value))}, the "
                f"model's parameter is {_dtype_name(target)}{list(target.shape)}"
            )
    groups = optimizer.param_groups
    states = _rmsprop_states(opt_state, len(groups), who)
    counts = {int(s.count) for s in states}
    if len(counts) != 1:
        raise ValueError(f"{who}: the groups' states have different counts {sorted(counts)}")
    count = counts.pop()
    state_dict = optimizer.state_dict()
    torch_state, position = {}, 0
    for i, (group, state) in enumerate(zip(state_dict["param_groups"], states)):
        hyperparams = {key: group[key] for key in (*_FLOAT_KEYS, "centered", "maximize")}
        group_names = names[position : position + len(group["params"])]
        sub = to_torch_state_dict(
            hyperparams,
            state._replace(
                square_avg=_in_order(state.square_avg, group_names, who, i),
                momentum_buffer=None
                if state.momentum_buffer is None
                else _in_order(state.momentum_buffer, group_names, who, i),
                grad_avg=None
                if state.grad_avg is None
                else _in_order(state.grad_avg, group_names, who, i),
                step=_steps_in_order(state, group_names),
            ),
        )
        torch_state.update({group["params"][j]: entry for j, entry in sub["state"].items()})
        position += len(group["params"])
    state_dict["state"] = torch_state
    twin = None
    if scheduler is not None:
        from jrmsprop.schedules import check_translatable, detached_copy, step_quietly

        check_translatable(scheduler)
        target = count // steps_per_scheduler_step
        if target < scheduler.last_epoch:
            raise ValueError(
                f"{who}: the scheduler stands at last_epoch {scheduler.last_epoch}, past the "
                f"state's position (count {count} // {steps_per_scheduler_step} = {target}): "
                "give the scheduler tx came from, or a fresh one"
            )
        twin = detached_copy(scheduler, groups)
        for _ in range(scheduler.last_epoch, target):
            step_quietly(twin)
        for group, twin_group in zip(state_dict["param_groups"], twin.optimizer.param_groups):
            group.update({key: v for key, v in twin_group.items() if key != "params"})
    optimizer.load_state_dict(state_dict)
    with torch.no_grad():
        for name in names:
            model_params[name].copy_(_to_tensor(params[name]))
    if twin is not None:
        from jrmsprop.schedules import write_state

        write_state(twin, scheduler)


def _in_order(tree: Mapping, names: list, who: str, group: int) -> list:
    try:
        return [tree[name] for name in names]
    except (KeyError, TypeError):
        raise ValueError(
            f"{who}: the state of param group {group} is not keyed by its parameters' names "
            f"{names}: it did not come from from_torch's tx for this optimizer"
        ) from None


def _steps_in_order(state: RMSpropState, names: list) -> jax.Array:
    """``state.step`` (in the leaf order of ``state.square_avg``) in ``names``' order."""
    leaf_names = [
        path[0].key for path, _ in jax.tree_util.tree_flatten_with_path(state.square_avg)[0]
    ]
    steps = np.asarray(state.step)
    return jnp.asarray([steps[leaf_names.index(name)] for name in names], jnp.int32)
