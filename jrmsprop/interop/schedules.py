"""``torch.optim.lr_scheduler`` schedulers as optax schedules, number for number.

A translated schedule holds the learning rates torch's own scheduler computes
from where it stands: a detached copy of the scheduler (its state, on a
stand-in optimizer holding only the groups' learning rates) is stepped forward
on the host, so every value is torch's arithmetic, its recursive ("chainable")
forms included, float for float: for the next scheduler steps (``TABLE``) and
at each change of a piecewise-constant scheduler. Past them the scheduler's
closed form continues, so a schedule is defined for every count and the
translation costs grow with milestones and phases, not with steps. The
schedule looks its value up by optax's count (the number of updates applied
before this one).
"""

from __future__ import annotations

import bisect
import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jrmsprop.interop._torch import _import_torch
from jrmsprop.validation import step_count

# The schedulers whose next lr depends only on their own state (not on a
# metric, not on user code), by class name.
TRANSLATABLE = (
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "LinearLR",
    "ConstantLR",
    "PolynomialLR",
    "OneCycleLR",
    "SequentialLR",
    "ChainedScheduler",
)
_WHAT_TO_DO = {
    "LambdaLR": "its lr is user code jrmsprop cannot read: write the same function as an "
    "optax schedule of the step and pass it as rmsprop(lr=...)",
    "MultiplicativeLR": "its lr is user code jrmsprop cannot read: write the product as an "
    "optax schedule of the step and pass it as rmsprop(lr=...)",
    "ReduceLROnPlateau": "its lr follows a metric, not the step: pass it alone as "
    "from_torch's scheduler (it stays in torch; jrmsprop.interop.plateau.follow puts its lr "
    "into the JAX state after each scheduler.step(metric))",
}


def _torch():
    return _import_torch()


def _class_of(scheduler: Any) -> type:
    return scheduler[0] if isinstance(scheduler, tuple) else type(scheduler)


def check_translatable(scheduler: Any, where: str = "scheduler") -> None:
    """Raises ``TypeError`` unless ``scheduler`` (and every scheduler inside it) is translatable.

    Args:
      scheduler: a ``torch.optim.lr_scheduler`` scheduler, or ``(class, state_dict)``.
      where: how the error names it.
    """
    torch = _torch()
    cls = _class_of(scheduler)
    name = getattr(cls, "__name__", repr(cls))
    known = getattr(torch.optim.lr_scheduler, name, None)
    if name not in TRANSLATABLE or known is not cls:
        hint = _WHAT_TO_DO.get(
            name,
            "write its lr as an optax schedule of the step and pass it as rmsprop(lr=...)",
        )
        raise TypeError(
            f"{where} is a {name}, which jrmsprop cannot translate "
            f"(it translates torch's {', '.join(TRANSLATABLE)}): {hint}"
        )
    if name in ("SequentialLR", "ChainedScheduler"):
        if isinstance(scheduler, tuple):
            raise TypeError(
                f"{where}: a {name} cannot be rebuilt from its state_dict alone (the "
                f"state dict does not name the classes of its schedulers): build the "
                f"{name}, load_state_dict the checkpoint into it, and pass the object"
            )
        for i, child in enumerate(scheduler._schedulers):
            inner = f"{where}._schedulers[{i}]"
            check_translatable(child, inner)
            kind = type(child).__name__
            if name == "ChainedScheduler" and kind not in _FACTORS:
                raise TypeError(
                    f"{inner} is a {kind} in a ChainedScheduler: jrmsprop translates a chain "
                    f"of {', '.join(_FACTORS)} (factors of the lr); write the product as an "
                    "optax schedule of the step and pass it as rmsprop(lr=...)"
                )
            if name == "SequentialLR" and kind in ("SequentialLR", "ChainedScheduler"):
                raise TypeError(
                    f"{inner} is a {kind} inside a SequentialLR, which torch cannot restart "
                    "at a milestone: flatten it into one SequentialLR"
                )
            if name == "SequentialLR" and getattr(child, "cycle_momentum", False):
                raise TypeError(
                    f"{inner} is a OneCycleLR with cycle_momentum=True inside a SequentialLR: "
                    "jrmsprop moves momentum only for a OneCycleLR of its own; pass "
                    "cycle_momentum=False or the OneCycleLR alone"
                )


def _state_of(scheduler: Any) -> dict:
    if isinstance(scheduler, tuple):
        return dict(scheduler[1])
    return {k: v for k, v in scheduler.__dict__.items() if k not in ("optimizer", "_schedulers")}


def detached_copy(scheduler: Any, groups: Sequence[Mapping]) -> Any:
    """A copy of ``scheduler`` driving a stand-in optimizer with ``groups``' lrs.

    Stepping the copy computes what the scheduler would, without touching the
    real optimizer or model.

    Args:
      scheduler: a translatable scheduler, or ``(class, state_dict)``.
      groups: the optimizer's param groups (``lr``, ``initial_lr`` and any other
        key a scheduler keeps there, e.g. ``OneCycleLR``'s ``max_lr``).

    Returns:
      The copy; its ``optimizer.param_groups[i]["lr"]`` is group ``i``'s lr.
    """
    torch = _torch()
    stand_in = torch.optim.SGD(
        [
            # Every key a scheduler may keep in a group (OneCycleLR's max_lr, ...).
            {
                **copy.deepcopy({k: v for k, v in group.items() if k != "params"}),
                "params": [torch.zeros(())],
            }
            for group in groups
        ]
    )
    return _rebuild(scheduler, stand_in)


def _rebuild(scheduler: Any, optimizer: Any) -> Any:
    cls = _class_of(scheduler)
    twin: Any = object.__new__(cls)
    twin.__dict__.update(copy.deepcopy(_state_of(scheduler)))
    twin.optimizer = optimizer
    if not isinstance(scheduler, tuple) and hasattr(scheduler, "_schedulers"):
        twin._schedulers = [_rebuild(child, optimizer) for child in scheduler._schedulers]
    return twin


def step_quietly(scheduler: Any) -> None:
    """``scheduler.step()`` without torch's warning about the stand-in's unwrapped ``step``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()


def write_state(source: Any, target: Any) -> None:
    """Copies a stepped copy's position (every attribute but the optimizer) into ``target``."""
    target.__dict__.update(copy.deepcopy(_state_of(source)))
    for child_source, child_target in zip(
        getattr(source, "_schedulers", ()), getattr(target, "_schedulers", ())
    ):
        write_state(child_source, child_target)


def _lr_number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


# ---------------------------------------------------------------------------
# The translation: torch's own values near the position and at every change of
# a piecewise-constant scheduler, a closed form past them.

# Scheduler steps of torch's own values tabulated ahead of the position (more
# only where ``horizon`` asks for it); past them, each scheduler's closed form.
TABLE = 2048
# The largest optax count (int32).
_LAST = 2**31 - 1
# Chainable schedulers whose lr is the lr before times a factor of the epoch alone.
_FACTORS = ("StepLR", "MultiStepLR", "ExponentialLR", "ConstantLR", "LinearLR", "PolynomialLR")


class _Piece:
    """One group's values of one scheduler over its own epochs, from an epoch on.

    ``values[i]`` holds for epochs ``starts[i] <= e < starts[i + 1]`` (torch's
    own numbers); past ``last`` (the last epoch of torch's numbers), ``tail(e)``
    when there is one, else ``values[-1]`` holds.
    """

    def __init__(self, starts, values, tail=None):
        self.starts = np.asarray(starts, np.int64)
        self.values = np.asarray(values, np.float64)
        self.last = min(int(self.starts[-1]), _LAST)
        self.tail = tail

    def __call__(self, e: jax.Array) -> jax.Array:
        starts = jnp.asarray(np.minimum(self.starts, _LAST), e.dtype)
        i = jnp.clip(jnp.searchsorted(starts, e, side="right") - 1, 0, len(self.starts) - 1)
        value = jnp.asarray(self.values)[i]
        if self.tail is None:
            return value
        return jnp.where(e > self.last, jnp.asarray(self.tail(e), value.dtype), value)


def _values(twin: Any, key: str) -> list[float]:
    return [_lr_number(g[key]) for g in twin.optimizer.param_groups]


def _changes(twin: Any, depth: int) -> tuple[list[int], bool]:
    """The epochs past the position at which a piecewise-constant scheduler's lr changes.

    Returns ``(epochs, more)``: ``more`` when changes go on past the list.
    """
    name, p = type(twin).__name__, int(twin.last_epoch)
    if name == "MultiStepLR":
        return sorted(m for m in twin.milestones if m > p), False
    if name == "ConstantLR":
        return ([int(twin.total_iters)] if twin.total_iters > p else []), False
    size = int(twin.step_size) if name == "StepLR" else 1
    first = (p // size + 1) * size
    return list(range(first, first + depth * size, size)), True


def _ratio(twin: Any, a: int, base: Any) -> Callable[[jax.Array], jax.Array]:
    """``e -> lr(e) / lr(a)`` of a chainable factor scheduler at its own epochs ``e > a``.

    ``base`` is the array namespace's float (the schedule's dtype).
    """
    name = type(twin).__name__
    if a >= _LAST:  # past every count
        return lambda e: jnp.ones((), base)
    if name in ("StepLR", "ExponentialLR"):
        size = int(twin.step_size) if name == "StepLR" else 1
        gamma = float(twin.gamma)
        return lambda e: gamma ** (e // size - a // size).astype(base)
    if name == "MultiStepLR":
        marks = np.asarray(sorted(twin.milestones.elements()), np.int64)
        gamma, before = float(twin.gamma), int(np.searchsorted(marks, a, side="right"))

        def multistep(e):
            passed = jnp.searchsorted(jnp.asarray(np.minimum(marks, _LAST), e.dtype), e, "right")
            return gamma ** (passed - before).astype(base)

        return multistep
    if name == "ConstantLR":
        total, factor = min(int(twin.total_iters), _LAST), float(twin.factor)
        at_a = factor if a < total else 1.0
        return lambda e: jnp.where(e < total, factor, 1.0).astype(base) / at_a
    span = float(twin.total_iters)
    if a >= span:
        return lambda e: jnp.ones((), base)
    if name == "LinearLR":
        s, f = float(twin.start_factor), float(twin.end_factor)
        at_a = s + (f - s) * a / span
        return lambda e: (s + (f - s) * jnp.minimum(e, span).astype(base) / span) / at_a
    power = float(twin.power)
    at_a = (1.0 - a / span) ** power
    return lambda e: (1.0 - jnp.minimum(e, span).astype(base) / span) ** power / at_a


def _settles(twin: Any) -> int | None:
    """The epoch from which the scheduler's lr never changes again, if there is one."""
    name = type(twin).__name__
    if name in ("LinearLR", "ConstantLR", "PolynomialLR"):
        return int(twin.total_iters)
    if name == "MultiStepLR":
        return max(twin.milestones, default=0)
    if name == "OneCycleLR":
        return int(twin.total_steps)
    if name == "ChainedScheduler":
        ends = [_settles(child) for child in twin._schedulers]
        known = [end for end in ends if end is not None]
        return None if len(known) < len(ends) else max(known, default=0)
    return None


def _closed(twin: Any, key: str, group: int) -> Callable[[jax.Array], jax.Array]:
    """torch's closed form of a non-factor scheduler (its own epochs), in the array's float."""
    name = type(twin).__name__
    if name == "CosineAnnealingLR":
        eta, base_lr, t_max = float(twin.eta_min), float(twin.base_lrs[group]), float(twin.T_max)

        def cosine(e):
            x = e.astype(_float())
            return eta + (base_lr - eta) * (1 + jnp.cos(jnp.pi * x / t_max)) / 2

        return cosine
    if name == "CosineAnnealingWarmRestarts":
        return _warm_restarts(twin, group)
    return _one_cycle(twin, key, group)


def _float():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _warm_restarts(twin: Any, group: int) -> Callable[[jax.Array], jax.Array]:
    eta, base_lr = float(twin.eta_min), float(twin.base_lrs[group])
    a, t_cur, t_i, mult = int(twin.last_epoch), float(twin.T_cur), float(twin.T_i), twin.T_mult
    if mult == 1:

        def position(e):
            return jnp.mod(t_cur + (e - a).astype(_float()), t_i), t_i

    else:  # the restarts to the largest count, each T_mult times longer: a few dozen
        starts, curs, lengths = [a], [t_cur], [t_i]
        while starts[-1] <= _LAST:
            ahead = max(1, math.ceil(lengths[-1] - curs[-1]))
            cur = (curs[-1] + ahead) % lengths[-1]
            starts.append(starts[-1] + ahead)
            curs.append(cur)
            lengths.append(lengths[-1] * mult)

        def position(e):
            i = jnp.searchsorted(jnp.asarray(np.minimum(starts, _LAST), e.dtype), e, "right") - 1
            i = jnp.maximum(i, 0)
            begin = jnp.asarray(np.minimum(starts, _LAST), e.dtype)[i]
            return jnp.asarray(curs, _float())[i] + (e - begin).astype(_float()), jnp.asarray(
                lengths, _float()
            )[i]

    def restarts(e):
        cur, length = position(e)
        return eta + (base_lr - eta) * (1 + jnp.cos(jnp.pi * cur / length)) / 2

    return restarts


def _one_cycle(twin: Any, key: str, group: int) -> Callable[[jax.Array], jax.Array]:
    g = twin.optimizer.param_groups[group]
    which = ("start_lr", "end_lr") if key == "lr" else ("start_momentum", "end_momentum")
    phases, begin = [], 0.0
    for phase in twin._schedule_phases:
        end = float(phase["end_step"])
        phases.append((begin, end, float(g[phase[which[0]]]), float(g[phase[which[1]]])))
        begin = end
    cos, total = twin._anneal_func_type == "cos", int(twin.total_steps)

    def one_cycle(e):
        # Past total_steps torch raises; the lr of its last step holds.
        x = jnp.minimum(e.astype(_float()), float(total))
        value = None
        for begin, end, start, stop in reversed(phases):
            pct = (x - begin) / (end - begin)
            here = (
                stop + (start - stop) / 2.0 * (jnp.cos(jnp.pi * pct) + 1)
                if cos
                else (stop - start) * pct + start
            )
            value = here if value is None else jnp.where(x <= end, here, value)
        return value

    return one_cycle


def _pieces(twin: Any, key: str, span: int, depth: int) -> list[Callable]:
    """One :class:`_Piece` per group for ``twin`` (a detached copy) from where it stands.

    ``span``: the scheduler steps ahead that will be read at most (the rest of a
    ``SequentialLR`` phase; ``_LAST`` for ever); ``depth``: the scheduler steps of
    torch's own values to tabulate at most, or changes of a piecewise-constant
    one. ``twin`` is stepped.
    """
    name, p = type(twin).__name__, _position(twin)
    if name == "SequentialLR":
        return _sequential(twin, key, span, depth)
    groups = range(len(twin.optimizer.param_groups))
    if name in ("StepLR", "ExponentialLR", "MultiStepLR", "ConstantLR"):
        # torch's own value at each change (its lr is constant between them): the
        # copy is moved to just before each change and stepped once.
        epochs, more = _changes(twin, depth)
        epochs = [e for e in epochs if e - p <= span]
        rows, starts = [_values(twin, key)], [p]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for e in epochs:
                twin.last_epoch = e - 1
                twin.step()
                rows.append(_values(twin, key))
                starts.append(e)
        table = np.asarray(rows)
        tails: list[Any] = [None] * len(groups)
        if more:
            ratio = _ratio(twin, starts[-1], _float())
            tails = [(lambda e, v=table[-1, i]: v * ratio(e)) for i in groups]
        return [_Piece(starts, table[:, i], tails[i]) for i in groups]
    settles = _settles(twin)
    ahead = min(span, depth)
    if settles is not None:
        ahead = min(ahead, max(settles - p, 0))
    rows = [_values(twin, key)]
    with warnings.catch_warnings():  # once, not per step: it costs more than a step
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(ahead):
            twin.step()
            rows.append(_values(twin, key))
    table, a = np.asarray(rows), p + ahead
    starts = list(range(p, a + 1))
    if (settles is not None and a >= settles) or ahead == span:
        return [_Piece(starts, table[:, i]) for i in groups]
    if name in _FACTORS or name == "ChainedScheduler":
        children = twin._schedulers if name == "ChainedScheduler" else [twin]
        ratios = [_ratio(child, int(child.last_epoch), _float()) for child in children]
        offsets = [int(child.last_epoch) - a for child in children]

        def product(e, v):
            out = jnp.asarray(v, _float())
            for ratio, offset in zip(ratios, offsets):
                out = out * ratio(e + offset)
            return out

        return [
            _Piece(starts, table[:, i], lambda e, v=table[-1, i]: product(e, v)) for i in groups
        ]
    return [_Piece(starts, table[:, i], _closed(twin, key, i)) for i in groups]


def _sequential(twin: Any, key: str, span: int, depth: int) -> list[Callable]:
    """A ``SequentialLR``'s phases, each its child's pieces from the phase's first epoch."""
    p, marks = int(twin.last_epoch), list(twin._milestones)
    now = bisect.bisect_right(marks, p)
    groups = twin.optimizer.param_groups
    phases = []  # (first epoch of the phase, its child's epoch then, pieces)
    ends = [*marks, None]
    for j in range(now, len(twin._schedulers)):
        first = p if j == now else marks[j - 1]
        if first - p > span:
            break
        child = detached_copy(twin._schedulers[j], groups)
        if j != now:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                child._update_lr(0)  # what SequentialLR.step does at a milestone
        local = int(child.last_epoch) if j == now else 0
        length = _LAST if ends[j] is None else ends[j] - first - 1
        phases.append((first, local, _pieces(child, key, min(length, span - (first - p)), depth)))

    def sequential(i):
        def value(e):
            first, local, pieces = phases[0]
            out = pieces[i](e - first + local)
            for first, local, pieces in phases[1:]:
                out = jnp.where(e >= first, pieces[i](e - first), out)
            return out

        return value

    return [sequential(i) for i in range(len(groups))]


def _position(scheduler: Any) -> int:
    """``last_epoch`` (a ``ChainedScheduler``'s is its children's, which must agree)."""
    if type(scheduler).__name__ == "ChainedScheduler" and not isinstance(scheduler, tuple):
        epochs = {int(child.last_epoch) for child in scheduler._schedulers}
        if len(epochs) != 1:
            raise ValueError(
                f"the ChainedScheduler's schedulers stand at different epochs {sorted(epochs)}; "
                "jrmsprop translates a chain whose schedulers were created together"
            )
        return epochs.pop()
    if isinstance(scheduler, tuple):
        return int(dict(scheduler[1]).get("last_epoch", 0))
    return int(scheduler.last_epoch)


def derive_steps_per_scheduler_step(step: int, last_epoch: int, given: Any, who: str) -> int:
    """The optimizer steps per ``scheduler.step()``, derived from the run and checked.

    A run whose scheduler steps once every ``k`` optimizer steps (``k`` = 1: every
    step; the steps of an epoch for a scheduler stepped per epoch) stands at
    ``last_epoch == step // k``, where ``step`` is the optimizer steps taken
    (the largest per-parameter step).

    Args:
      step: the optimizer steps taken.
      last_epoch: the scheduler's ``last_epoch``.
      given: ``k`` as the user gave it, or ``None`` to derive it: 1 when
        ``step == last_epoch``, else the one ``k`` with ``step // k ==
        last_epoch``.
      who: how errors name the caller.

    Returns:
      ``k``.

    Raises:
      ValueError: ``given`` is not a positive int, contradicts ``step`` and
        ``last_epoch``, or (``None``) no single ``k`` fits them; the message says
        what to pass.
    """
    if given is not None and (
        isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < 1
    ):
        raise ValueError(
            f"{who}: steps_per_scheduler_step must be a positive int (the optimizer steps "
            f"between two scheduler.step() calls), got {given!r}"
        )
    seen = (
        f"{who}: the optimizer's parameters have taken {step} steps (the largest "
        f"per-parameter step) and the scheduler stands at last_epoch {last_epoch}"
    )
    # Every k with step // k == last_epoch.
    if last_epoch > 0:
        low, high = step // (last_epoch + 1) + 1, step // last_epoch
    else:
        low, high = step + 1, None
    fits = f"{low}" if low == high else (f"{low}..{high}" if high else f"any int above {step}")
    if given is not None:
        if step // given != last_epoch:
            advice = (
                f"pass steps_per_scheduler_step={fits}"
                if high is None or low <= high
                else "no steps_per_scheduler_step fits: give the scheduler that was stepped "
                "with this optimizer (stepped after every k-th optimizer step)"
            )
            raise ValueError(
                f"{seen}; with steps_per_scheduler_step={int(given)} it would stand at "
                f"{step // given}: {advice}"
            )
        return int(given)
    if step == last_epoch:
        return 1
    if high is not None and low == high:
        return low
    if high is not None and low > high:
        raise ValueError(
            f"{seen}: no number of optimizer steps per scheduler.step() fits (was the "
            "scheduler stepped before the optimizer, or created later?); give the scheduler "
            "that was stepped after every k-th optimizer step of this optimizer"
        )
    raise ValueError(
        f"{seen}: pass steps_per_scheduler_step= the optimizer steps per scheduler.step() "
        f"({fits} fit these counts)"
    )


def _largest_step(optimizer: Any, who: str) -> int:
    return max(
        (
            step_count(entry["step"], f"{who}: optimizer state")
            for entry in optimizer.state.values()
            if "step" in entry
        ),
        default=0,
    )


def scheduler_target(scheduler: Any, optimizer: Any, count: int, given: Any, who: str) -> int:
    """The ``last_epoch`` a scheduler moves to for a JAX run at optax ``count``.

    ``k`` is derived (or checked) from torch's objects as they stood when the run
    left: the optimizer's steps and the scheduler's ``last_epoch``, as
    :func:`jrmsprop.interop.from_torch` derives it, so both directions agree.

    Raises:
      ValueError: as :func:`derive_steps_per_scheduler_step`; a scheduler past ``count``.
    """
    position = _position(scheduler)
    k = derive_steps_per_scheduler_step(0, 0, given, who)  # a positive int, or 1
    if count // k >= position and any("step" in entry for entry in optimizer.state.values()):
        # The optimizer's steps (none: nothing to check against) decide k.
        k = derive_steps_per_scheduler_step(_largest_step(optimizer, who), position, given, who)
    target = count // k
    if target < position:
        raise ValueError(
            f"{who}: the scheduler stands at last_epoch {position}, past the state's position "
            f"(count {count} // {k} optimizer steps per scheduler step = {target}): give the "
            "scheduler tx came from, at its position then"
        )
    return target


def schedules_of(
    scheduler: Any,
    groups: Sequence[Mapping] | None = None,
    *,
    steps_per_scheduler_step: int | None = None,
    horizon: int | None = None,
    step: int | None = None,
    who: str = "from_torch_scheduler",
) -> tuple[dict, int]:
    """The hyperparameters a scheduler moves, as optax schedules per param group.

    As :func:`from_torch_scheduler`, which returns the ``"lr"`` entry, but as
    ``({"lr": [...], "momentum": [...]?}, count)``: ``"momentum"`` when the
    scheduler moves it too (``OneCycleLR(cycle_momentum=True)``).
    """
    check_translatable(scheduler)
    if horizon is not None and (
        isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1
    ):
        raise ValueError(f"horizon must be a positive int (optimizer steps), got {horizon!r}")
    if groups is None:
        groups = scheduler.optimizer.param_groups
    position = _position(scheduler)
    if step is None:  # the start of the scheduler's epoch
        k = derive_steps_per_scheduler_step(0, 0, steps_per_scheduler_step, who)
        step = position * k
    else:
        k = derive_steps_per_scheduler_step(step, position, steps_per_scheduler_step, who)
    depth = TABLE if horizon is None else max(TABLE, -(-(step % k + horizon) // k))
    # OneCycleLR(cycle_momentum=True) also moves each group's momentum.
    keys = ["lr"] + (
        ["momentum"] if getattr(detached_copy(scheduler, groups), "cycle_momentum", False) else []
    )
    columns = {}
    for key in keys:
        pieces = _pieces(detached_copy(scheduler, groups), key, _LAST, depth)
        columns[key] = [_schedule(piece, k, position) for piece in pieces]
    return columns, step


def _schedule(piece: Callable, k: int, position: int) -> Callable[[jax.Array], jax.Array]:
    def schedule(count: jax.Array) -> jax.Array:
        # Before the scheduler's position: its current value (what init reads).
        count = jnp.asarray(count)
        return piece(jnp.maximum(count // k, position))

    return schedule


def from_torch_scheduler(
    scheduler: Any,
    groups: Sequence[Mapping] | None = None,
    *,
    steps_per_scheduler_step: int | None = None,
    horizon: int | None = None,
    step: int | None = None,
) -> tuple[list[Callable[[jax.Array], jax.Array]], int]:
    """One optax schedule per param group, continuing a torch scheduler from where it stands.

    The schedule of group ``i`` returns, at optax count ``n`` (the optimizer
    steps taken before this one), the lr torch's scheduler gives group ``i`` at
    ``last_epoch = n // steps_per_scheduler_step``: the scheduler steps after
    every ``steps_per_scheduler_step``-th optimizer step, as in torch. Before the
    scheduler's position it is the current lr. It is defined for every count:

    - torch's own values, to the last bit, for the next 2,048 scheduler steps
      (or over ``horizon``) and at every change of a ``StepLR``,
      ``MultiStepLR``, ``ExponentialLR`` or ``ConstantLR`` within those 2,048
      changes (a ``MultiStepLR``'s milestones however far);
    - past them, the scheduler's closed form: the lr held once it settles
      (``MultiStepLR``, ``ConstantLR``, ``LinearLR``, ``PolynomialLR``), a
      power of ``gamma``, the cosine (periodic, as torch's), the warm restarts.
      torch's recursive forms drift from their own closed forms by rounding
      (a ``CosineAnnealingLR`` by 4e-11 relative over 100,000 steps);
    - a ``OneCycleLR`` past its ``total_steps``, where torch raises: the lr of
      torch's last step (``last_epoch = total_steps``) holds.

    Translating costs the table and one entry per milestone or phase, never
    one per step: a milestone at 10**9 translates in milliseconds.

    Args:
      scheduler: a ``torch.optim.lr_scheduler`` ``StepLR``, ``MultiStepLR``,
        ``ExponentialLR``, ``CosineAnnealingLR``, ``CosineAnnealingWarmRestarts``
        (stepped without an epoch), ``LinearLR``, ``ConstantLR``,
        ``PolynomialLR``, ``OneCycleLR``, a ``SequentialLR`` of those, or a
        ``ChainedScheduler`` of ``StepLR``, ``MultiStepLR``, ``ExponentialLR``,
        ``ConstantLR``, ``LinearLR`` and ``PolynomialLR``; or, for all but the
        last two, ``(class, scheduler.state_dict())`` from a checkpoint.
      groups: the optimizer's param groups (``lr`` and ``initial_lr`` of each);
        default: ``scheduler.optimizer.param_groups``.
      steps_per_scheduler_step: optimizer steps between two ``scheduler.step()``
        calls (the steps of an epoch for a scheduler stepped once per epoch);
        default: derived from ``step`` and ``last_epoch`` (1 without ``step``).
      horizon: not needed. Optimizer steps ahead over which the values are
        torch's own to the last bit when that is more than 2,048 scheduler steps.
      step: the optimizer steps the run has taken (the largest per-parameter
        step), checked against ``last_epoch``; default ``last_epoch *
        steps_per_scheduler_step``.

    Returns:
      ``(schedules, count)``: a list with one schedule per param group, and the
      optax count to continue from (``step``).

    Raises:
      TypeError: a scheduler that cannot be translated (the message says what
        to do instead).
      ValueError: a bad ``steps_per_scheduler_step`` or ``horizon``, or a
        ``steps_per_scheduler_step`` that contradicts ``step`` and ``last_epoch``.

    Example::

      >>> import torch, jrmsprop.interop.schedules as schedules
      >>> opt = torch.optim.RMSprop(torch.nn.Linear(2, 1).parameters(), lr=0.1)
      >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
      >>> (lr,), count = schedules.from_torch_scheduler(sched)
      >>> [round(float(lr(n)), 6) for n in range(count, count + 5)]  # float32 unless x64
      [0.1, 0.1, 0.05, 0.05, 0.025]
      >>> float(lr(10**9)) == 0.0  # 0.1 * 0.5 ** (5 * 10**8): underflows, never NaN
      True
    """
    columns, count = schedules_of(
        scheduler,
        groups,
        steps_per_scheduler_step=steps_per_scheduler_step,
        horizon=horizon,
        step=step,
    )
    return columns["lr"], count


def advanced_copy(scheduler: Any, groups: Sequence[Mapping], target: int) -> Any:
    """A detached copy of ``scheduler`` stepped on the host to ``last_epoch = target``.

    Within ``TABLE`` steps the copy is stepped ``target - last_epoch`` times, as
    torch would. Farther, a far target costs its milestones, not its steps: a
    ``MultiStepLR`` or ``ConstantLR`` moves to each change and then to
    ``target`` (its lr is constant between changes, so this is torch's value);
    a scheduler with a closed form (``StepLR``, ``ExponentialLR``,
    ``CosineAnnealingLR``, ``LinearLR``, ``PolynomialLR``) and a ``OneCycleLR``
    take torch's own value at ``target`` as ``scheduler.step(target)`` computes
    it (the closed form, as the JAX schedule past its table; torch's recursive
    form drifts from it by rounding); a ``SequentialLR``, ``ChainedScheduler``
    or ``CosineAnnealingWarmRestarts`` is stepped.
    """
    twin = detached_copy(scheduler, groups)
    position = _position(twin)
    name = type(twin).__name__
    closed = hasattr(twin, "_get_closed_form_lr") or name == "OneCycleLR"
    if name not in ("MultiStepLR", "ConstantLR") and closed and target - position > TABLE:
        steps = twin._step_count
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            twin._update_lr(target)  # what scheduler.step(target) does
        twin._step_count = steps + target - position
        return twin
    if name in ("MultiStepLR", "ConstantLR") and target - position > TABLE:
        steps = twin._step_count
        for epoch in _changes(twin, 0)[0]:
            if epoch > target:
                break
            twin.last_epoch = epoch - 1
            step_quietly(twin)
        twin.last_epoch, twin._step_count = target, steps + target - position
        return twin
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(position, target):
            twin.step()
    return twin
