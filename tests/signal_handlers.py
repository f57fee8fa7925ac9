"""Signal handlers for the tests that send signals: each test sets up the ones it relies on.

A process started with SIGINT ignored (a job started with ``&`` from a
non-interactive shell, ``nohup``, some CI runners) installs no Ctrl-C handler,
so a test's own ``os.kill(SIGINT)`` would do nothing there; these fixtures
give the same handlers however pytest was launched, and put back what was
there before.
"""

from __future__ import annotations

import signal

import pytest

# The signals the tests install handlers for.
SIGNALS = (signal.SIGINT, signal.SIGALRM, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


@pytest.fixture
def ctrl_c():
    """Ctrl-C (SIGINT) raises ``KeyboardInterrupt`` for the duration of one test."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def handlers():
    """``install(signum, handler)`` for one test; afterwards the interval timer is off and
    every handler of :data:`SIGNALS` is as it was."""
    saved = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        yield signal.signal
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in saved.items():
            if handler is not None:  # None: not installed from Python, nothing to put back
                signal.signal(s, handler)
