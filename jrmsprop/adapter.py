"""A stateful RMSprop that mirrors torch's scripted ``_FunctionalRMSprop``.

``torch.distributed.optim.functional_rmsprop._FunctionalRMSprop`` keeps its
parameters in ``param_group["params"]`` and its state in ``state`` and updates
them in place on ``step(gradients)``. :class:`FunctionalRMSprop` keeps the same
attributes and the same calling convention, and replaces the arrays inside the
caller's container, since JAX arrays cannot be changed in place. The compiled
work is :mod:`jrmsprop.units`'; this module holds the API and the check of a
step; :mod:`jrmsprop.transaction` runs and commits it, signals held back.
"""

from __future__ import annotations

import copy
import operator
import threading
from itertools import repeat
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jrmsprop import transaction
from jrmsprop.interop import state_dict_tensors
from jrmsprop.transaction import Plan
from jrmsprop.units import (
    BUFFERS,
    HYPER_ORDER,
    GradientMismatch,
    Layout,
    debugging,
    pack,
    unpack,
)
from jrmsprop.validation import (
    STEP_MAX,
    ArraySpec,
    check_distinct,
    check_eager,
    check_gradients,
    check_leaves,
    check_pair,
    check_state_entry,
    group_params,
    hyper_value,
    hyper_values,
    loaded_buffer,
    path_str,
    state_dict_parts,
    step_count,
    step_value,
    upcast,
)

_WHO = "FunctionalRMSprop"
_ARRAY_TYPES = (jax.Array, np.ndarray)
_is_deleted = operator.methodcaller("is_deleted")
# How many None patterns keep their units-to-run plan (a dict, oldest evicted).
_TODO_CACHE = 64


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
    math is :func:`jrmsprop.rmsprop`'s (torch's RMSprop, number for number).

    * ``params`` is a list of arrays, as in torch, or any pytree of float or
      complex arrays; a ``None`` in it (an empty subtree, as in
      ``eqx.partition(model, eqx.is_array)[0]``) is not a parameter.
      Parameters are identified by **position** (their index in
      ``jax.tree.leaves(params)``), since JAX arrays are not hashable.
    * ``step(gradients)`` takes a list (or pytree of the params' structure):
      ``None`` where the params hold an array skips that parameter (torch's
      rule: value, state and ``step`` unchanged); ``None`` where the params
      hold ``None`` is no parameter. The step replaces the arrays inside
      ``param_group["params"]``: lists and dicts at any depth are updated in
      place, so the caller's list sees the new values. Other containers
      (tuples, NamedTuples, equinox modules) cannot be changed in place: they
      are rebuilt, and when the root itself is immutable
      ``param_group["params"]`` is rebound to the new pytree; read parameters
      back from there.
    * One compiled executable per structure, shapes, dtypes and (with
      ``foreach=False``) ``None`` pattern, shared by all optimizers. With
      ``foreach=True`` the ``None`` pattern is a runtime mask: each unit
      compiles once whatever the pattern, and a member without a gradient
      keeps its parameter and state bit for bit. The numbers in ``defaults`` are
      runtime inputs: setting ``opt.defaults["lr"]`` (a hand-written
      schedule) never recompiles. ``1 - alpha`` is computed on the host in
      double and rounded once, as torch and ``rmsprop`` with Python floats do:
      the step is jitted ``rmsprop``'s bit for bit (alpha 0.99 to 0.9999). Structural, like torch's own branches:
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
    * **A step is all or nothing.** Every check runs before anything is
      donated: the gradient count and structure, each gradient's and
      parameter's type, shape and dtype (numpy gradients included: a float64
      gradient for a float32 parameter is refused; a narrower one, bfloat16
      or float16 for float32, is upcast losslessly), deleted arrays, a
      gradient that is a parameter or a state buffer, one array at two
      parameter positions, the values in ``defaults`` and a momentum buffer
      for each parameter that needs one (with ``foreach=False``, over the
      arrays the last step wrote, shapes, dtypes and deleted arrays are the
      compiled call's checks: its trace and JAX's dispatch refuse them, still
      before anything is donated, and the step raises the same named error).
      A step that raises any of these leaves parameters and state exactly as
      they were. Then the compiled work runs and its result is committed in
      one place. Every signal with a Python handler (Ctrl-C, a SIGALRM time
      limit, a checkpointing SIGUSR1) on the main thread during that window
      is held back and delivered once the step is committed: an interrupted
      step is either fully applied or not applied at all, and a handler sees
      a whole optimizer. A handler that raises while the caller's handlers
      go back (a second Ctrl-C, a repeating time limit) stops neither: every
      handler goes back and every held-back signal is delivered. With
      ``jax_debug_nans`` or ``jax_debug_infs`` on nothing is donated, and a
      step that raises JAX's ``FloatingPointError`` commits nothing.
    * **Copies.** ``copy.deepcopy`` and ``pickle`` give an independent
      optimizer; ``copy.copy`` raises ``TypeError``.
    * **Device errors.** ``foreach=False`` runs one compiled call: if it
      fails (out of device memory), nothing is applied. ``foreach=True``
      runs one call per unit; if one fails, the units that ran are committed
      (their parameters took the step, their state and ``step`` too), the
      others are exactly as before, and a ``RuntimeError`` names the
      positions that took the step. Either way no parameter is deleted,
      unless the device itself consumed a failing call's inputs (the error
      then says so).
    * **Threads.** ``step``, ``state``, ``state_dict``, ``load_state_dict``
      and the structural setters of one instance are serialized by a lock:
      steps from several threads are each applied exactly once. A signal
      handler runs on the main thread, between two lines of whatever runs
      there: one that calls ``step``, ``load_state_dict`` or sets
      ``foreach`` or ``centered`` while that thread is inside one of them
      on the same optimizer gets a ``RuntimeError`` ("step() called from a
      signal handler while a step is running ...") and nothing changes; one
      that reads ``state_dict()`` or ``state`` (a checkpoint) always works,
      and a held-back handler, delivered after the commit, may step or load.
    * ``state`` is ``{position: {"step", "square_avg", "momentum_buffer",
      "grad_avg"}}`` with torch's keys, created lazily at a parameter's first
      gradient (``momentum_buffer`` when ``momentum > 0`` at that moment,
      ``grad_avg`` when centered); ``step`` is an int32 scalar. It is a
      snapshot built on each access, of new arrays that later steps do not
      touch: change state with :meth:`load_state_dict`.
    * ``centered``, ``foreach`` and ``maximize`` may change between steps.
      ``maximize`` and ``foreach`` always work (``foreach`` moves the state
      into the new layout). ``centered = False`` keeps existing ``grad_avg``
      buffers unchanged, as torch does; ``centered = True`` raises
      ``ValueError`` if a parameter already has state without a
      ``grad_avg`` (torch raises ``KeyError`` at the next step).
    * ``foreach=True`` keeps the state of parameters of one dtype in flat
      buffers and steps each unit in one fused computation over the
      concatenated gradients: ``foreach=False``'s numbers up to rounding
      (XLA:CPU fuses a different product into a multiply-add in the flat
      program: within a few ulps, not bitwise), and far less compile time and
      per-leaf overhead for many small parameters.
    * :meth:`state_dict` / :meth:`load_state_dict` use ``torch.optim``'s
      layout, with numpy values; a state dict saved by torch (tensor values)
      loads directly. ``state_dict(tensors=True)`` gives torch tensors, for
      ``torch.save`` and ``torch.load(..., weights_only=True)`` (which
      refuses numpy arrays) and for ``torch.optim.RMSprop.load_state_dict``.

    Args:
      params: the parameters: a list of float or complex arrays, or a pytree.
      lr: learning rate.
      alpha: smoothing constant of the squared-gradient average.
      eps: added to the denominator, outside the square root.
      weight_decay: coupled L2 penalty.
      momentum: momentum factor.
      centered: normalize by the variance estimate.
      foreach: keep flat state per dtype and step each unit in one fused
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
      >>> [round(float(x), 4) for x in params[0]]  # the caller's list holds the new arrays
      [-0.8044, 2.2255, -0.8977]
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
        for name in HYPER_ORDER:
            hyper_value(name, self.defaults[name], _WHO)
        self._lock = threading.RLock()
        # What this optimizer is changing, while it is (see _refuse_reentry).
        self._busy: str | None = None
        self._centered = bool(centered)
        self._foreach = bool(foreach)
        self._maximize = bool(maximize)

        with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
        leaves = [leaf for _, leaf in with_paths]
        if len(leaves) == 0 and not _allow_empty_param_list:
            raise ValueError("optimizer got an empty parameter list")
        check_leaves(params, "params", _WHO)
        self._treedef = treedef
        self._paths = [path for path, _ in with_paths]
        check_distinct(leaves, self._paths, _WHO)
        check_eager(leaves, self._paths, "parameter", _WHO)
        if not all(isinstance(leaf, jax.Array) for leaf in leaves):
            # numpy parameters become JAX arrays once, so they can be donated.
            leaves = [jnp.asarray(leaf) for leaf in leaves]
            params = _write_back(params, jax.tree.unflatten(treedef, leaves))
        # NOTE: one param_group, as in torch's scripted class.
        self.param_group = {"params": params}
        self._n = len(leaves)
        self._flat_list = type(params) is list and bool(
            treedef == jax.tree.structure([0] * self._n)  # type: ignore[operator]
        )
        self._layout = Layout(
            [leaf.shape for leaf in leaves], [leaf.dtype for leaf in leaves], foreach
        )
        # The leaves this optimizer last wrote: when the container still holds
        # them, the parameters need no re-check.
        self._written = list(leaves)
        # Per unit: None until a member first gets a gradient, then
        # (square_avg, grad_avg | None, momentum_buffer | None), stored as
        # units.pack does (square_avg alone when the other two are None).
        self._states: list[Any] = [None] * len(self._layout.units)
        # Per position, on the host: RMSprop's math never reads ``step``, so
        # counting here costs the device nothing; which buffers it has.
        # Invariants: a unit has a buffer iff a member has it; when centered,
        # every position with state has a grad_avg (the setter and
        # load_state_dict refuse otherwise).
        self._steps = np.zeros(self._n, np.int64)
        self._has_state = np.zeros(self._n, bool)
        self._has_momentum = np.zeros(self._n, bool)
        self._has_grad_avg = np.zeros(self._n, bool)
        # stepping positions -> the units to run and their stepping members,
        # the TODO_CACHE most recent patterns; zero gradients per position.
        self._todo: dict = {}
        self._zeros: dict = {}
        # The stepping pattern of a step where every parameter has a gradient.
        self._everyone = tuple(range(self._n))
        self._all_positions = np.arange(self._n)

    # ------------------------------------------------- structural attributes

    @property
    def centered(self) -> bool:
        """torch's ``centered``; see the class docstring for changing it."""
        return self._centered

    @centered.setter
    def centered(self, value: bool) -> None:
        with self._lock:
            self._refuse_reentry("setting centered")
            lacking = np.flatnonzero(self._has_state & ~self._has_grad_avg)
            if value and lacking.size:
                raise ValueError(
                    "FunctionalRMSprop: centered=True needs a grad_avg for every parameter "
                    f"with state, and parameters {lacking.tolist()} were stepped with "
                    "centered=False (torch raises a KeyError at the next step); load a "
                    "centered state dict or build a new optimizer"
                )
            self._centered = bool(value)

    @property
    def maximize(self) -> bool:
        """torch's ``maximize``: may change between steps."""
        return self._maximize

    @maximize.setter
    def maximize(self, value: bool) -> None:
        with self._lock:
            self._maximize = bool(value)

    @property
    def foreach(self) -> bool:
        """Flat state per dtype; changing it moves the state into the new layout."""
        return self._foreach

    @foreach.setter
    def foreach(self, value: bool) -> None:
        with self._lock:
            self._refuse_reentry("setting foreach")
            if bool(value) == self._foreach:
                return
            try:
                self._busy = "a change of foreach"
                layout = Layout(self._layout.shapes, self._layout.dtypes, bool(value))
                with transaction.signals_deferred(self._settled):
                    states = self._packed(layout, self._per_position(self._layout.split))
                    self._layout, self._states, self._foreach = layout, states, bool(value)
                    self._todo = {}
            finally:
                self._busy = None

    def _refuse_reentry(self, call: str) -> None:
        """``RuntimeError`` when this thread is already changing this optimizer.

        Only a signal handler gets here that way: Python runs handlers on the
        main thread between two lines of a running step, which holds the
        (re-entrant) lock, so another thread would wait and this one would
        work on a step's stale plan. Reading (``state_dict()``, ``state``)
        is not refused: a handler runs before a step's work or after its
        commit, never in between, so it reads a whole optimizer.
        """
        busy = self._busy
        if busy is not None:
            raise RuntimeError(
                f"FunctionalRMSprop: {call} called from a signal handler while {busy} is "
                "running on this optimizer in this thread; refused, nothing changed. Record "
                "the request in the handler and act on it once the call returns (a handler "
                "may read state_dict() at any time)"
            )

    def _settled(self) -> None:
        """The change in flight is committed or dropped: handlers may change the optimizer."""
        self._busy = None

    # ------------------------------------------------------------------ step

    def step(self, gradients: Any) -> None:
        """One RMSprop step on every parameter whose gradient is not ``None``.

        All or nothing: every check runs before anything is donated, and a
        Ctrl-C during the compiled work is raised once the step is committed.

        Args:
          gradients: a list (or pytree) matching ``param_group["params"]``,
            with ``None`` for parameters to skip.

        Raises:
          ValueError: the number of gradients differs from the number of
            params (torch's message), the structure or a shape differs, a
            value in ``defaults`` is negative or NaN (torch's message), an
            array is deleted, a gradient is a parameter or a state buffer,
            one array sits at two parameter positions, or a parameter needs a
            momentum buffer it does not have.
          TypeError: a gradient or parameter is not an array, or a gradient's
            dtype is neither the parameter's nor a narrower one of its kind.
          RuntimeError: ``foreach=True`` and the device failed after some
            units ran; those units are committed (see the class docstring).
            Or called from a signal handler while this thread is inside a
            step, ``load_state_dict`` or a ``foreach`` switch of this
            optimizer: refused, nothing changed.
        """
        with self._lock:
            self._refuse_reentry("step()")
            try:
                self._busy = "a step"  # no handler runs between the check and here
                plan = self._check(gradients)
                if not plan.todo:
                    return
                donate = not debugging()  # a debug flag's re-run needs its inputs
                transaction.apply(
                    plan, donate, self._run, self._commit, self._raise_partial, self._settled
                )
            finally:
                self._busy = None

    def _check(self, gradients: Any) -> Plan:
        """Every check of a step; raises before anything changes."""
        params = group_params(self.param_group, _WHO)
        lists = isinstance(params, list) and isinstance(gradients, (list, tuple))
        if lists and len(params) != len(gradients):
            raise ValueError(
                "the gradients passed in does not equal to the size of the parameters!"
                + f"Params length: {len(params)}. "
                + f"Gradients length: {len(gradients)}"
            )
        values = hyper_values(self.defaults, HYPER_ORDER, _WHO)
        # 1 - alpha in double, rounded once to the math's dtype by the call, as
        # torch and rmsprop with Python floats compute it.
        hyper = np.array([*values, 1.0 - float(values[1])], np.float64)
        leaves, ours = self._checked_params(params)
        grads = self._grad_list(gradients)
        everyone = not any(map(operator.is_, grads, repeat(None)))
        if everyone:
            stepping, positions = self._everyone, self._all_positions
        else:
            stepping = tuple(i for i, g in enumerate(grads) if g is not None)
            positions = np.array(stepping, np.int64)
        # foreach=False, over the arrays the last step wrote: one compiled call
        # follows, which checks shapes and dtypes and refuses deleted arrays
        # before anything runs (then _diagnose names what was wrong).
        dispatch = ours and not self._foreach
        if not dispatch:
            self._check_live(leaves)
        if self._check_gradients(grads, stepping, leaves, dispatch):
            # Narrower gradients (bfloat16 for float32 params, ...) upcast losslessly.
            grads = [upcast(g, p.dtype) for g, p in zip(grads, leaves)]
        use_momentum = bool(hyper[4] > 0)
        if use_momentum:
            missing = positions[self._has_state[positions] & ~self._has_momentum[positions]]
            if missing.size:
                raise ValueError(
                    f"FunctionalRMSprop: momentum={hyper[4]} needs a momentum_buffer for "
                    f"parameter {int(missing[0])}, whose state was created with "
                    "momentum=0 (torch raises a KeyError here)"
                )
        todo = self._todo.get(stepping)
        if todo is None:
            if len(self._todo) >= _TODO_CACHE:
                del self._todo[next(iter(self._todo))]  # the oldest pattern
            todo = self._todo[stepping] = self._units_to_run(positions)
        # Usually every unit to run has state with exactly the buffers this
        # step uses (see the invariants in __init__): no per-unit work then.
        exact = (
            bool(self._has_state[positions].all())
            and (self._centered or not self._has_grad_avg.any())
            and (use_momentum or not self._has_momentum.any())
        )
        if exact:
            states = self._states
        else:
            uses = (True, self._centered, use_momentum)
            states = {  # type: ignore[assignment]
                u: self._used_buffers(u, uses) for u, _, _ in todo
            }
        return Plan(leaves, grads, hyper, use_momentum, stepping, todo, states, exact, dispatch)

    def _used_buffers(self, u: int, uses: tuple) -> tuple:
        """Unit ``u``'s state as this step uses it: zeros where a used buffer is new, else None."""
        state = unpack(self._states[u])
        return pack(
            tuple(
                None if not use else self._layout.zeros(u) if b is None else b
                for b, use in zip(state, uses)
            )
        )

    def _checked_params(self, params: Any) -> tuple[list, bool]:
        """The parameter leaves, checked unless they are the arrays the last step wrote.

        Returns the leaves and whether they are those arrays (then only
        deletion can have happened to them: see :meth:`_check_live`).
        """
        if self._flat_list and type(params) is list and len(params) == self._n:
            leaves = list(params)
        else:
            leaves, treedef = jax.tree.flatten(params)
            if treedef != self._treedef:  # type: ignore[operator]
                raise ValueError(
                    "FunctionalRMSprop: param_group['params'] changed structure since the "
                    f"optimizer was built: it is {treedef}, it was {self._treedef}"
                )
        ours = all(map(operator.is_, leaves, self._written))
        if not ours:
            check_distinct(leaves, self._paths, _WHO)
            check_eager(leaves, self._paths, "parameter", _WHO)
            for i, p in enumerate(leaves):
                if not isinstance(p, _ARRAY_TYPES):
                    raise TypeError(
                        f"FunctionalRMSprop: param_group['params'] leaf {path_str(self._paths[i])} "
                        f"is a {type(p).__name__}, not an array"
                    )
                spec = ArraySpec(self._layout.shapes[i], self._layout.dtypes[i])
                check_pair(self._paths[i], p, spec, "params", "the optimizer state", _WHO)
                if not isinstance(p, jax.Array):
                    leaves[i] = jnp.asarray(p)
        return leaves, ours

    def _check_gradients(self, grads: list, stepping: tuple, leaves: list, dispatch: bool) -> bool:
        """:func:`check_gradients` against this optimizer's params, state and layout."""
        layout = self._layout
        return check_gradients(
            grads,
            stepping,
            leaves,
            self._paths,
            self._states,
            _WHO,
            layout.shapes,
            layout.dtypes,
            dispatch=dispatch,
        )

    def _check_live(self, leaves: list) -> None:
        """``ValueError`` naming the first deleted parameter, if any."""
        if any(map(_is_deleted, leaves)):
            i = next(i for i, p in enumerate(leaves) if p.is_deleted())
            raise ValueError(
                f"FunctionalRMSprop: parameter {path_str(self._paths[i])} is a deleted "
                "array (donated to or deleted by other code); put a live array there"
            )

    def _grad_list(self, gradients: Any) -> list:
        """Per position, the gradient (``None`` allowed), structure checked against the params."""
        if self._flat_list and isinstance(gradients, (list, tuple)):
            return list(gradients)
        try:
            # Decided against the params' structure: a None where the params
            # hold None is no parameter, a None where they hold an array is
            # torch's "no gradient".
            return self._treedef.flatten_up_to(gradients)  # type: ignore[attr-defined]
        except (ValueError, TypeError) as err:
            raise ValueError(
                "FunctionalRMSprop: the structure of the gradients does not match the params "
                f"({jax.tree.structure(self.param_group['params'])}): " + str(err).splitlines()[0]
            ) from None

    def _units_to_run(self, positions: np.ndarray) -> list:
        """Per unit with a stepping member: (unit, stepping member indices, their positions)."""
        by_unit: dict[int, list[int]] = {}
        for i in positions.tolist():
            by_unit.setdefault(int(self._layout.unit_of[i]), []).append(i)
        todo = []
        for u, stepping in sorted(by_unit.items()):
            members = self._layout.units[u]
            todo.append((u, tuple(members.index(i) for i in stepping), stepping))
        return todo

    def _run(self, plan: Plan, donate: bool) -> tuple[list, Exception | None]:
        ran, error = transaction.run(
            plan,
            donate,
            layout=self._layout,
            foreach=self._foreach,
            maximize=self._maximize,
            zero_grad=self._zero_grad,
        )
        if error is not None and not ran and plan.dispatch:
            self._diagnose(plan, error)  # raises the named error of a refused call
        return ran, error

    def _zero_grad(self, i: int) -> jax.Array:
        """A zero gradient for position ``i`` (cached: gradients are never donated)."""
        zero = self._zeros.get(i)
        if zero is None:
            shape, dtype = self._layout.shapes[i], self._layout.dtypes[i]
            zero = self._zeros[i] = jnp.zeros(shape, dtype)
        return zero

    def _commit(self, plan: Plan, ran: list) -> None:
        """Stores what ran, in one place: plain assignments that cannot fail."""
        leaves, states = plan.leaves, self._states
        stepped: Any = []
        if ran and not self._foreach and plan.everyone and plan.exact:
            # The usual step: one call over every position, every buffer used.
            ((_, _, new_params, new_states, _),) = ran
            leaves, states[:] = list(new_params), new_states  # plan.leaves is done with
            stepped = slice(None)
        else:
            for units, replaced, new_params, new_states, positions in ran:
                for i, p in zip(replaced, new_params):
                    leaves[i] = p
                for u, new in zip(units, new_states):
                    if plan.exact or states[u] is None:
                        states[u] = new
                    else:  # a buffer this step did not use (None in new) stays as it was
                        old = unpack(states[u])
                        states[u] = pack(
                            tuple(o if n is None else n for o, n in zip(old, unpack(new)))
                        )
                stepped.extend(positions)
            stepped = np.array(stepped, np.int64)
        self._steps[stepped] = np.minimum(self._steps[stepped] + 1, STEP_MAX)  # saturates
        self._has_state[stepped] = True
        if plan.use_momentum:
            self._has_momentum[stepped] = True
        if self._centered:
            self._has_grad_avg[stepped] = True
        self._written = leaves  # a list of the optimizer's own, which nothing else holds
        params = self.param_group["params"]
        if self._flat_list and type(params) is list and len(params) == self._n:
            params[:] = leaves
        else:
            new_tree = jax.tree.unflatten(self._treedef, leaves)
            self.param_group["params"] = _write_back(params, new_tree)

    def _raise_partial(self, plan: Plan, ran: list, error: Exception) -> None:
        """Raises the device error that stopped a step, after what ran was committed."""
        took = [i for *_, positions in ran for i in positions]
        done = {i for _, replaced, *_ in ran for i in replaced}
        given = sorted(
            {i for u, _, _ in plan.todo for i in self._layout.units[u]} | set(plan.stepping)
        )
        lost = [
            path_str(self._paths[i]) for i in given if i not in done and plan.leaves[i].is_deleted()
        ]
        if not ran and not lost:
            raise error  # nothing ran: nothing changed
        message = (
            f"FunctionalRMSprop: the step failed on the device after {len(ran)} of "
            f"{len(plan.todo)} units ran. Parameters {took} took this step (their state and "
            "step too); the other parameters are exactly as before"
        )
        if lost:
            message += (
                f", except {lost}: the device consumed their arrays before it failed, they are lost"
            )
        raise RuntimeError(message) from error

    def _diagnose(self, plan: Plan, error: Exception) -> None:
        """After a refused call of a step checked with ``dispatch``: the checks left to it, named.

        A call JAX refused (a shape or dtype its trace rejects, a deleted
        array at dispatch: JAX's ``RuntimeError: Array has been deleted``
        for an array deleted by ``.delete()``, the runtime's ``ValueError:
        ... Buffer has been deleted or donated`` for one donated to another
        jitted function) ran nothing and consumed nothing; the full checks
        then raise the error that names what was wrong. Any other error is
        the device's, after the call started: ``_raise_partial`` reports it.
        Raised from within the held-back window (``transaction.apply``):
        nothing ran, so there is nothing to commit.
        """
        deleted = "has been deleted" in str(error)
        if not (deleted or isinstance(error, GradientMismatch)):
            return
        self._check_live(plan.leaves)
        self._check_gradients(plan.grads, plan.stepping, plan.leaves, dispatch=False)

    # ----------------------------------------------------------------- state

    def _per_position(self, split) -> dict[int, list]:
        """Per position with state, its three buffers (``None`` where it has none), split out."""
        out = {}
        for u, state in enumerate(self._states):
            if state is None:
                continue
            parts = [split(u, buf) for buf in unpack(state)]
            for k, i in enumerate(self._layout.units[u]):
                if self._has_state[i]:
                    has = (True, self._has_grad_avg[i], self._has_momentum[i])
                    out[i] = [part[k] if h else None for part, h in zip(parts, has)]
        return out

    def _packed(self, layout: Layout, buffers: dict[int, list]) -> list:
        """Unit states of ``layout`` holding per-position ``buffers``."""
        states: list[Any] = []
        for members in layout.units:
            u = len(states)
            if not any(i in buffers for i in members):
                states.append(None)
                continue
            states.append(
                pack(
                    tuple(
                        layout.pack(u, [buffers[i][b] if i in buffers else None for i in members])
                        for b in range(3)
                    )
                )
            )
        return states

    def _entries(self, buffers: dict[int, list], step) -> dict:
        out = {}
        for i in sorted(buffers):
            square_avg, grad_avg, momentum_buffer = buffers[i]
            entry = {"step": step(self._steps[i]), "square_avg": square_avg}
            if momentum_buffer is not None:
                entry["momentum_buffer"] = momentum_buffer
            if grad_avg is not None:
                entry["grad_avg"] = grad_avg
            out[i] = entry
        return out

    @property
    def state(self) -> dict[int, dict[str, jax.Array]]:
        """The state of each position that has one, under torch's keys.

        A snapshot of new arrays, built on each access, that later steps leave alone.
        """
        with self._lock:
            buffers = self._per_position(self._layout.split)
            return self._entries(buffers, lambda n: jnp.asarray(n, jnp.int32))

    def state_dict(self, tensors: bool = False) -> dict[str, Any]:
        """The state in ``torch.optim``'s layout, with numpy values (or torch tensors).

        Args:
          tensors: torch tensors instead of numpy arrays (torch must be
            installed), and the group as ``torch.optim.RMSprop`` writes it
            (Python floats, ``capturable`` and ``differentiable`` too): the
            dict then survives ``torch.save`` + ``torch.load(...,
            weights_only=True)``, which refuses numpy arrays, and loads into
            ``torch.optim.RMSprop`` over the same parameters in the same order.

        Returns:
          ``{"state": {position: entry}, "param_groups": [group]}``: each
          ``entry`` holds ``"step"`` (a float32 0-d array: a float, as torch
          keeps it), ``"square_avg"`` and, when present, ``"momentum_buffer"``
          and ``"grad_avg"``; the one ``group`` holds ``lr``, ``alpha``,
          ``eps``, ``weight_decay``, ``momentum``, ``centered``, ``foreach``,
          ``maximize`` and ``"params": [0, ..., n-1]``.
        """
        with self._lock:
            hyper_values(self.defaults, HYPER_ORDER, _WHO)  # nothing missing or invalid is saved
            buffers = self._per_position(self._layout.split_host)
            state = self._entries(buffers, step_value)
            group: dict[str, Any] = dict(self.defaults)
            group.update(centered=self._centered, foreach=self._foreach, maximize=self._maximize)
            group["params"] = list(range(self._n))
            saved = {"state": state, "param_groups": [group]}
        return state_dict_tensors(saved) if tensors else saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict from :meth:`state_dict` or from torch.

        torch's ``torch.optim.RMSprop(...).state_dict()`` and the same layout
        with numpy values both load; tensors are converted (torch is imported
        only when given tensors; conjugate and negative bits are resolved). As
        torch's ``load_state_dict`` does, the group's lr, alpha, eps,
        weight_decay, momentum, centered and maximize replace this
        optimizer's (``foreach``, a layout choice, stays). Everything is
        checked before anything changes: an invalid dict changes nothing.

        Args:
          state_dict: ``{"state": {index: {...}}, "param_groups": [{...,
            "params": [indices]}]}``.

        Raises:
          ValueError: a missing key (``state``, ``param_groups``, a
            hyperparameter, a buffer the group's settings need), a dict from
            another optimizer (its keys named), the wrong number of groups or
            parameters, an unknown index, a buffer of the wrong shape or
            ``None``, a ``step`` that is not a finite non-negative integer, or
            an invalid hyperparameter (torch's message).
          TypeError: a buffer that is not a float or complex array of its
            parameter's kind, or a container of the wrong type.
          RuntimeError: called from a signal handler while this thread is
            inside a step, ``load_state_dict`` or a ``foreach`` switch of
            this optimizer: refused, nothing changed.
        """
        with self._lock:
            self._refuse_reentry("load_state_dict()")
            try:
                self._busy = "a load_state_dict()"
                self._load(state_dict)
            finally:
                self._busy = None

    def _load(self, state_dict: dict[str, Any]) -> None:
        """:meth:`load_state_dict`'s work, under the lock and marked busy."""
        where = "FunctionalRMSprop.load_state_dict"
        state, group = state_dict_parts(state_dict, where)
        defaults = {name: hyper_value(name, group[name], _WHO) for name in HYPER_ORDER}
        centered = bool(group.get("centered", self._centered))
        maximize = bool(group.get("maximize", self._maximize))
        indices = list(group["params"])
        if len(indices) != self._n:
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size "
                f"of optimizer's group: {len(indices)} parameters, expected {self._n}"
            )
        position = {index: k for k, index in enumerate(indices)}
        if len(position) != self._n:
            raise ValueError(f"{where}: the group's params repeat an index: {indices}")
        steps = np.zeros(self._n, np.int64)
        buffers: dict[int, list] = {}
        for index, entry in state.items():
            if index not in position:
                raise ValueError(f"loaded state dict has state for unknown parameter {index}")
            check_state_entry(index, entry, defaults["momentum"], centered, where)
            i = position[index]
            steps[i] = step_count(entry["step"], f"{where}: parameter {index!r}")
            buffers[i] = [
                None
                if key not in entry
                else loaded_buffer(
                    entry[key],
                    self._layout.shapes[i],
                    self._layout.dtypes[i],
                    f"{where}: state {key!r} of parameter {index!r}",
                )
                for key in BUFFERS
            ]
        states = self._packed(self._layout, buffers)
        has = np.zeros((self._n, 3), bool)
        for i, parts in buffers.items():
            has[i] = [part is not None for part in parts]
        # Everything is checked and built: commit, with no handler between the lines.
        with transaction.signals_deferred(self._settled):
            self.defaults.update(defaults)
            self._centered, self._maximize = centered, maximize
            self._states = states
            self._steps = steps
            self._has_state = has[:, 0].copy()
            self._has_grad_avg = has[:, 1].copy()
            self._has_momentum = has[:, 2].copy()

    # ---------------------------------------------------------------- copies

    def __getstate__(self) -> dict[str, Any]:
        """For ``copy.deepcopy`` and ``pickle``: everything but the lock.

        Returns:
          the instance's attributes (arrays included) without the lock; the
          copy gets a lock of its own.
        """
        with self._lock:
            state = dict(self.__dict__)
        del state["_lock"]
        state["_busy"] = None  # a copy taken by a handler mid-step is idle
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __deepcopy__(self, memo: dict) -> FunctionalRMSprop:
        with self._lock:
            state = copy.deepcopy(self.__getstate__(), memo)
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(state)
        return new

    def __copy__(self) -> FunctionalRMSprop:
        raise TypeError(
            "FunctionalRMSprop: copy.copy would share the parameter and state arrays, which "
            "a step donates (deletes): use copy.deepcopy for an independent optimizer"
        )

    # ------------------------------------------------------------------ repr

    def __repr__(self) -> str:
        with self._lock:
            hyper = ", ".join(f"{name}={self.defaults.get(name)!r}" for name in HYPER_ORDER)
            buffers = [b for s in self._states if s is not None for b in unpack(s) if b is not None]
            state_bytes = sum(b.size * b.dtype.itemsize for b in buffers)
            elements = sum(self._layout.sizes)
            return (
                f"FunctionalRMSprop({hyper}, centered={self._centered}, "
                f"maximize={self._maximize}, foreach={self._foreach}; {self._n} params, "
                f"{elements:,} elements, {int(self._has_state.sum())} with state, "
                f"state {_format_bytes(state_bytes)})"
            )


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
