"""Counting XLA compilations, for tests that a step does not recompile.

jax records one ``backend_compile_duration`` event per XLA compilation. One
listener is registered for the whole test run and never removed: jax 0.7 (the
declared floor) has no public way to unregister one. A ``CompileCounter``
counts the events while its ``with`` block runs.
"""

from __future__ import annotations

import jax

EVENT = "/jax/core/compile/backend_compile_duration"
_active: list[CompileCounter] = []


def _listener(event: str, duration: float, **kwargs) -> None:
    if event == EVENT:
        for counter in _active:
            counter.count += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


class CompileCounter:
    """``with CompileCounter() as c: ...`` leaves the number of compilations in ``c.count``."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self):
        _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _active.remove(self)
