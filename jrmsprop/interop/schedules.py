"""``torch.optim.lr_scheduler`` schedulers as optax schedules, number for number.

A translated schedule is a table of the learning rates torch's own scheduler
computes from where it stands: a detached copy of the scheduler (its state, on
a stand-in optimizer holding only the groups' learning rates) is stepped
forward on the host, so every value is torch's arithmetic, its recursive
("chainable") forms included, float for float. The schedule looks its value up
by optax's count (the number of updates applied before this one).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jrmsprop.interop._torch import _import_torch

# The schedulers whose next lr depends only on their own state (not on a
# metric, not on user code), by class name.
TRANSLATABLE = (
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearLR",
    "ConstantLR",
    "PolynomialLR",
    "OneCycleLR",
    "SequentialLR",
)
_WHAT_TO_DO = {
    "LambdaLR": "its lr is user code jrmsprop cannot read: write the same function as an "
    "optax schedule of the step and pass it as rmsprop(lr=...)",
    "MultiplicativeLR": "its lr is user code jrmsprop cannot read: write the product as an "
    "optax schedule of the step and pass it as rmsprop(lr=...)",
    "ReduceLROnPlateau": "its lr follows a metric, not the step: use "
    "optax.contrib.reduce_on_plateau chained after rmsprop (it scales the updates)",
    "ChainedScheduler": "a product of schedulers is not translated: build the product as an "
    "optax schedule (e.g. of optax.join_schedules pieces) and pass it as rmsprop(lr=...)",
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
    if name == "SequentialLR":
        if isinstance(scheduler, tuple):
            raise TypeError(
                f"{where}: a SequentialLR cannot be rebuilt from its state_dict alone (the "
                "state dict does not name the classes of its schedulers): build the "
                "SequentialLR, load_state_dict the checkpoint into it, and pass the object"
            )
        for i, child in enumerate(scheduler._schedulers):
            check_translatable(child, f"{where}._schedulers[{i}]")


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


def _settles_at(scheduler: Any) -> int | None:
    """The epoch from which the scheduler's lr never changes again, if there is one."""
    name = type(scheduler).__name__
    if name in ("LinearLR", "ConstantLR", "PolynomialLR"):
        return int(scheduler.total_iters)
    if name == "MultiStepLR":
        return max(scheduler.milestones, default=0)
    if name == "SequentialLR":
        last = _settles_at(scheduler._schedulers[-1])
        start = scheduler._milestones[-1] if scheduler._milestones else 0
        return None if last is None else start + last
    return None


def _ends_at(scheduler: Any) -> int | None:
    """The last epoch torch allows (``OneCycleLR`` raises past its ``total_steps``)."""
    name = type(scheduler).__name__
    if name == "OneCycleLR":
        return int(scheduler.total_steps)
    if name == "SequentialLR":
        last = _ends_at(scheduler._schedulers[-1])
        start = scheduler._milestones[-1] if scheduler._milestones else 0
        return None if last is None else start + last
    return None


def _lr_number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def schedules_of(
    scheduler: Any,
    groups: Sequence[Mapping] | None = None,
    *,
    steps_per_scheduler_step: int = 1,
    horizon: int | None = None,
) -> tuple[dict, int]:
    """The hyperparameters a scheduler moves, as optax schedules per param group.

    As :func:`from_torch_scheduler`, which returns the ``"lr"`` entry, but as
    ``({"lr": [...], "momentum": [...]?}, count)``: ``"momentum"`` when the
    scheduler moves it too (``OneCycleLR(cycle_momentum=True)``).
    """
    check_translatable(scheduler)
    if not isinstance(steps_per_scheduler_step, int) or steps_per_scheduler_step < 1:
        raise ValueError(
            f"steps_per_scheduler_step must be a positive int, got {steps_per_scheduler_step!r}"
        )
    if horizon is not None and (not isinstance(horizon, int) or horizon < 1):
        raise ValueError(f"horizon must be a positive int (optimizer steps), got {horizon!r}")
    if groups is None:
        groups = scheduler.optimizer.param_groups
    twin = detached_copy(scheduler, groups)
    start = int(twin.last_epoch)
    settles, ends = _settles_at(twin), _ends_at(twin)
    k = steps_per_scheduler_step
    last = None if horizon is None else start + (horizon - 1) // k
    if settles is not None:
        last = max(start, settles) if last is None else min(last, max(start, settles))
    if ends is not None:
        last = ends if last is None else min(last, ends)
    if last is None:
        raise ValueError(
            f"a {type(twin).__name__} never settles on one lr: pass horizon=the number of "
            "optimizer steps the JAX run will take, so its lrs can be tabulated from torch's"
        )
    # OneCycleLR(cycle_momentum=True) also moves each group's momentum.
    keys = ["lr"] + (["momentum"] if getattr(twin, "cycle_momentum", False) else [])
    rows = [[[_lr_number(g[key]) for g in twin.optimizer.param_groups] for key in keys]]
    for _ in range(start, last):
        step_quietly(twin)
        rows.append([[_lr_number(g[key]) for g in twin.optimizer.param_groups] for key in keys])
    table = np.asarray(rows, np.float64)  # (epoch, key, group)
    holds = settles is not None and last == max(start, settles)

    def make(column: np.ndarray) -> Callable[[jax.Array], jax.Array]:
        padded = np.append(column, np.nan)

        def schedule(count: jax.Array) -> jax.Array:
            # Before the current position: the current value (what init reads).
            index = jnp.maximum(jnp.asarray(count) // k - start, 0)
            if holds:
                index = jnp.minimum(index, len(column) - 1)
            return jnp.asarray(padded)[jnp.minimum(index, len(column))]

        return schedule

    columns = {
        key: [make(table[:, j, i]) for i in range(table.shape[2])] for j, key in enumerate(keys)
    }
    return columns, start * k


def from_torch_scheduler(
    scheduler: Any,
    groups: Sequence[Mapping] | None = None,
    *,
    steps_per_scheduler_step: int = 1,
    horizon: int | None = None,
) -> tuple[list[Callable[[jax.Array], jax.Array]], int]:
    """One optax schedule per param group, continuing a torch scheduler from where it stands.

    The schedule of group ``i`` returns, at optax count ``n``, the lr torch's
    scheduler gives group ``i`` after ``n // steps_per_scheduler_step``
    scheduler steps in all, i.e. its lr at ``last_epoch = n //
    steps_per_scheduler_step``. So the state continuing the run has ``count =
    last_epoch * steps_per_scheduler_step`` (the second value returned); a run
    moved between two scheduler steps of an epoch-stepped scheduler adds the
    optimizer steps already taken in that epoch.

    The values are torch's own, computed by stepping a detached copy of the
    scheduler on the host for the epochs ahead: up to the epoch from which the
    lr never changes (``LinearLR``, ``ConstantLR``, ``PolynomialLR``,
    ``MultiStepLR``, and a ``SequentialLR`` ending in one; the lr stays there
    afterwards), to ``OneCycleLR``'s last step, or over ``horizon``. Past the
    table the lr is NaN, so an overrun cannot pass unnoticed (torch's
    ``OneCycleLR`` raises past its end); before the scheduler's current position
    it is the current lr.

    Args:
      scheduler: a ``torch.optim.lr_scheduler`` ``StepLR``, ``MultiStepLR``,
        ``ExponentialLR``, ``CosineAnnealingLR``, ``LinearLR``, ``ConstantLR``,
        ``PolynomialLR``, ``OneCycleLR`` or ``SequentialLR`` of those; or, for all
        but ``SequentialLR``, ``(class, scheduler.state_dict())`` from a checkpoint.
      groups: the optimizer's param groups (``lr`` and ``initial_lr`` of each);
        default: ``scheduler.optimizer.param_groups``.
      steps_per_scheduler_step: optimizer steps between two ``scheduler.step()``
        calls (the steps of an epoch for a scheduler stepped once per epoch).
      horizon: optimizer steps to tabulate from now; needed for schedulers that
        never settle (``StepLR``, ``ExponentialLR``, ``CosineAnnealingLR``), optional
        for the others (which it can only shorten, never lengthen past an end).

    Returns:
      ``(schedules, count)``: a list with one schedule per param group, and the
      optax count that stands for the scheduler's current position.

    Raises:
      TypeError: a scheduler that cannot be translated (the message says what
        to do instead).
      ValueError: a bad ``steps_per_scheduler_step`` or ``horizon``, or no
        ``horizon`` for a scheduler that needs one.

    Example::

      >>> import torch, jrmsprop.interop.schedules as schedules
      >>> opt = torch.optim.RMSprop(torch.nn.Linear(2, 1).parameters(), lr=0.1)
      >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
      >>> (lr,), count = schedules.from_torch_scheduler(sched, horizon=10)
      >>> [round(float(lr(n)), 6) for n in range(count, count + 5)]  # float32 unless x64
      [0.1, 0.1, 0.05, 0.05, 0.025]
    """
    columns, count = schedules_of(
        scheduler, groups, steps_per_scheduler_step=steps_per_scheduler_step, horizon=horizon
    )
    return columns["lr"], count
