"""The units of a :class:`~jrmsprop.FunctionalRMSprop` step: where state lives, how it is stepped.

A unit is a set of parameters whose state shares buffers and is stepped by
one compiled computation:

* ``foreach=False``: every parameter is a unit of its own, with buffers of its
  shape, and one compiled call steps every unit that gets a gradient.
* ``foreach=True``: parameters of one dtype share flat 1-D buffers (their
  segments laid end to end, in leaf order), and each unit is stepped by its
  own compiled call over the concatenated gradients. Units of the same
  signature share one executable, so the first step compiles a handful of
  small programs instead of one with an output per leaf.

The math is :func:`jrmsprop.transform.step_leaf`'s; nothing here writes it
again. A unit's state is a triple ``(square_avg, grad_avg, momentum_buffer)``
with ``None`` for a buffer it does not keep, stored as its ``square_avg``
alone when it keeps no other buffer (:func:`pack`, :func:`unpack`). In a
flat buffer, the segment of a parameter that never had that buffer is zero:
it is written only when the parameter steps with that buffer in use.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jrmsprop.transform import step_leaf
from jrmsprop.validation import UPCASTS

# foreach=True: a leaf this large is a unit of its own (concatenating it would
# only add a copy), and at most this many small leaves share one unit. XLA's
# CPU compile time grows faster than linearly with the number of outputs of
# one executable (each output leaf is its own kernel), so bounded units keep
# the first step's compile short.
LARGE_LEAF = 1 << 16
UNIT_LEAVES = 64

# The three buffers of a unit's state, in order.
BUFFERS = ("square_avg", "grad_avg", "momentum_buffer")


def pack(state: tuple | None) -> Any:
    """A unit's state as stored and given to :func:`step_units`.

    Plain RMSprop (no momentum, not centered) keeps ``square_avg`` alone: it
    is stored as that array, not as a tuple with two ``None``s, which spares
    building and reading one tuple per parameter on each step (a host cost
    that shows at many small leaves). Other states stay triples.
    """
    if state is not None and state[1] is None and state[2] is None:
        return state[0]
    return state


def unpack(state: Any) -> tuple:
    """The ``(square_avg, grad_avg, momentum_buffer)`` triple of a stored state (see :func:`pack`).

    No state (``None``) is three ``None``s, which :func:`pack` turns back into ``None``.
    """
    if type(state) is tuple:
        return state
    return (state, None, None)


# The hyperparameters, in the order of the array handed to :func:`step_units`.
HYPER_ORDER = ("lr", "alpha", "eps", "weight_decay", "momentum")


def group_positions(dtypes: Sequence[Any], sizes: Sequence[int], foreach: bool) -> list[list[int]]:
    """Which parameter positions share one unit.

    Args:
      dtypes: per position, the parameter's dtype.
      sizes: per position, the parameter's number of elements.
      foreach: ``False``: one unit per parameter. ``True``: parameters of
        one dtype, in order, at most ``UNIT_LEAVES`` per unit; a parameter of
        at least ``LARGE_LEAF`` elements is a unit of its own.

    Returns:
      The units, each a list of positions in increasing order.
    """
    if not foreach:
        return [[i] for i in range(len(dtypes))]
    open_units: dict = {}
    units: list[list[int]] = []
    for i, (dtype, size) in enumerate(zip(dtypes, sizes)):
        if size >= LARGE_LEAF:
            units.append([i])
            continue
        unit = open_units.get(jnp.dtype(dtype))
        if unit is None or len(unit) >= UNIT_LEAVES:
            unit = open_units[jnp.dtype(dtype)] = []
            units.append(unit)
        unit.append(i)
    return units


class Layout:
    """Where each parameter's state lives.

    Attributes:
      units: per unit, the positions (indices in ``jax.tree.leaves(params)``
        order) that share its buffers.
      unit_of: per position, its unit.
      offset: per position, where its segment starts in its unit's flat
        buffers (0 in a unit of one parameter).
      shapes, dtypes: per position, the parameter's shape and dtype.
    """

    def __init__(self, shapes: Sequence[tuple], dtypes: Sequence[Any], foreach: bool) -> None:
        self.shapes = [tuple(s) for s in shapes]
        self.dtypes = [jnp.dtype(d) for d in dtypes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.units = group_positions(self.dtypes, self.sizes, foreach)
        self.unit_of = np.empty(len(self.shapes), np.int64)
        self.offset = np.zeros(len(self.shapes), np.int64)
        for u, members in enumerate(self.units):
            at = 0
            for i in members:
                self.unit_of[i] = u
                self.offset[i] = at
                at += self.sizes[i]

    def is_flat(self, u: int) -> bool:
        """Whether unit ``u`` keeps flat buffers (more than one parameter)."""
        return len(self.units[u]) > 1

    def buffer_shape(self, u: int) -> tuple:
        """The shape of unit ``u``'s buffers."""
        members = self.units[u]
        if not self.is_flat(u):
            return self.shapes[members[0]]
        return (sum(self.sizes[i] for i in members),)

    def zeros(self, u: int) -> jax.Array:
        """A zero buffer for unit ``u``."""
        return jnp.zeros(self.buffer_shape(u), self.dtypes[self.units[u][0]])

    def split(self, u: int, buffer: jax.Array | None) -> list:
        """Per member of unit ``u``, a new array (in its shape) holding its part of ``buffer``."""
        members = self.units[u]
        if buffer is None:
            return [None] * len(members)
        if not self.is_flat(u):
            return [jnp.copy(buffer)]
        return list(_split_flat(buffer, tuple(self.sizes[i] for i in members), self.shapes_of(u)))

    def split_host(self, u: int, buffer: jax.Array | None) -> list:
        """:meth:`split` into numpy arrays: one transfer per buffer."""
        members = self.units[u]
        if buffer is None:
            return [None] * len(members)
        host = np.array(buffer)
        if not self.is_flat(u):
            return [host]
        return [
            host[start : start + size].reshape(shape)
            for start, size, shape in zip(
                self.offset[members].tolist(),
                (self.sizes[i] for i in members),
                self.shapes_of(u),
            )
        ]

    def pack(self, u: int, parts: Sequence[Any]) -> jax.Array | None:
        """Unit ``u``'s buffer from its members' parts (``None``: zeros), or ``None`` if all are."""
        if all(p is None for p in parts):
            return None
        members = self.units[u]
        dtype = self.dtypes[members[0]]
        if not self.is_flat(u):
            return jnp.asarray(parts[0], dtype)
        return jnp.concatenate(
            [
                jnp.zeros(self.sizes[i], dtype) if p is None else jnp.ravel(jnp.asarray(p, dtype))
                for i, p in zip(members, parts)
            ]
        )

    def shapes_of(self, u: int) -> tuple:
        """The shapes of unit ``u``'s members, in order."""
        return tuple(self.shapes[i] for i in self.units[u])


@functools.partial(jax.jit, static_argnums=(1, 2))
def _split_flat(buffer: jax.Array, sizes: tuple, shapes: tuple) -> tuple:
    pieces = jnp.split(buffer, np.cumsum(sizes)[:-1].tolist())
    return tuple(piece.reshape(shape) for piece, shape in zip(pieces, shapes))


def _step_unit(params, grads, state, hyper, mask, maximize):
    """One unit: new params and the new used buffers (``None`` where unused).

    ``mask`` is ``None`` for a unit of one parameter (it steps), else a traced
    bool per member: every member is given (a zero gradient for a member
    without one) and a member whose mask is False keeps its parameter and
    state bit for bit (``jnp.where`` picks the old values). The None pattern
    is a runtime value, so a unit compiles once whatever it is.
    """
    square_avg, grad_avg, momentum_buffer = unpack(state)
    if mask is None:
        (p,), (g,) = params, grads
    else:
        p = jnp.concatenate([x.ravel() for x in params])
        g = jnp.concatenate([x.ravel() for x in grads])
        sizes = [x.size for x in params]
        # One flag per element, built by broadcasting (XLA fuses it into the step's
        # kernels; jnp.repeat lowers to a gather that cost 2.4x the step at 1,000 leaves).
        on = jnp.concatenate([jnp.broadcast_to(mask[k], (n,)) for k, n in enumerate(sizes)])
    # A momentum buffer is given only when momentum > 0 (decided on the host,
    # see step_units): torch's momentum branch, with no run-time select on the
    # traced momentum (the select costs the step a second pass over memory).
    update, new_sq, new_ga, new_mb = step_leaf(
        p,
        g,
        square_avg,
        grad_avg,
        momentum_buffer,
        hyper,
        maximize,
        momentum_positive=momentum_buffer is not None,
    )
    new_p = p + update
    if mask is None:
        return (new_p,), pack((new_sq, new_ga, new_mb))

    def keep(old, new):
        return None if new is None else jnp.where(on, new, old)

    new_p = keep(p, new_p)
    pieces = jnp.split(new_p, np.cumsum(sizes)[:-1].tolist())
    new_params = tuple(piece.reshape(x.shape) for piece, x in zip(pieces, params))
    new_state = (
        keep(square_avg, new_sq),
        keep(grad_avg, new_ga),
        keep(momentum_buffer, new_mb),
    )
    return new_params, pack(new_state)


class GradientMismatch(TypeError):
    """A gradient of another shape or dtype than its parameter, found while tracing a step."""


def _as_param(g: Any, p: Any) -> Any:
    """Gradient ``g`` in parameter ``p``'s dtype, checked when the call is traced.

    The adapter's usual step leaves the gradients' shapes and dtypes to this
    call (JAX computes them for its cache anyway): a gradient of ``p``'s
    shape and dtype, or of a narrower dtype in ``UPCASTS`` (upcast here,
    losslessly), passes; anything else raises while tracing, before anything
    runs, and the adapter then names it (see ``FunctionalRMSprop._diagnose``).
    """
    if g.shape != p.shape or (g.dtype != p.dtype and g.dtype not in UPCASTS.get(p.dtype, ())):
        raise GradientMismatch(
            f"step_units: a gradient is {g.dtype.name}{list(g.shape)}, its parameter "
            f"{p.dtype.name}{list(p.shape)}"
        )
    return g.astype(p.dtype)


def _step_units_impl(params, grads, states, hyper, masks, *, maximize, decay):
    # All hyperparameters stay traced (changing them never recompiles), except
    # a zero weight decay: torch's `weight_decay != 0` branch. A traced zero
    # would give the same numbers but costs CPU a full extra pass over memory
    # (XLA materializes `g + weight_decay * p` because two fusions read it).
    values = {name: hyper[k] for k, name in enumerate(HYPER_ORDER)}
    # After HYPER_ORDER's values: 1 - alpha, computed on the host in double
    # and rounded once (a traced 1 - alpha in float32 is far off near alpha=1).
    values["one_minus_alpha"] = hyper[len(HYPER_ORDER)]
    if not decay:
        values["weight_decay"] = 0.0
    if masks is None:  # units of one parameter each, given flat
        grads = tuple(map(_as_param, grads, params))
        stepped = [
            _step_unit((p,), (g,), s, values, None, maximize)
            for p, g, s in zip(params, grads, states)
        ]
        return tuple(p for (p,), _ in stepped), tuple(s for _, s in stepped)
    grads = tuple(tuple(map(_as_param, g, p)) for g, p in zip(grads, params))
    stepped = [
        _step_unit(p, g, s, values, m, maximize) for p, g, s, m in zip(params, grads, states, masks)
    ]
    return tuple(p for p, _ in stepped), tuple(s for _, s in stepped)


# Module level, so optimizers of the same structure share executables.
# Params (0) and state (2) are donated: a step holds one copy of each.
_step_units = jax.jit(
    _step_units_impl,
    static_argnames=("maximize", "decay"),
    donate_argnums=(0, 2),
)
# With jax_debug_nans or jax_debug_infs on, JAX re-runs a call that produced
# a NaN or inf, de-optimized, to find the operation: donated inputs would be
# gone by then. Those runs donate nothing, so a step that raises JAX's
# FloatingPointError leaves params and state as they were.
_step_units_kept = jax.jit(_step_units_impl, static_argnames=("maximize", "decay"))


def debugging() -> bool:
    """Whether a flag is on that makes JAX re-run a call (so nothing may be donated)."""
    config: Any = jax.config  # its flags are attributes mypy cannot see
    return bool(config.jax_debug_nans or config.jax_debug_infs)


def step_units(
    params: Sequence,
    grads: Sequence,
    states: Sequence,
    hyper: np.ndarray,
    masks: tuple | None,
    *,
    maximize: bool,
    decay: bool,
    donate: bool = True,
) -> tuple[tuple, tuple]:
    """Steps units in one compiled call; params and states are donated.

    Pass ``donate=not debugging()``: nothing may be donated while
    ``jax_debug_nans`` or ``jax_debug_infs`` is on.

    Args:
      params: per unit, a tuple of all its members' parameters; with
        ``masks=None`` (every unit one parameter), the parameters themselves.
      grads: their gradients, in the same layout: the same shapes, the same
        dtypes or narrower ones in ``UPCASTS`` (upcast in the call); anything
        else raises ``GradientMismatch`` while tracing, before anything runs.
      states: per unit, ``(square_avg, grad_avg, momentum_buffer)`` with
        ``None`` for each buffer this step does not use: ``grad_avg`` unless
        centered, ``momentum_buffer`` unless ``momentum > 0`` (which buffers
        are given decides torch's ``centered`` and ``momentum > 0`` branches),
        as :func:`pack` stores it (``square_avg`` alone when it is the only one).
      hyper: the values of ``HYPER_ORDER`` then ``1 - alpha`` (computed in
        double on the host), traced.
      masks: ``None`` when every unit is one parameter, else per unit a bool
        array, one entry per member: whether it steps (traced: the None
        pattern never recompiles). Every member is given then, a zero
        gradient for one that does not step.
      maximize: torch's ``maximize``.
      decay: whether ``weight_decay != 0`` (the term exists only then).
      donate: whether params and states are donated.

    Returns:
      ``(params, states)`` in the layout of the inputs: the new parameters
      (a masked-out member's bit for bit its old one) and the new used
      buffers (``None`` where the input was ``None``), packed.
    """
    run = _step_units if donate else _step_units_kept
    return run(params, grads, states, hyper, masks, maximize=maximize, decay=decay)
