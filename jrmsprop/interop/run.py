"""A whole torch run by name: params, param groups, optimizer state, schedulers.

Matching is by ``model.named_parameters()`` name, never by position.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jrmsprop.interop._torch import _dtype_name, _import_torch, _tensor_view, _to_numpy
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


# The label of the model's parameters outside the optimizer in ``tx``'s partition.
_FROZEN = "frozen"


def _label(index: int) -> str:
    return f"group{index}"


# A throwaway instance of each class whose state dict keys are checked, by class name.
_SCHEDULER_EXAMPLES: dict[str, dict[str, Any]] = {
    "StepLR": {"step_size": 1},
    "MultiStepLR": {"milestones": [1]},
    "ExponentialLR": {"gamma": 0.5},
    "CosineAnnealingLR": {"T_max": 1},
    "CosineAnnealingWarmRestarts": {"T_0": 1},
    "LinearLR": {},
    "ConstantLR": {},
    "PolynomialLR": {},
    "OneCycleLR": {"max_lr": 1.0, "total_steps": 2},
}
# Bookkeeping a state dict from another torch version may lack, or have in addition.
_SCHEDULER_OPTIONAL = {"_get_lr_called_within_step", "_is_initial", "verbose", "use_beta1"}


def check_scheduler_state(cls: Any, state_dict: Any, who: str = "scheduler") -> None:
    """Refuses a scheduler state dict that is not one of ``cls``'s.

    A ``(class, state_dict)`` pair is rebuilt by putting the state dict's entries
    on an instance of the class: a state dict of another class would give a
    scheduler missing its own settings (an ``AttributeError`` later) or
    silently following another's. The keys are compared with those of a
    throwaway ``cls`` instance (torch's bookkeeping keys that differ between
    versions aside).

    Raises:
      TypeError: ``state_dict`` is not a dict, or ``cls`` is not a class.
      ValueError: keys ``cls`` keeps are missing, or keys it does not keep are there.
    """
    if not isinstance(cls, type):
        raise TypeError(f"{who}: (class, state_dict) needs a scheduler class, got {cls!r}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"{who}: (class, state_dict) needs the scheduler's state_dict() (a dict), got "
            f"{type(state_dict).__name__}"
        )
    torch = _import_torch()
    name = cls.__name__
    if name in _SCHEDULER_EXAMPLES and getattr(torch.optim.lr_scheduler, name, None) is cls:
        assert isinstance(cls, type)
        stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        keys = set(cls(stand_in, **_SCHEDULER_EXAMPLES[name]).state_dict())
    else:
        keys = {"last_epoch", "base_lrs"}
    given = set(map(str, state_dict))
    missing = sorted(keys - _SCHEDULER_OPTIONAL - given)
    extra = sorted(given - keys - _SCHEDULER_OPTIONAL) if name in _SCHEDULER_EXAMPLES else []
    if missing or extra:
        raise ValueError(
            f"{who}: the state dict given with {name} is not a {name}'s: "
            + (f"it lacks {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"it has {extra}, which a {name} does not keep" if extra else "")
            + f" (its keys: {sorted(given)}); pass the class the state dict was saved from"
        )


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
    frozen: Sequence[str] = (),
) -> tuple[dict, Any, Any]:
    """:func:`from_torch` from a checkpoint's state dicts, without the torch objects.

    torch's optimizer state dict numbers its parameters, in the order they were
    given to the optimizer, across its groups; ``param_names`` gives the name of
    each (for ``RMSprop(model.parameters())``: ``[name for name, _ in
    model.named_parameters()]``; save the list beside the checkpoint when the
    model cannot be rebuilt). The values come from ``model_state_dict`` by those
    names, which also holds buffers (BatchNorm's running statistics: read them
    from it by name); only the named parameters become ``params``. A wrapped
    model's checkpoint (``DataParallel``/``DistributedDataParallel``: names
    prefixed by ``module.``; ``torch.compile``: ``_orig_mod.``) loads once the
    prefix is stripped with
    ``torch.nn.modules.utils.consume_prefix_in_state_dict_if_present``.

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
      frozen: names of the model's parameters outside the optimizer (e.g.
        ``[n for n, p in model.named_parameters() if not p.requires_grad]`` for
        ``RMSprop(filter(lambda p: p.requires_grad, model.parameters()))``): they
        come into ``params`` and ``tx`` leaves them as they are, as torch does (a
        state dict cannot tell them from buffers, so they are named here).

    Returns:
      ``(params, tx, opt_state)`` as :func:`from_torch`.

    Raises:
      ValueError: a name missing from ``model_state_dict``, repeated, or a number of
        names other than the optimizer's parameters; a state entry of no
        parameter; a hyperparameter, shape, dtype or state entry that does not fit;
        a float64 parameter while JAX's x64 is off; a scheduler state dict that is
        not of the class given with it.
      TypeError: a dict, list or name of the wrong type; a scheduler that cannot be
        translated (the message says what to do).
    """
    who = "from_torch_state_dicts"
    names = _check_names(param_names, "param_names", who)
    return _from_parts(
        who,
        model_state_dict,
        optimizer_state_dict,
        names,
        scheduler,
        steps_per_scheduler_step,
        horizon,
        frozen=_check_names(frozen, "frozen", who),
    )


def _check_names(names: Any, what: str, who: str) -> list[str]:
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise TypeError(
            f"{who}: {what} must be a list of parameter names (str), got {type(names).__name__}"
        )
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(
            f"{who}: {what} must hold parameter names (str); got {type(bad[0]).__name__} "
            f"{bad[0]!r}"
        )
    return list(names)


def _split_groups(who: str, optimizer_state_dict: Any) -> tuple[list, Mapping]:
    """torch's ``param_groups`` and ``state``, each group's ``params`` checked to be ids."""
    if not isinstance(optimizer_state_dict, Mapping) or "param_groups" not in optimizer_state_dict:
        state_dict_parts(optimizer_state_dict, who)  # raises its clear error
    groups, entries = optimizer_state_dict["param_groups"], optimizer_state_dict.get("state", {})
    if isinstance(groups, (str, bytes, Mapping)) or not isinstance(groups, Sequence):
        raise TypeError(
            f"{who}: optimizer_state_dict['param_groups'] must be a list of dicts, got "
            f"{type(groups).__name__}"
        )
    if not isinstance(entries, Mapping):
        raise TypeError(
            f"{who}: optimizer_state_dict['state'] must be a dict, got {type(entries).__name__}"
        )
    for j, entry in entries.items():
        if not isinstance(entry, Mapping):
            raise TypeError(
                f"{who}: optimizer_state_dict['state'][{j!r}] must be a dict of tensors, got "
                f"{type(entry).__name__}"
            )
        if "step" not in entry:
            raise ValueError(
                f"{who}: optimizer_state_dict['state'][{j!r}] has no 'step' (its keys: "
                f"{sorted(map(str, entry))}): not torch.optim.RMSprop's state"
            )
    seen: set = set()
    for i, group in enumerate(groups):
        if not isinstance(group, Mapping):
            raise TypeError(
                f"{who}: optimizer_state_dict['param_groups'][{i}] must be a dict, got "
                f"{type(group).__name__}"
            )
        ids = group.get("params")
        if ids is None:
            raise ValueError(
                f"{who}: optimizer_state_dict['param_groups'][{i}] has no 'params' (its keys: "
                f"{sorted(map(str, group))}): not a torch.optim state dict"
            )
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise TypeError(
                f"{who}: param_groups[{i}]['params'] must be a list of the optimizer's "
                f"parameter numbers, got {type(ids).__name__}"
            )
        odd = [j for j in ids if isinstance(j, bool) or not isinstance(j, int)]
        if odd:
            raise TypeError(
                f"{who}: param_groups[{i}]['params'] holds {type(odd[0]).__name__} "
                f"{odd[0]!r}; torch numbers its parameters with ints"
            )
        twice = sorted(seen.intersection(ids) | {j for j in ids if list(ids).count(j) > 1})
        if twice:
            raise ValueError(f"{who}: parameter numbers {twice} appear twice in param_groups")
        seen.update(ids)
    return list(groups), entries


def _check_precision(who: str, tensors: Mapping, names: Sequence[str]) -> None:
    """Refuses a tensor JAX would narrow (float64 with x64 off), before anything is read."""
    for name in names:
        dtype = jnp.dtype(_to_numpy(tensors[name]).dtype)
        if jax.dtypes.canonicalize_dtype(dtype) != dtype:
            raise ValueError(
                f"{who}: parameter {name!r} is {dtype.name}, but JAX's 64-bit types are off "
                "(jax_enable_x64 is False), so JAX would hold it as "
                f"{jax.dtypes.canonicalize_dtype(dtype).name} without a word. Either turn x64 "
                'on at startup, before any JAX array is made: jax.config.update('
                '"jax_enable_x64", True); or move the torch run to 32 bits first: '
                "model.float(), then optimizer.load_state_dict(optimizer.state_dict()) "
                "(torch casts the state to the parameters' dtype)"
            )


def _from_parts(who, tensors, optimizer_state_dict, names, scheduler, k, horizon, frozen=()):
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"{who}: the model's state dict must be a dict of tensors, got {type(tensors).__name__}"
        )
    groups, entries = _split_groups(who, optimizer_state_dict)
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
    both = sorted(set(frozen) & set(names))
    if both or len(set(frozen)) != len(frozen):
        raise ValueError(
            f"{who}: frozen names {both or sorted(frozen)} are optimizer parameters or "
            "repeated; frozen names the model's parameters outside the optimizer, once each"
        )
    missing = [n for n in [*names, *frozen] if n not in tensors]
    if missing:
        raise ValueError(
            f"{who}: the model has no parameters {missing} (its names: {sorted(tensors)})"
        )
    _check_precision(who, tensors, [*names, *frozen])
    if isinstance(scheduler, tuple):
        if len(scheduler) != 2 or not isinstance(scheduler[0], type):
            raise TypeError(
                f"{who}: scheduler must be a scheduler object or (class, state_dict), got a "
                f"tuple of {len(scheduler)}"
            )
        check_scheduler_state(scheduler[0], scheduler[1], who)
    id_of = dict(zip(names, ids))
    # One copy each: a numpy view of the torch tensor, copied once into a JAX array (so
    # torch's in-place steps never reach the JAX params).
    params = {name: jnp.array(_to_numpy(tensors[name])) for name in [*names, *frozen]}



    # count: the optimizer steps taken, the largest per-parameter step.
    schedules, count = (
        {},
        max((step_count(e["step"], f"{who}: state {j}") for j, e in entries.items()), default=0),
    )
    plateau = is_plateau(scheduler)  # kept in torch: its lr rides in the state
    if scheduler is not None and not plateau:
        schedules, count = schedules_of(
            scheduler,
            groups,
            steps_per_scheduler_step=k,
            horizon=horizon,
            # No parameter stepped yet: nothing to check last_epoch against.
            step=count if entries else None,
            who=who,
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
    if len(parts) == 1 and not frozen:
        tx = txs[0]
    else:
        labels = {
            name: _label(i)
            for i, (group_ids, _) in enumerate(parts)
            for name, j in id_of.items()
            if j in group_ids
        }
        labels.update({name: _FROZEN for name in frozen})
        transforms = {_label(i): t for i, t in enumerate(txs)}
        if frozen:
            transforms[_FROZEN] = optax.set_to_zero()
        tx = optax.partition(transforms, labels)
    return params, tx, _initial_state(tx, params, parts, id_of, entries, count, who)


def _initial_state(tx, params, parts, id_of, entries, count, who):
    """``tx.init(params)``'s structure holding torch's buffers, without ``tx.init``'s zeros.

    The RMSprop states are built from torch's tensors (one copy each) on the structure
    ``jax.eval_shape(tx.init, params)`` gives; the few other leaves (counters, injected
    hyperparameters) come from ``tx.init`` of empty stand-ins of the params.
    """
    abstract = jax.eval_shape(tx.init, params)
    stand_ins = jax.tree.map(lambda p: np.zeros((0,), p.dtype), params)
    skeleton = tx.init(stand_ins)
    states, where = _rmsprop_states(abstract, len(parts), who, with_positions=True)
    leaves, treedef = jax.tree.flatten(skeleton, is_leaf=_is_rmsprop_state)
    for position, state, (_, hp) in zip(where, states, parts):
        leaves[position] = _fill(state, id_of, entries, hp, count, who)
    # Every counter (inject_hyperparams' and its schedules' too) at the run's position.
    opt_state = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            jnp.asarray(count, jnp.int32)
            if path and path[-1] == jax.tree_util.GetAttrKey("count")
            else x
        ),
        jax.tree.unflatten(treedef, leaves),
    )
    shapes = lambda tree: jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)
    if shapes(opt_state) != shapes(abstract):  # pragma: no cover - a bug of this module
        raise AssertionError(f"{who}: the state built is not tx.init's structure")
    return opt_state


def _named_ids(model: Any, optimizer: Any, who: str) -> tuple[list[str], list[str]]:
    """The names of the optimizer's parameters, in its order, and the model's others."""
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
    outside = [name for name in name_of.values() if name not in names]
    return names, outside


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

    - A model parameter in no param group (frozen, as in
      ``RMSprop(filter(lambda p: p.requires_grad, model.parameters()))``) is in
      ``params`` too, and ``tx`` leaves it as it is (``optax.set_to_zero()``
      under the label ``'frozen'`` of an ``optax.partition``), as torch does;
      :func:`to_torch` writes it back.
    - ``params`` are copies: torch's later in-place steps do not change them.

    Every optimizer parameter must be in the model. Nothing is read by
    position. A float64 model is refused while JAX's x64 is off (JAX would
    hold it as float32): turn x64 on first, or move the torch run to float32.

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
      ValueError: an optimizer parameter not in the model, a bad hyperparameter
        or state entry, a float64 parameter while JAX's x64 is off, a
        ``steps_per_scheduler_step`` that is not a positive int or contradicts
        the steps and ``last_epoch``.

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
    names, outside = _named_ids(model, optimizer, "from_torch")
    return _from_parts(
        "from_torch",
        dict(model.named_parameters()),
        optimizer.state_dict(),
        names,
        scheduler,
        steps_per_scheduler_step,
        horizon,
        frozen=outside,
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
    """Writes a run from :func:`from_torch` back into torch's objects, in place, all or nothing.

    The model's parameters take ``params`` by name; the optimizer takes every
    buffer and step (``load_state_dict``; a parameter whose step is 0 has no
    state, as in torch before its first gradient; a momentum buffer torch keeps
    while a group's momentum is 0 is kept); the scheduler, stepped on the host
    from where it stands to ``last_epoch = count // steps_per_scheduler_step``,
    takes its new position (``last_epoch``, ``_last_lr``, ``_step_count``, ...)
    and puts its lr in each group. torch then continues exactly as ``tx``
    would. ``steps_per_scheduler_step`` is derived again from the optimizer's
    steps and the scheduler's ``last_epoch`` as they stood when the run left
    (the objects given to :func:`from_torch`, or a copy taken then), so it is
    the split ``from_torch`` used; one that contradicts them is refused. A
    ``ReduceLROnPlateau`` is not stepped: the state's lrs must be the ones it
    left in the groups (``plateau.follow``). Without a scheduler the groups keep
    their hyperparameters (those ``tx`` was built from). The groups keep
    torch's own keys, nothing more.

    Give the scheduler to both directions or to neither. A scheduler given only
    here moves to ``count // steps_per_scheduler_step`` as if the JAX run had
    followed it (it did not: each group kept its lr); one given only to
    ``from_torch`` stays where it was, and the groups keep the lr they had when
    the run left.

    Every check runs before the first write: the names (every optimizer
    parameter's; a model parameter outside the optimizer may be given, and is
    then written too; no other name), each array's shape and dtype against its
    torch parameter (no cast), arrays deleted by a ``jax.jit`` that donated
    them, steps and counts (integers >= 0, one count for all groups), the
    scheduler's position. The writes are staged: if one fails (an exception
    in the middle), the model, the optimizer and the scheduler are put back as
    they were, and the exception propagates. Besides the new optimizer state,
    this holds one copy of the model's parameters while it writes.

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
        ``opt_state`` that does not fit the optimizer's groups (or comes from
        another model); a deleted array; a step or count that is not an integer
        >= 0; a scheduler already past the state's position; a
        ``steps_per_scheduler_step`` that is not a positive int or contradicts
        the optimizer's steps and ``last_epoch``; plateau lrs not followed.
        Nothing is written then.
    """
    who = "to_torch"
    # 1. Every check, and every new tensor built, before anything of torch's changes.
    names, outside = _named_ids(model, optimizer, who)
    model_params = dict(model.named_parameters())
    written = _checked_params(params, names, outside, model_params, who)
    states = _rmsprop_states(opt_state, len(optimizer.param_groups), who)
    _check_alive(params, written, states, who)
    count = _count_of(states, who)
    state_dict = optimizer.state_dict()
    state_dict["state"] = _torch_state(states, state_dict, names, model_params, who)
    # 2. The scheduler: a detached copy stepped to the state's position (nothing written).
    twin = _stepped_scheduler(scheduler, optimizer, opt_state, count, steps_per_scheduler_step)
    if twin is not None:
        for group, twin_group in zip(state_dict["param_groups"], twin.optimizer.param_groups):
            # torch's own group keys only, not the stand-in optimizer's (SGD's dampening, ...).
            group.update(
                {key: v for key, v in twin_group.items() if key in group and key != "params"}
            )
    # 3. The writes, staged: an exception in any of them puts back what was written.
    _write_staged(optimizer, state_dict, model_params, params, written, scheduler, twin)


def _checked_params(
    params: Any, names: list, outside: list, model_params: Mapping, who: str
) -> list:
    """The names ``params`` writes, in the model's order, each array checked against torch's."""
    if not isinstance(params, Mapping):
        raise ValueError(
            f"{who}: params must be a dict keyed by the model's parameter names "
            f"{sorted(names)}; got {type(params).__name__}"
        )
    missing = [name for name in names if name not in params]
    extra = sorted(set(params) - set(names) - set(outside), key=str)
    if missing or extra:
        raise ValueError(
            f"{who}: params must be a dict keyed by the model's parameter names "
            f"{sorted(names)} (and, optionally, those outside the optimizer {outside}); "
            f"missing: {missing}, not the model's parameters: {extra}"
        )
    written = [name for name in model_params if name in params]
    for name in written:
        value, target = params[name], model_params[name]
        if not hasattr(value, "dtype"):
            raise TypeError(
                f"{who}: params[{name!r}] must be an array, got {type(value).__name__}"
            )
        _check_like(f"params[{name!r}]", value, name, target, who)
    return written


def _check_like(what: str, value: Any, name: str, target: Any, who: str) -> None:
    """``value`` must have the torch parameter's shape and dtype: nothing is cast."""
    if tuple(np.shape(value)) != tuple(target.shape) or _dtype_name(value) != _dtype_name(target):
        raise ValueError(
            f"{who}: {what} is {_dtype_name(value)}{list(np.shape(value))}, the model's "
            f"parameter {name!r} is {_dtype_name(target)}{list(target.shape)}: nothing is "
            "cast or reshaped (is it another run's, or another model's?)"
        )


def _deleted(x: Any) -> bool:
    return isinstance(x, jax.Array) and x.is_deleted()


def _check_alive(params: Mapping, written: list, states: list, who: str) -> None:
    """Refuses arrays a ``jax.jit`` deleted (donated with ``donate_argnums``)."""
    advice = (
        "was deleted, donated to a jax.jit (donate_argnums / donate_argnames): pass the "
        "arrays that jitted function returned"
    )
    for name in written:
        if _deleted(params[name]):
            raise ValueError(f"{who}: params[{name!r}] {advice}")
    for i, state in enumerate(states):
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            if _deleted(leaf):
                raise ValueError(
                    f"{who}: opt_state, param group {i}'s {jax.tree_util.keystr(path)} {advice}"
                )


def _count_of(states: list, who: str) -> int:
    counts = {step_count(s.count, f"{who}: param group {i}'s count") for i, s in enumerate(states)}
    if len(counts) != 1:
        raise ValueError(f"{who}: the groups' states have different counts {sorted(counts)}")
    return counts.pop()


def _leaf_names(tree: Any, who: str, group: int) -> list:
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = getattr(path[0], "key", None) if len(path) == 1 else None
        if not isinstance(key, str):
            raise ValueError(
                f"{who}: the state of param group {group} is not keyed by parameter names "
                f"(found {jax.tree_util.keystr(path)}): it did not come from from_torch's tx"
            )
        names.append(key)
    return names


def _torch_state(
    states: list, state_dict: Mapping, names: list, model_params: Mapping, who: str
) -> dict:
    """torch's ``state`` for ``load_state_dict``, checked against the model, new tensors."""
    kept = state_dict["state"]  # the optimizer's own entries: momentum buffers it keeps
    torch_state, position = {}, 0
    for i, (group, state) in enumerate(zip(state_dict["param_groups"], states)):
        group_names = names[position : position + len(group["params"])]
        position += len(group["params"])
        leaf_names = _leaf_names(state.square_avg, who, i)
        if sorted(leaf_names) != sorted(group_names):
            raise ValueError(
                f"{who}: the state of param group {i} holds {sorted(leaf_names)}, the group's "
                f"parameters are {sorted(group_names)}: it did not come from from_torch's tx "
                "for this optimizer"
            )
        steps = np.asarray(state.step)
        if steps.shape != (len(leaf_names),):
            raise ValueError(
                f"{who}: param group {i}'s step has shape {steps.shape}; it must be a vector "
                f"with one entry per parameter ({len(leaf_names)})"
            )
        step_of = {
            name: step_count(step, f"{who}: param group {i}'s step of {name!r}")
            for name, step in zip(leaf_names, steps.tolist())
        }
        buffers = {}
        for key in ("square_avg", "momentum_buffer", "grad_avg"):
            tree = getattr(state, key)
            if tree is not None:
                buffers[key] = _in_order(tree, group_names, who, i)
                for name, value in zip(group_names, buffers[key]):
                    what = f"opt_state's {key} of {name!r}"
                    _check_like(what, value, name, model_params[name], who)
        hyperparams = {key: group[key] for key in (*_FLOAT_KEYS, "centered", "maximize")}
        sub = to_torch_state_dict(
            hyperparams,
            state._replace(
                square_avg=buffers["square_avg"],
                momentum_buffer=buffers.get("momentum_buffer"),
                grad_avg=buffers.get("grad_avg"),
                step=np.asarray([step_of[name] for name in group_names], np.int32),
            ),
        )
        for j, entry in sub["state"].items():
            torch_id = group["params"][j]
            buffer = kept.get(torch_id, {}).get("momentum_buffer")
            if "momentum_buffer" not in entry and buffer is not None:
                # torch keeps it while the group's momentum is 0, and uses it again later.
                entry["momentum_buffer"] = buffer
            torch_state[torch_id] = entry
    return torch_state


def _stepped_scheduler(
    scheduler: Any, optimizer: Any, opt_state: Any, count: int, steps_per_scheduler_step: Any
):
    """A detached copy of ``scheduler`` stepped to the state's position; ``None`` without one.

    A ``ReduceLROnPlateau`` is not stepped (``None``): the state's lrs must be its.
    """
    if scheduler is None:
        return None
    if is_plateau(scheduler):
        check_followed(opt_state, optimizer, "to_torch")
        return None
    check_translatable(scheduler)
    target = scheduler_target(scheduler, optimizer, count, steps_per_scheduler_step, "to_torch")
    return advanced_copy(scheduler, optimizer.param_groups, target)


def _write_parameter(target: Any, value: Any) -> None:
    """Copies ``value`` into the torch parameter ``target`` in place."""
    target.copy_(_tensor_view(value))


def _scheduler_snapshot(scheduler: Any) -> tuple:
    own = {
        key: copy.deepcopy(value)
        for key, value in scheduler.__dict__.items()
        if key not in ("optimizer", "_schedulers")
    }
    return own, [_scheduler_snapshot(child) for child in getattr(scheduler, "_schedulers", ())]


def _scheduler_restore(scheduler: Any, snapshot: tuple) -> None:
    own, children = snapshot
    for key in [k for k in scheduler.__dict__ if k not in own]:
        if key not in ("optimizer", "_schedulers"):
            del scheduler.__dict__[key]
    scheduler.__dict__.update(own)
    for child, child_snapshot in zip(getattr(scheduler, "_schedulers", ()), children):
        _scheduler_restore(child, child_snapshot)


def _write_staged(
    optimizer: Any,
    state_dict: Mapping,
    model_params: Mapping,
    params: Mapping,
    written: list,
    scheduler: Any,
    twin: Any,
) -> None:
    """The optimizer, the model, the scheduler; on any exception, each put back as it was.

    ``load_state_dict`` replaces the optimizer's ``state`` and ``param_groups``
    with new objects, leaving the old ones (and their tensors) as they were:
    they are put back. A parameter is copied before it is overwritten.
    """
    torch = _import_torch()
    old_state, old_groups = optimizer.state, optimizer.param_groups
    saved_scheduler = None if twin is None else _scheduler_snapshot(scheduler)
    saved: dict = {}
    try:
        optimizer.load_state_dict(state_dict)
        with torch.no_grad():
            for name in written:
                saved[name] = model_params[name].detach().clone()
                _write_parameter(model_params[name], params[name])
        if twin is not None:
            write_state(twin, scheduler)
    except BaseException:
        with torch.no_grad():
            for name, value in saved.items():
                model_params[name].copy_(value)
        optimizer.__dict__.update(state=old_state, param_groups=old_groups)
        if saved_scheduler is not None:
            _scheduler_restore(scheduler, saved_scheduler)
        raise


def _in_order(tree: Mapping, names: list, who: str, group: int) -> list:
    try:
        return [tree[name] for name in names]
    except (KeyError, TypeError):
        raise ValueError(
            f"{who}: the state of param group {group} is not keyed by its parameters' names "
            f"{names}: it did not come from from_torch's tx for this optimizer"
        ) from None
