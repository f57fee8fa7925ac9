"""A whole torch run by name: params, param groups, optimizer state, schedulers.

Matching is by ``model.named_parameters()`` name, never by position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jrmsprop.interop._torch import _dtype_name, _import_torch, _to_numpy, _to_tensor
from jrmsprop.interop.plateau import check_followed, injected, is_plateau
from jrmsprop.interop.schedules import (
    advanced_copy,
    check_translatable,
    scheduler_target,
    schedules_of,
    write_state,
)
from jrmsprop.interop.state_dict import (
    _FLOAT_KEYS,
    _buffers,
    _group_hyperparams,
    to_torch_state_dict,
)
from jrmsprop.transform import RMSpropState, rmsprop
from jrmsprop.validation import state_dict_parts, step_count


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
    steps_per_scheduler_step: int | None = None,
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
      steps_per_scheduler_step: optimizer steps per ``scheduler.step()``;
        default: derived from the largest per-parameter step and ``last_epoch``
        (see :func:`from_torch`).
      horizon: not needed (accepted for compatibility; see
        ``jrmsprop.schedules.from_torch_scheduler``).

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



    # count: the optimizer steps taken, the largest per-parameter step.
    schedules, count = (
        {},
        max((step_count(e["step"], f"{who}: state {j}") for j, e in entries.items()), default=0),
    )
    plateau = is_plateau(scheduler)  # kept in torch: its lr rides in the state
    if scheduler is not None and not plateau:
        schedules, count = schedules_of(
            scheduler, groups, steps_per_scheduler_step=k, horizon=horizon, step=count, who=who
        )
    txs = []
    for i, (_, hp) in enumerate(parts):
        moved = {key: columns[i] for key, columns in schedules.items()}
        if plateau:
            txs.append(injected(rmsprop, hp))
        elif "momentum" in moved:
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
    steps_per_scheduler_step: int | None = None,
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
    - ``count`` (the state's) is the optimizer steps taken: the largest
      per-parameter step. With a scheduler, each group's lr is an optax
      schedule continuing torch's for every count (see
      ``jrmsprop.schedules.from_torch_scheduler``): at count ``n`` torch's lr at
      ``last_epoch = n // steps_per_scheduler_step``, so a scheduler stepped per
      epoch and checkpointed mid-epoch changes the lr at the step torch would.
      Without one, each group keeps its current lr.
    - A ``ReduceLROnPlateau`` stays in torch: each group's lr is carried in the
      state (``optax.inject_hyperparams``); after each ``scheduler.step(metric)``
      call ``jrmsprop.interop.plateau.follow(opt_state, scheduler)``.

    Every parameter of the model must be in the optimizer and every optimizer
    parameter in the model. Nothing is read by position.

    Args:
      model: the ``torch.nn.Module`` trained.
      optimizer: its ``torch.optim.RMSprop``.
      scheduler: ``None`` or its ``torch.optim.lr_scheduler`` scheduler.
      steps_per_scheduler_step: optimizer steps per ``scheduler.step()`` (the
        steps of an epoch for a scheduler stepped once per epoch). Default:
        derived, as the ``k`` with ``largest step // k == last_epoch`` (1 when
        they are equal, e.g. a fresh run); when several fit (the scheduler not
        yet stepped after some steps) or a given one contradicts them, a
        ``ValueError`` says what to pass.
      horizon: not needed; accepted for compatibility (a horizon past 2,048
        scheduler steps extends the part where the lrs are torch's own to the
        last bit).

    Returns:
      ``(params, tx, opt_state)``.

    Raises:
      TypeError: not an RMSprop, or a scheduler that cannot be translated
        (``LambdaLR``, ``ReduceLROnPlateau``, ...; the message says what to do).
      ValueError: a parameter in no group or not in the model, a bad
        hyperparameter or state entry, a ``steps_per_scheduler_step`` that is
        not a positive int or contradicts the steps and ``last_epoch``.

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
    steps_per_scheduler_step: int | None = None,
) -> None:
    """Writes a run from :func:`from_torch` back into torch's objects, in place.

    The model's parameters take ``params`` by name; the optimizer takes every
    buffer and step (``load_state_dict``, so torch checks them too; a parameter
    whose step is 0 has no state, as in torch before its first gradient); the
    scheduler, stepped on the host from where it stands to ``last_epoch =
    count // steps_per_scheduler_step``, takes its new position (``last_epoch``,
    ``_last_lr``, ``_step_count``, ...) and puts its lr in each group. torch
    then continues exactly as ``tx`` would. ``steps_per_scheduler_step`` is
    derived again from the optimizer's steps and the scheduler's ``last_epoch``
    as they stood when the run left (the objects given to :func:`from_torch`,
    or a copy taken then), so it is the split ``from_torch`` used; one that
    contradicts them is refused. A ``ReduceLROnPlateau`` is not stepped: the
    state's lrs must be the ones it left in the groups (``plateau.follow``).
    Without a scheduler the groups keep their hyperparameters.

    Give the scheduler to both directions or to neither. A scheduler given only
    here moves to ``count // steps_per_scheduler_step`` as if the JAX run had
    followed it (it did not: each group kept its lr); one given only to
    ``from_torch`` stays where it was, and the groups keep the lr they had when
    the run left.

    Args:
      params: ``{name: array}`` as :func:`from_torch` returns it (any later value).
      opt_state: ``tx``'s state, or an optax state holding it (a chain).
      model: the ``torch.nn.Module`` to write into.
      optimizer: its ``torch.optim.RMSprop`` with the groups ``tx`` came from.
      scheduler: ``None`` or the scheduler ``tx``'s schedules came from, at its
        position then.
      steps_per_scheduler_step: default: derived as :func:`from_torch` derives
        it; if given, checked the same way.

    Raises:
      ValueError: names, shapes or dtypes that do not match the model; an
        ``opt_state`` that does not fit the optimizer's groups; a scheduler
        already past the state's position; a ``steps_per_scheduler_step`` that
        is not a positive int or contradicts the optimizer's steps and
        ``last_epoch``; plateau lrs not followed. Nothing is written then.
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
    if is_plateau(scheduler):
        check_followed(opt_state, optimizer, who)
    elif scheduler is not None:

        check_translatable(scheduler)
        target = scheduler_target(scheduler, optimizer, count, steps_per_scheduler_step, who)
        twin = advanced_copy(scheduler, groups, target)
        for group, twin_group in zip(state_dict["param_groups"], twin.optimizer.param_groups):
            group.update({key: v for key, v in twin_group.items() if key != "params"})
    optimizer.load_state_dict(state_dict)
    with torch.no_grad():
        for name in names:
            model_params[name].copy_(_to_tensor(params[name]))
    if twin is not None:

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
