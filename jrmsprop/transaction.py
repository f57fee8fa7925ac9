"""A step of :class:`jrmsprop.FunctionalRMSprop` as one transaction.

A step is checked (``FunctionalRMSprop._check``: everything that can be
wrong is found before anything runs), then, with every Python-level signal
handler held back (:func:`signals_deferred`), run (:func:`run`: the compiled
calls, which donate the parameters and state buffers) and committed
(``FunctionalRMSprop._commit``: plain assignments that cannot fail).
:func:`apply` is that order, in one place.

Donation is why it is a transaction: between the first compiled call and the
commit the only copy of a parameter is in a local variable. An exception
raised there (a signal handler's ``KeyboardInterrupt`` or ``TimeoutError``)
would lose it; a handler that reads the optimizer there (a preemption
checkpoint) would see it half-stepped.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # getsignal without signal's enum wrapper
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from jrmsprop.units import Layout, step_units

# Every signal Python can have a handler for (SIGKILL and SIGSTOP cannot).
SIGNALS = tuple(
    int(s)
    for s in signal.valid_signals()
    if s not in (getattr(signal, "SIGKILL", None), getattr(signal, "SIGSTOP", None))
)


class Plan(NamedTuple):
    """A checked step: everything the run and the commit need."""

    leaves: list  # the parameter arrays, per position
    grads: list  # per position, an array or None
    hyper: np.ndarray  # HYPER_ORDER's values, then 1 - alpha
    use_momentum: bool
    stepping: tuple  # positions with a gradient
    todo: list  # per unit to run: (unit, indices of its stepping members, their positions)
    states: Any  # per unit (a list) or per unit to run (a dict): its state with the used buffers
    exact: bool  # whether those are all the buffers each unit has
    dispatch: bool  # whether shapes, dtypes and deleted arrays are left to the compiled call

    @property
    def everyone(self) -> bool:
        """Whether every position steps."""
        return len(self.stepping) == len(self.leaves)


def apply(
    plan: Plan,
    donate: bool,
    run: Callable[[Plan, bool], tuple[list, Exception | None]],
    commit: Callable[[Plan, list], None],
    partial: Callable[[Plan, list, Exception], None],
    settled: Callable[[], None] | None = None,
) -> None:
    """Runs ``plan`` and commits what ran, with signal handlers held back throughout.

    ``run(plan, donate)`` returns what ran and the error that stopped it, if
    any. Without donation nothing was consumed, so an error drops what ran
    (all is as before). With donation what ran consumed its inputs: it is
    committed, then ``partial`` raises the error naming what took the step.
    ``settled`` is called once that is over, before any handler runs (see
    :func:`signals_deferred`).
    """
    with signals_deferred(settled):
        ran, error = run(plan, donate)
        if error is not None and not donate:
            raise error
        commit(plan, ran)
        if error is not None:
            partial(plan, ran, error)


@contextlib.contextmanager
def signals_deferred(settled: Callable[[], None] | None = None) -> Iterator[None]:
    """Holds back every Python-level signal handler until the block is done.

    Each signal whose handler is a Python callable (Ctrl-C's, a SIGALRM time
    limit, a checkpointing SIGUSR1) is recorded instead, and once the block
    is done ``settled()`` is called (it must not fail), every handler is put
    back and the held-back signals are raised again, in the order they
    arrived: their handlers see a whole optimizer. A handler that raises
    while the others go back or while the held-back signals are delivered
    (a second Ctrl-C, a repeating time limit) stops neither: every handler
    goes back, every held-back signal is delivered, and the first exception
    propagates. ``SIG_DFL``, ``SIG_IGN`` and handlers not installed from
    Python are left alone. Python runs signal handlers only on the main
    thread, so elsewhere there is nothing to hold back (and a handler cannot
    be installed). Blocking the signals with ``signal.pthread_sigmask``
    would not do: the signal reaches one of XLA's threads, and Python runs
    the handler inside the blocked window.
    """
    if threading.current_thread() is not threading.main_thread():
        try:
            yield
        finally:
            if settled is not None:
                settled()
        return
    getsignal = _signal.getsignal
    previous = {s: h for s in SIGNALS if callable(h := getsignal(s))}
    received: list = []
    record = lambda signum, frame: received.append(signum)
    try:
        # signal.signal runs pending handlers first: a signal that arrived
        # before this point is handled here, before anything ran (and one
        # that raises is raised from here, once every handler is back).
        for s in previous:
            signal.signal(s, record)
        yield
    finally:
        if settled is not None:
            settled()
        errors: list = []
        _until_done(lambda: _put_back(previous, record), errors)
        _until_done(_delivery(received), errors)
        if errors:
            raise errors[0]


def _put_back(previous: dict, record: Callable) -> None:
    """Puts back each handler that is still ``record``; may be called again after a raise.

    A handler is put back only where ``record`` still stands: once back (or
    replaced by a handler that ran meanwhile), it is left alone, so calling
    this again after an exception finishes the work without undoing any.
    """
    getsignal = _signal.getsignal
    for s, handler in previous.items():
        if getsignal(s) is record:
            signal.signal(s, handler)


def _delivery(received: list) -> Callable[[], None]:
    """Raises each held-back signal again, in arrival order; resumable after a raise.

    The signal goes through Python's own machinery (``signal.raise_signal``
    runs its handler at once): a signal whose handler is put off by another
    handler's exception stays pending and runs at the next chance, never lost.
    Each signal is raised once: the position moves on before the raise. A
    signal whose handler is no longer a Python callable (a handler that ran
    meanwhile set ``SIG_DFL`` or ``SIG_IGN``) is dropped, as the process would.
    """
    at = [0]

    def rest() -> None:
        while at[0] < len(received):  # handlers that ran meanwhile may append more
            signum = received[at[0]]
            live = callable(_signal.getsignal(signum))
            at[0] += 1
            if live:
                signal.raise_signal(signum)

    return rest


def _until_done(work: Callable[[], None], errors: list) -> None:
    """Calls ``work()`` until it returns, whatever signal handlers raise meanwhile.

    A handler (Python runs them between bytecodes, on the main thread) may
    raise at any point of ``work``; each exception goes to ``errors`` and
    ``work`` is called again. The nesting covers the loops' back edges,
    where Python also runs handlers: three handlers raising in a row, with
    no bytecode of ``work`` between them, are caught too.
    """
    while True:
        try:
            while True:
                try:
                    while True:
                        try:
                            work()
                            return
                        except BaseException as err:  # noqa: BLE001 (kept; the first is raised)
                            errors += (err,)
                except BaseException as err:  # noqa: BLE001 (a handler on the back edge)
                    errors += (err,)
        except BaseException as err:  # noqa: BLE001 (a handler on the back edge)
            errors += (err,)


def run(
    plan: Plan,
    donate: bool,
    *,
    layout: Layout,
    foreach: bool,
    maximize: bool,
    zero_grad: Callable[[int], Any],
) -> tuple[list, Exception | None]:
    """The compiled work: what ran, as ``[(units, positions, params, states, stepped)]``, and any error.

    ``foreach=False``: one call for every unit (a unit is a position); if it
    fails, nothing ran. ``foreach=True``: one call per unit; a failure stops
    the loop, and the units that ran so far come back with the error: their
    inputs are consumed, so they must be committed.
    """
    static = {"maximize": maximize, "decay": bool(plan.hyper[3] != 0), "donate": donate}
    leaves, grads, states = plan.leaves, plan.grads, plan.states
    if not foreach:
        stepping = plan.stepping
        if plan.everyone and plan.exact:  # states is the optimizer's list, per position
            p, g, s = leaves, grads, states  # lists: JAX reads them in the call, nothing keeps them
        else:
            p = [leaves[i] for i in stepping]  # lists, as above: one executable for both
            g = [grads[i] for i in stepping]
            s = [states[i] for i in stepping]
        try:
            new_params, new_states = step_units(p, g, s, plan.hyper, None, **static)
        except Exception as err:  # noqa: BLE001 (re-raised, with what was lost if anything)
            return [], err
        return [(stepping, stepping, new_params, new_states, stepping)], None
    ran: list = []
    for u, members, positions in plan.todo:
        everyone = layout.units[u]
        if layout.is_flat(u):
            # Every member goes in, a zero gradient where there is none; the
            # mask (a runtime value) keeps the others bit for bit.
            mask = np.zeros(len(everyone), bool)
            mask[list(members)] = True
            given = [grads[i] if grads[i] is not None else zero_grad(i) for i in everyone]
            masks: tuple | None = (mask,)
        else:
            given, masks = [grads[i] for i in everyone], None
        try:
            new_params, new_states = step_units(
                (tuple(leaves[i] for i in everyone),) if masks else (leaves[everyone[0]],),
                (tuple(given),) if masks else (given[0],),
                (states[u],),
                plan.hyper,
                masks,
                **static,
            )
        except Exception as err:  # noqa: BLE001 (committed with what ran, then re-raised)
            return ran, err
        if masks:
            (new_params,) = new_params
        ran.append(((u,), tuple(everyone), new_params, new_states, positions))
    return ran, None
