"""A stateful RMSprop that mirrors torch's scripted ``_FunctionalRMSprop``.

``torch.distributed.optim.functional_rmsprop._FunctionalRMSprop`` keeps its
parameters in ``param_group["params"]`` and its state in ``state`` and updates
them in place on ``step(gradients)``. :class:`FunctionalRMSprop` keeps the same
attributes and the same calling convention, runs one jit-compiled step built
on :func:`jrmsprop.rmsprop` (no second copy of the math), and replaces the
arrays inside the caller's container, since JAX arrays cannot be changed in
place.
"""

from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrmsprop.transform import RMSpropState, rmsprop
from jrmsprop.validation import HYPERPARAM_ERRORS, check_leaves, check_pair, path_str

_HYPER_NAMES = ("lr", "alpha", "eps", "weight_decay", "momentum")
_BUFFERS = ("square_avg", "grad_avg", "momentum_buffer")
_ARRAY_TYPES = (jax.Array, np.ndarray)


class _Spec(NamedTuple):
    """Shape and dtype of a parameter, as the optimizer state holds them."""

    shape: tuple
    dtype: Any


def _is_none(x: Any) -> bool:
    return x is None


def _unit_update(params, grads, states, hyper, centered, maximize, use_momentum, decay):
    """Steps a list of (param, grad, state) units with ONE ``rmsprop`` update.

    The hyperparameters are traced values, so changing them does not
    recompile. Two of torch's branches are structural: the momentum buffer is
    handed to the math only when ``use_momentum`` (torch's ``momentum > 0``)
    and left untouched otherwise, and the weight-decay term exists only when
    ``decay`` (torch's ``weight_decay != 0``). A traced decay of 0 would give
    the same numbers but costs a full extra pass over memory on CPU: XLA
    materializes ``g + weight_decay * p`` because two fusions read it.
    """
    lr, alpha, eps, weight_decay, momentum = (hyper[i] for i in range(5))
    # All five stay traced: without a buffer the math ignores ``momentum``.
    tx = rmsprop(
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay if decay else 0.0,
        momentum=momentum,
        centered=centered,
        maximize=maximize,
    )
    state = RMSpropState(
        count=jnp.zeros([], jnp.int32),
        step=jnp.zeros([len(params)], jnp.int32),
        square_avg=[s[0] for s in states],
        grad_avg=[s[1] for s in states] if centered else None,
        momentum_buffer=[s[2] for s in states] if use_momentum else None,
    )
    updates, new = tx.update(list(grads), state, list(params))
    new_params = [p + u for p, u in zip(params, updates)]
    new_states = [
        (
            new.square_avg[i],
            new.grad_avg[i] if centered else old[1],
            new.momentum_buffer[i] if use_momentum else old[2],
        )
        for i, old in enumerate(states)
    ]
    return new_params, new_states


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs ``[start, stop)`` of sorted member indices."""
    runs: list[tuple[int, int]] = []
    for k in positions:
        if runs and runs[-1][1] == k:
            runs[-1] = (runs[-1][0], k + 1)
        else:
            runs.append((k, k + 1))
    return runs


# foreach=True: a leaf this large is a unit of its own (concatenating it would
# only add a copy), and at most this many small leaves share one unit. XLA's
# CPU compile time grows faster than linearly with the number of outputs of
# one executable (each output leaf is its own kernel), so bounded units keep
# the first step's compile short; units of the same signature share one
# executable, and each unit is still one fused computation.
_LARGE_LEAF = 1 << 16
_UNIT_LEAVES = 64


def _group_positions(dtypes: list, foreach: bool, sizes: list | None = None) -> list[list[int]]:
    """Which parameter positions share one state unit.

    ``foreach=False``: one unit per parameter. ``foreach=True``: parameters
    of one dtype, in order, whose state is flat buffers; with ``sizes``, large
    leaves get their own unit and small ones are chunked by ``_UNIT_LEAVES``.
    """
    if not foreach:
        return [[i] for i in range(len(dtypes))]
    groups: dict = {}
    units: list[list[int]] = []
    for i, dtype in enumerate(dtypes):
        if sizes is not None and sizes[i] >= _LARGE_LEAF:
            units.append([i])
            continue
        unit = groups.get(jnp.dtype(dtype))
        if unit is None or (sizes is not None and len(unit) >= _UNIT_LEAVES):
            unit = groups[jnp.dtype(dtype)] = []
            units.append(unit)
        unit.append(i)
    return units


def _step_impl(
    params, gradients, states, hyper, *, centered, maximize, use_momentum, decay, foreach
):
    """The jitted step: new parameter leaves and new unit states.

    Runs under ``jax.jit``; everything below happens at trace time, once per
    structure, shapes, dtypes and ``None`` pattern. Shape and dtype checks
    live here, so a bad gradient raises while tracing, before any donated
    buffer is touched.
    """
    with_path = jax.tree_util.tree_flatten_with_path(gradients, is_leaf=_is_none)[0]
    for (path, g), p in zip(with_path, params):
        check_pair(path, g, p, "gradients", "params")
    grads = [g for _, g in with_path]
    units = _group_positions([p.dtype for p in params], foreach)
    new_params = list(params)
    new_states = list(states)
    unit_p, unit_g, unit_s, plans = [], [], [], []
    for u, members in enumerate(units):
        stepping = [k for k, i in enumerate(members) if grads[i] is not None]
        if not stepping:
            continue
        state = states[u]
        if len(members) == 1:
            (i,) = members
            unit_p.append(params[i])
            unit_g.append(grads[i])
            unit_s.append(state)
            plans.append((u, members, None))
            continue
        # Flat buffers: the stepping members' segments, in contiguous runs, so
        # the common all-gradients case is one fused elementwise computation.
        sizes = [math.prod(params[i].shape) for i in members]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        runs = [(offsets[a], offsets[b]) for a, b in _runs(stepping)]
        unit_p.append(jnp.concatenate([params[members[k]].ravel() for k in stepping]))
        unit_g.append(jnp.concatenate([grads[members[k]].ravel() for k in stepping]))
        full = runs == [(0, offsets[-1])]

        def segments(buf, runs=runs, full=full):
            if buf is None or full:
                return buf
            return jnp.concatenate([buf[a:b] for a, b in runs])

        unit_s.append(tuple(segments(b) for b in state))
        plans.append((u, members, (stepping, sizes, runs, full)))

    stepped_p, stepped_s = _unit_update(
        unit_p, unit_g, unit_s, hyper, centered, maximize, use_momentum, decay
    )
    for (u, members, flat), p, s in zip(plans, stepped_p, stepped_s):
        if flat is None:
            new_params[members[0]] = p
            new_states[u] = s
            continue
        stepping, sizes, runs, full = flat
        pieces = jnp.split(p, np.cumsum([sizes[k] for k in stepping])[:-1].tolist())
        for k, piece in zip(stepping, pieces):
            new_params[members[k]] = piece.reshape(params[members[k]].shape)
        if full:
            new_states[u] = s
            continue
        merged = []
        for old, seg, updated in zip(states[u], s, (True, centered, use_momentum)):
            if old is None or not updated:
                merged.append(old)
                continue
            at = 0
            for a, b in runs:
                old = jax.lax.dynamic_update_slice(old, seg[at : at + b - a], (a,))
                at += b - a
            merged.append(old)
        new_states[u] = tuple(merged)
    return tuple(new_params), tuple(new_states)


# Module level, so optimizers of the same structure share compiled steps.
# Params (0) and state (2) are donated: a step holds one copy of each.
_step_jit = jax.jit(
    _step_impl,
    static_argnames=("centered", "maximize", "use_momentum", "decay", "foreach"),
    donate_argnums=(0, 2),
)


def _hyper_value(name: str, value: Any) -> float:
    """A ``defaults`` entry as a float, with torch's error when it is invalid."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"FunctionalRMSprop: defaults[{name!r}] must be a real number, "
            f"got {type(value).__name__}"
        ) from None
    if not 0.0 <= number:  # also rejects NaN
        raise ValueError(HYPERPARAM_ERRORS[name].format(number))
    return number


def _check_distinct(leaves: list, paths: list) -> None:
    """``ValueError`` when one array sits at two positions: it cannot be donated twice."""
    first: dict[int, int] = {}
    for i, leaf in enumerate(leaves):
        j = first.setdefault(id(leaf), i)
        if j != i:
            raise ValueError(
                f"FunctionalRMSprop: params {path_str(paths[j])} and {path_str(paths[i])} are "
                "the same array; each parameter needs its own array (the step donates them)"
            )


def _to_numpy(value: Any) -> np.ndarray:
    """A state value (numpy, JAX, or a torch tensor when torch is around) as numpy."""
    if type(value).__module__.startswith("torch"):
        import torch  # only when given a torch value: torch is not a dependency

        if isinstance(value, torch.Tensor):
            return value.detach().cpu().resolve_conj().numpy()
    return np.asarray(value)


def _write_back(old: Any, new: Any) -> Any:
    """Puts ``new``'s leaves into ``old``'s lists and dicts, in place.

    Lists and dicts keep their identity (the caller's references see the new
    arrays); any other node (tuple, NamedTuple, a registered dataclass) cannot
    be changed in place and is replaced by its rebuilt copy.
    """
    if isinstance(old, list):
        for i, item in enumerate(old):
            old[i] = _write_back(item, new[i])
        return old
    if isinstance(old, dict):
        for key in old:
            old[key] = _write_back(old[key], new[key])
        return old
    return new


class FunctionalRMSprop:
    r"""torch's scripted ``_FunctionalRMSprop``, on JAX arrays.

    The same constructor, attributes and ``step(gradients)`` as
    ``torch.distributed.optim.functional_rmsprop._FunctionalRMSprop``; the
    math is :func:`jrmsprop.rmsprop` (torch's RMSprop, number for number).

    * ``params`` is a list of arrays, as in torch, or any pytree of float or
      complex arrays. Parameters are identified by **position** (their index
      in ``jax.tree.leaves(params)``), since JAX arrays are not hashable.
    * ``step(gradients)`` takes a list (or pytree of the same structure), with
      ``None`` for a parameter that gets no gradient this step (it is skipped:
      value, state and ``step`` unchanged). It replaces the arrays inside
      ``param_group["params"]``: lists and dicts at any depth are updated in
      place, so the caller's list sees the new values. Other containers
      (tuples, NamedTuples, equinox modules) cannot be changed in place: they
      are rebuilt, and when the root itself is immutable
      ``param_group["params"]`` is rebound to the new pytree; read parameters
      back from there.
    * One compiled executable per structure, shapes, dtypes and ``None``
      pattern (shared by all optimizers). The numbers in ``defaults`` are
      runtime inputs: setting ``opt.defaults["lr"]`` (a hand-written
      schedule) never recompiles. Structural, like torch's own branches:
      ``centered``, ``maximize``, ``momentum > 0`` (a momentum buffer is
      used) and ``weight_decay != 0`` (the decay term exists: a traced zero
      would cost CPU a full extra pass over memory); each setting compiles
      once, the first time it is used.
    * **Donation.** The state buffers and the parameter arrays are donated
      to the compiled step: a step holds one copy of each, as torch's
      in-place update does. A parameter array taken out of the container
      before a step (``w = params[0]``) is deleted by that step, and reading
      it raises ``RuntimeError: Array has been deleted``; read parameters
      again from the container after each step, and ``jnp.copy`` one you
      want to keep. Gradients are not donated.
    * **Atomic steps.** Every check (gradient count and structure, shapes,
      dtypes, non-array gradients, negative or NaN values in ``defaults``,
      a missing momentum buffer) runs before anything is donated: a step
      that raises leaves parameters and state exactly as they were.
    * ``state`` is ``{position: {"step", "square_avg", "momentum_buffer",
      "grad_avg"}}`` with torch's keys, created lazily at a parameter's first
      gradient (``momentum_buffer`` when ``momentum > 0`` at that moment,
      ``grad_avg`` when centered); ``step`` is an int32 scalar. It is a
      snapshot built on each access: change state with
      :meth:`load_state_dict`.
    * ``foreach=True`` keeps the state of all parameters of one dtype in flat
      buffers and steps each dtype group in one fused computation over the
      concatenated gradients: the same numbers as ``foreach=False``, and far
      less compile time and per-leaf overhead for many small parameters.
    * :meth:`state_dict` / :meth:`load_state_dict` use ``torch.optim``'s
      layout, with numpy values; a state dict saved by torch (tensor values)
      loads directly.

    Args:
      params: the parameters: a list of float or complex arrays, or a pytree.
      lr: learning rate.
      alpha: smoothing constant of the squared-gradient average.
      eps: added to the denominator, outside the square root.
      weight_decay: coupled L2 penalty.
      momentum: momentum factor.
      centered: normalize by the variance estimate.
      foreach: keep flat state per dtype and step each dtype in one fused
        computation.
      maximize: maximize the objective instead of minimizing it.
      _allow_empty_param_list: accept an empty ``params``, as torch's flag.

    Example::

      >>> import jax.numpy as jnp, jrmsprop
      >>> params = [jnp.ones(3), jnp.zeros(2)]
      >>> opt = jrmsprop.FunctionalRMSprop(params, lr=0.1, momentum=0.9)
      >>> opt.step([jnp.array([1.0, -2.0, 0.5]), None])
      >>> opt.defaults["lr"] = 0.05  # no recompile
      >>> opt.step([jnp.ones(3), jnp.ones(2)])
      >>> params[0]  # the caller's list holds the new arrays
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        foreach: bool = False,
        maximize: bool = False,
        _allow_empty_param_list: bool = False,
    ) -> None:
        self.defaults = {
            "lr": lr,
            "alpha": alpha,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
        }
        for name in _HYPER_NAMES:
            _hyper_value(name, self.defaults[name])
        self.centered = centered
        self.foreach = foreach
        self.maximize = maximize

        leaves, treedef = jax.tree.flatten(params)
        if len(leaves) == 0 and not _allow_empty_param_list:
            raise ValueError("optimizer got an empty parameter list")
        check_leaves(params, "params")
        paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        _check_distinct(leaves, paths)
        if not all(isinstance(leaf, jax.Array) for leaf in leaves):
            # numpy parameters become JAX arrays once, so they can be donated.
            leaves = [jnp.asarray(leaf) for leaf in leaves]
            params = _write_back(params, jax.tree.unflatten(treedef, leaves))
        # NOTE: one param_group, as in torch's scripted class.
        self.param_group = {"params": params}

        self._treedef = treedef
        self._paths = paths
        # The leaves this optimizer last wrote: if the container still holds
        # them, the parameters need no re-check (foreach's host-side checks).
        self._written = list(leaves)
        self._shapes = [tuple(leaf.shape) for leaf in leaves]
        self._dtypes = [jnp.dtype(leaf.dtype) for leaf in leaves]
        self._flat_list = type(params) is list and treedef == jax.tree.structure([0] * len(leaves))
        self._units = _group_positions(
            self._dtypes, foreach, [math.prod(shape) for shape in self._shapes]
        )
        self._pickers = [operator.itemgetter(*members) for members in self._units]
        self._unit_of = np.empty(len(leaves), np.int64)
        self._offset = np.zeros(len(leaves), np.int64)
        for u, members in enumerate(self._units):
            at = 0
            for i in members:
                self._unit_of[i] = u
                self._offset[i] = at
                at += math.prod(self._shapes[i])
        # Per unit: None until a member first gets a gradient, then
        # (square_avg, grad_avg | None, momentum_buffer | None).
        self._states: list[tuple | None] = [None] * len(self._units)
        # Host-side bookkeeping per position: RMSprop's math never reads
        # ``step``, so counting on the host costs the device nothing.
        self._steps = np.zeros(len(leaves), np.int64)
        self._has_state = np.zeros(len(leaves), bool)
        self._has_momentum = np.zeros(len(leaves), bool)
        # gradients treedef -> positions with a gradient (checked once per pattern).
        self._patterns: dict = {}

    # ------------------------------------------------------------------ step

    def _pattern(self, gradients: Any) -> tuple[list, np.ndarray, list[int]]:
        """Non-None gradient leaves, the positions they step, the units touched.

        The structure is checked once per ``None`` pattern (cached by treedef).
        """
        grad_leaves, grad_def = jax.tree.flatten(gradients)
        cached = self._patterns.get(grad_def)
        if cached is None:
            with_none, with_none_def = jax.tree.flatten(gradients, is_leaf=_is_none)
            if with_none_def != self._treedef:
                raise ValueError(
                    "FunctionalRMSprop: the structure of the gradients does not match the "
                    f"params: gradients are {with_none_def}, params are {self._treedef}"
                )
            stepping = np.flatnonzero([g is not None for g in with_none])
            units = sorted({int(u) for u in self._unit_of[stepping]})
            cached = self._patterns[grad_def] = (stepping, units)
        return grad_leaves, *cached

    def _check_arrays(self, param_leaves: list, grad_list: list) -> None:
        """Host-side check of every gradient (and any replaced parameter)."""
        shapes, dtypes = self._shapes, self._dtypes
        for g, p, shape, dtype in zip(grad_list, param_leaves, shapes, dtypes):
            if g is not None and (
                not isinstance(g, _ARRAY_TYPES) or g.shape != shape or g.dtype != dtype or g is p
            ):
                break
        else:
            if all(map(operator.is_, param_leaves, self._written)):
                return
        paths = self._paths
        _check_distinct(param_leaves, paths)
        for i, (g, p) in enumerate(zip(grad_list, param_leaves)):
            if not isinstance(p, _ARRAY_TYPES):
                raise TypeError(
                    f"FunctionalRMSprop: param_group['params'] leaf {i} is a "
                    f"{type(p).__name__}, not an array"
                )
            check_pair(paths[i], p, _Spec(shapes[i], dtypes[i]), "params", "the optimizer state")
            if g is not None and not isinstance(g, _ARRAY_TYPES):
                raise TypeError(
                    f"FunctionalRMSprop: gradient {path_str(paths[i])} is a "
                    f"{type(g).__name__}, not an array"
                )
            check_pair(paths[i], g, p, "gradients", "params")
            if g is p:
                raise ValueError(
                    f"FunctionalRMSprop: the gradient at {path_str(paths[i])} is the parameter "
                    "array itself, which the step donates: pass a copy"
                )

    def step(self, gradients: Any) -> None:
        """One RMSprop step on every parameter whose gradient is not ``None``.

        Args:
          gradients: a list (or pytree) matching ``param_group["params"]``,
            with ``None`` for parameters to skip.

        Raises:
          ValueError: the number of gradients differs from the number of
            params (torch's message), the structure or a shape differs, or a
            value in ``defaults`` is negative or NaN (torch's message).
          TypeError: a gradient is not an array, or its dtype differs from
            its parameter's.
        """
        params = self.param_group["params"]
        if isinstance(params, list) and isinstance(gradients, (list, tuple)):
            if len(params) != len(gradients):
                raise ValueError(
                    "the gradients passed in does not equal to the size of the parameters!"
                    + f"Params length: {len(params)}. "
                    + f"Gradients length: {len(gradients)}"
                )
            if isinstance(gradients, tuple):
                gradients = list(gradients)
        hyper = np.array(
            [_hyper_value(name, self.defaults[name]) for name in _HYPER_NAMES], np.float64
        )
        use_momentum = bool(hyper[4] > 0)
        param_leaves, param_def = jax.tree.flatten(params)
        if param_def != self._treedef:
            raise ValueError(
                "FunctionalRMSprop: param_group['params'] changed structure since the "
                f"optimizer was built: it is {param_def}, it was {self._treedef}"
            )
        grad_leaves, stepping, units = self._pattern(gradients)
        if not self.foreach:
            # One dispatch: the jitted step checks shapes and dtypes while
            # tracing, before anything is donated.
            for k, g in enumerate(grad_leaves):
                if not isinstance(g, _ARRAY_TYPES):
                    raise TypeError(
                        f"FunctionalRMSprop: gradient {k} (counting non-None gradients) is a "
                        f"{type(g).__name__}, not an array"
                    )
            grad_list = gradients
        else:
            # One dispatch per unit: everything is checked here, before the
            # first unit donates its buffers.
            grad_list = gradients if self._flat_list else self._treedef.flatten_up_to(gradients)
            self._check_arrays(param_leaves, grad_list)

        states = self._states
        new_mask = ~self._has_state[stepping]
        fresh = stepping[new_mask]
        if use_momentum:
            missing = stepping[~new_mask & ~self._has_momentum[stepping]]
            if missing.size:
                raise ValueError(
                    f"FunctionalRMSprop: momentum={hyper[4]} needs a momentum_buffer for "
                    f"parameter {int(missing[0])}, whose state was created with "
                    "momentum=0 (torch raises a KeyError here)"
                )
        if fresh.size:
            states = self._with_fresh_state(fresh, use_momentum)

        static = {
            "centered": bool(self.centered),
            "maximize": bool(self.maximize),
            "use_momentum": use_momentum,
            "decay": bool(hyper[3] != 0),
            "foreach": bool(self.foreach),
        }
        if not self.foreach:
            new_leaves, new_states = _step_jit(
                tuple(param_leaves), grad_list, tuple(states), hyper, **static
            )
        else:
            new_leaves = list(param_leaves)
            new_states = list(states)
            for u in units:
                pick = self._pickers[u]
                members = self._units[u]
                unit_params = pick(param_leaves)
                unit_grads = pick(grad_list)
                if len(members) == 1:
                    unit_params, unit_grads = (unit_params,), (unit_grads,)
                out_params, (new_states[u],) = _step_jit(
                    unit_params, list(unit_grads), (states[u],), hyper, **static
                )
                for i, leaf in zip(members, out_params):
                    new_leaves[i] = leaf
        # Nothing below can fail: the step is committed.
        self._states = list(new_states)
        self._steps[stepping] += 1
        if fresh.size:
            self._has_state[fresh] = True
            if use_momentum:
                self._has_momentum[fresh] = True
        self._written = list(new_leaves)
        if self._flat_list:
            params[:] = new_leaves
        else:
            new_tree = jax.tree.unflatten(self._treedef, new_leaves)
            self.param_group["params"] = _write_back(params, new_tree)

    def _with_fresh_state(self, fresh: np.ndarray, use_momentum: bool) -> list:
        """Unit states with zero buffers for units that first get a gradient.

        Returns a new list: ``self._states`` changes only once the step
        succeeds. Segments of a flat unit buffer that were never stepped are
        still zero, so an existing buffer already holds the fresh state.
        """
        states = list(self._states)
        for u in sorted({int(self._unit_of[i]) for i in fresh}):
            members = self._units[u]
            dtype = self._dtypes[members[0]]
            shape = (
                self._shapes[members[0]]
                if len(members) == 1
                else (sum(math.prod(self._shapes[i]) for i in members),)
            )
            square_avg, grad_avg, buf = states[u] or (None, None, None)
            if square_avg is None:
                square_avg = jnp.zeros(shape, dtype)
            if self.centered and grad_avg is None:
                grad_avg = jnp.zeros(shape, dtype)
            if use_momentum and buf is None:
                buf = jnp.zeros(shape, dtype)
            states[u] = (square_avg, grad_avg, buf)
        return states

    # ----------------------------------------------------------------- state

    def _buffer(self, i: int, which: int) -> jax.Array | None:
        state = self._states[self._unit_of[i]]
        buf = None if state is None else state[which]
        if buf is None or len(self._units[self._unit_of[i]]) == 1:
            return buf
        start = int(self._offset[i])
        size = math.prod(self._shapes[i])
        return buf[start : start + size].reshape(self._shapes[i])

    @property
    def state(self) -> dict[int, dict[str, jax.Array]]:
        """Per position with state, torch's keys: a snapshot built on access."""
        out = {}
        for i in np.flatnonzero(self._has_state).tolist():
            entry = {
                "step": jnp.asarray(self._steps[i], jnp.int32),
                "square_avg": self._buffer(i, 0),
            }
            if self._has_momentum[i]:
                entry["momentum_buffer"] = self._buffer(i, 2)
            if self.centered:
                entry["grad_avg"] = self._buffer(i, 1)
            out[i] = entry
        return out

    def state_dict(self) -> dict[str, Any]:
        """The state in ``torch.optim``'s layout, with numpy values.

        Returns:
          ``{"state": {position: {"step": float32 0-d array, "square_avg":
          ..., ...}}, "param_groups": [{lr, alpha, eps, weight_decay,
          momentum, centered, foreach, maximize, "params": [0, ..., n-1]}]}``.
          ``step`` is a float, as torch keeps it.
        """
        state = {}
        for i, entry in self.state.items():
            state[i] = {
                key: np.asarray(value, np.float32) if key == "step" else np.array(value)
                for key, value in entry.items()
            }
        group = dict(self.defaults)
        group.update(centered=self.centered, foreach=self.foreach, maximize=self.maximize)
        group["params"] = list(range(len(self._shapes)))
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict from :meth:`state_dict` or from torch.

        torch's ``torch.optim.RMSprop(...).state_dict()`` and the same layout
        with numpy values both load; tensors are converted (torch is imported
        only when given tensors). As torch's ``load_state_dict`` does, the
        group's lr, alpha, eps, weight_decay, momentum, centered and maximize
        replace this optimizer's. Nothing changes if the dict is invalid.

        Args:
          state_dict: ``{"state": {index: {...}}, "param_groups": [{...,
            "params": [indices]}]}``.

        Raises:
          ValueError: wrong number of groups or parameters, an unknown index,
            a shape mismatch, or buffers that do not match ``centered``.
          TypeError: a buffer whose kind (float / complex) differs from its
            parameter's.
        """
        groups = state_dict["param_groups"]
        if len(groups) != 1:
            raise ValueError(
                "loaded state dict has a different number of parameter groups: "
                f"{len(groups)}, FunctionalRMSprop has 1"
            )
        group = groups[0]
        n = len(self._shapes)
        if len(group["params"]) != n:
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size "
                f"of optimizer's group: {len(group['params'])} parameters, expected {n}"
            )
        position = {index: k for k, index in enumerate(group["params"])}
        defaults = {name: group.get(name, self.defaults[name]) for name in _HYPER_NAMES}
        for name in _HYPER_NAMES:
            defaults[name] = _hyper_value(name, defaults[name])
        centered = bool(group.get("centered", self.centered))
        maximize = bool(group.get("maximize", self.maximize))

        steps = np.zeros(n, np.int64)
        has_state = np.zeros(n, bool)
        has_momentum = np.zeros(n, bool)
        buffers: dict[int, list] = {}
        for index, entry in state_dict["state"].items():
            if index not in position:
                raise ValueError(f"loaded state dict has state for unknown parameter {index}")
            i = position[index]
            if centered != ("grad_avg" in entry):
                raise ValueError(
                    f"loaded state for parameter {index} "
                    f"{'lacks' if centered else 'has'} a grad_avg, but centered={centered}"
                )
            steps[i] = int(np.rint(_to_numpy(entry["step"])))
            has_state[i] = True
            has_momentum[i] = "momentum_buffer" in entry
            buffers[i] = [self._checked(index, i, key, entry.get(key)) for key in _BUFFERS]

        states: list[tuple | None] = []
        for members in self._units:
            loaded = [buffers.get(i) for i in members]
            if all(b is None for b in loaded):
                states.append(None)
                continue
            dtype = self._dtypes[members[0]]
            unit = []
            for which in range(3):
                parts = [b[which] if b is not None else None for b in loaded]
                if all(p is None for p in parts):
                    unit.append(None)
                    continue
                if which == 1 and not centered:
                    unit.append(None)
                    continue
                if len(members) == 1:
                    unit.append(jnp.asarray(parts[0], dtype))
                    continue
                flat = [
                    np.zeros(math.prod(self._shapes[i]), dtype) if p is None else p.ravel()
                    for i, p in zip(members, parts)
                ]
                unit.append(jnp.asarray(np.concatenate(flat), dtype))
            states.append(tuple(unit))

        self.defaults.update(defaults)
        self.centered = centered
        self.maximize = maximize
        self._states = states
        self._steps = steps
        self._has_state = has_state
        self._has_momentum = has_momentum

    def _checked(self, index: Any, i: int, key: str, value: Any) -> np.ndarray | None:
        if value is None:
            return None
        array = _to_numpy(value)
        if tuple(array.shape) != self._shapes[i]:
            raise ValueError(
                f"loaded state {key!r} of parameter {index} has shape {tuple(array.shape)}, "
                f"the parameter has shape {self._shapes[i]}"
            )
        dtype = self._dtypes[i]
        if np.iscomplexobj(array) != jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"loaded state {key!r} of parameter {index} is {array.dtype}, "
                f"the parameter is {dtype}"
            )
        return array.astype(dtype)

    # ------------------------------------------------------------------ repr

    def __repr__(self) -> str:
        hyper = ", ".join(f"{name}={self.defaults[name]!r}" for name in _HYPER_NAMES)
        buffers = [b for s in self._states if s is not None for b in s if b is not None]
        state_bytes = sum(b.size * b.dtype.itemsize for b in buffers)
        elements = sum(math.prod(s) for s in self._shapes)
        return (
            f"FunctionalRMSprop({hyper}, centered={self.centered}, maximize={self.maximize}, "
            f"foreach={self.foreach}; {len(self._shapes)} params, {elements:,} elements, "
            f"{int(self._has_state.sum())} with state, state {_format_bytes(state_bytes)})"
        )


def _format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
