"""FunctionalRMSprop under signals within signals, and handlers that call the optimizer back.

Deterministic: each signal is sent to the main thread (``signal.pthread_kill``)
at a chosen point of a step, by a hook on that point, so Python runs its
handler at the next bytecode there; nothing depends on a timer's luck.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from signal_handlers import ctrl_c, handlers  # noqa: F401 (fixtures)
from test_adapter_transaction import _same, _steps

from jrmsprop import FunctionalRMSprop, adapter, transaction

PROGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parallel_progs")
sys.path.insert(0, PROGS)
from runner import run_processes  # noqa: E402

MAIN = threading.main_thread().ident
N = 5


def _kill(signum):
    """Sends ``signum`` to the main thread: its handler runs at the next bytecode there."""
    signal.pthread_kill(MAIN, signum)


def _params(n=N):
    return [jnp.full((4,), 1.0 + k, jnp.float32) for k in range(n)]


def _grads(n=N, scale=0.5):
    return [jnp.full((4,), scale * (k + 1), jnp.float32) for k in range(n)]


def _pair(foreach, **config):
    """An optimizer and its twin, each stepped once."""
    opt = FunctionalRMSprop(_params(), momentum=0.5, foreach=foreach, **config)
    twin = FunctionalRMSprop(_params(), momentum=0.5, foreach=foreach, **config)
    for o in (opt, twin):
        o.step(_grads())
    return opt, twin


def _signal_module(after=None, before=None):
    """``signal`` as :mod:`jrmsprop.transaction` sees it, with ``before(signum, handler)`` and
    ``after(signum, handler)`` called around each ``signal.signal`` call."""
    real = signal.signal

    def set_handler(signum, handler):
        if before is not None:
            before(signum, handler)
        old = real(signum, handler)
        if after is not None:
            after(signum, handler)
        return old

    module = types.SimpleNamespace(**{k: getattr(signal, k) for k in dir(signal)})
    module.signal = set_handler
    return module


def _during_the_run(monkeypatch, *signums):
    """Sends ``signums`` while the step's first compiled call runs (held back till the commit)."""
    real = transaction.step_units
    sent = []

    def sending(*args, **kwargs):
        if not sent:
            sent.append(True)
            for s in signums:
                _kill(s)
        return real(*args, **kwargs)

    monkeypatch.setattr(transaction, "step_units", sending)


# ------------------------------------------- a handler that raises while the others go back


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_a_handler_raising_while_handlers_go_back_stops_neither_the_rest_nor_the_delivery(
    foreach, handlers, monkeypatch
):
    # SIGUSR1 and SIGTERM arrive during the step and are held back. While the
    # handlers go back (in signal-number order: SIGUSR1, SIGALRM, SIGTERM), a
    # time limit's SIGALRM lands right after its own handler is back and raises.
    seen = []

    def time_limit(signum, frame):
        raise TimeoutError("time limit")

    def usr1(signum, frame):
        seen.append("usr1")

    def term(signum, frame):
        seen.append("term")

    for s, h in ((signal.SIGALRM, time_limit), (signal.SIGUSR1, usr1), (signal.SIGTERM, term)):
        handlers(s, h)
    opt, twin = _pair(foreach)
    fired = []

    def alarm_once_back(signum, handler):
        if handler is time_limit and not fired:
            fired.append(True)
            _kill(signal.SIGALRM)

    _during_the_run(monkeypatch, signal.SIGUSR1, signal.SIGTERM)
    monkeypatch.setattr(transaction, "signal", _signal_module(alarm_once_back))
    with pytest.raises(TimeoutError, match="time limit"):
        opt.step(_grads(scale=0.25))
    monkeypatch.undo()
    assert fired
    assert signal.getsignal(signal.SIGTERM) is term  # every handler went back
    assert signal.getsignal(signal.SIGUSR1) is usr1
    assert signal.getsignal(signal.SIGALRM) is time_limit
    assert seen == ["usr1", "term"]  # and the held-back signals were delivered, in order
    twin.step(_grads(scale=0.25))
    _same(opt, twin)  # the step was committed whole
    _kill(signal.SIGTERM)  # the caller's handler is live
    assert seen == ["usr1", "term", "term"]


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_three_handlers_raising_in_a_row_as_the_last_handler_goes_back(
    foreach, ctrl_c, handlers, monkeypatch
):
    # Ctrl-C, a raising SIGUSR2 and a time limit land together just after the
    # last handler is back: Python raises KeyboardInterrupt, then the next one
    # at its very next chance, inside the code that catches the one before.
    seen = []

    def time_limit(signum, frame):
        raise TimeoutError("time limit")

    def usr2(signum, frame):
        raise ValueError("usr2")

    def term(signum, frame):
        seen.append("term")

    def usr1(signum, frame):
        seen.append("usr1")

    for s, h in ((signal.SIGALRM, time_limit), (signal.SIGUSR1, usr1), (signal.SIGTERM, term)):
        handlers(s, h)
    handlers(signal.SIGUSR2, usr2)
    opt, twin = _pair(foreach)
    three = {signal.SIGINT, signal.SIGUSR2, signal.SIGALRM}
    fired = []

    def three_after_the_last(signum, handler):
        if handler is term and not fired:
            fired.append(True)
            signal.pthread_sigmask(signal.SIG_BLOCK, three)
            for s in sorted(three):
                _kill(s)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, three)  # the three handlers are due now

    _during_the_run(monkeypatch, signal.SIGUSR1)
    monkeypatch.setattr(transaction, "signal", _signal_module(three_after_the_last))
    with pytest.raises(KeyboardInterrupt):
        opt.step(_grads(scale=0.25))
    monkeypatch.undo()
    assert fired
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is term
    assert signal.getsignal(signal.SIGUSR2) is usr2
    assert seen == ["usr1"]  # delivered despite the three exceptions before it
    twin.step(_grads(scale=0.25))
    _same(opt, twin)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_300_steps_under_a_repeating_raising_time_limit_leave_every_handler_in_place(handlers):
    # The real thing, no hook: a SIGALRM time limit repeating faster than a
    # step raises at its first chance in each attempt (wherever that is: in
    # the step's checks, as the handlers go back, or in a gc callback, where
    # Python reports it as unraisable). Every attempt is whole, and a user's
    # SIGTERM handler stays put. Nothing here depends on the timer's luck:
    # each outcome is checked, whichever it is.
    def term(signum, frame):
        pass

    armed = [False]

    def time_limit(signum, frame):
        if armed[0]:
            armed[0] = False
            raise TimeoutError

    handlers(signal.SIGTERM, term)
    handlers(signal.SIGALRM, time_limit)
    opt = FunctionalRMSprop(_params(130), momentum=0.5, foreach=True)
    grads = _grads(130)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        opt.step(grads)
        jax.block_until_ready(opt.param_group["params"])
        timings.append(time.perf_counter() - started)
    duration = float(np.median(timings))
    replaced = []
    signal.setitimer(signal.ITIMER_REAL, duration / 3, duration / 5)
    for k in range(300):
        try:
            try:
                armed[0] = True
                opt.step(grads)
            finally:
                armed[0] = False
        except TimeoutError:
            pass
        if signal.getsignal(signal.SIGTERM) is not term:
            replaced.append(k)
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert replaced == []
    assert not any(p.is_deleted() for p in opt.param_group["params"])
    assert len(_steps(opt)) == 1


# --------------------------------------------- handlers that call the optimizer back mid-step


def _act(opt, action, saved, out):
    """What a handler does with the optimizer; a refusal is kept, not raised."""
    try:
        if action == "step":
            opt.step(_grads(scale=2.0))
        elif action == "load_state_dict":
            opt.load_state_dict(saved)
        elif action == "foreach":
            opt.foreach = not opt.foreach
        elif action == "centered":
            opt.centered = not opt.centered
        elif action == "state_dict":
            out.append(opt.state_dict())
        elif action == "deepcopy":
            out.append(copy.deepcopy(opt))
    except RuntimeError as err:
        out.append(err)


REFUSED = {
    "step": r"step\(\) called from a signal handler while a step is running",
    "load_state_dict": r"load_state_dict\(\) called from a signal handler while a step is running",
    "foreach": r"setting foreach called from a signal handler while a step is running",
    "centered": r"setting centered called from a signal handler while a step is running",
}


def _window(monkeypatch, where, send):
    """Calls ``send()`` once, at ``where`` in the next step: after its checks, or as its
    first ``signal.signal`` call holds the handlers back (which runs pending handlers)."""
    done = []

    def once():
        if not done:
            done.append(True)
            send()

    if where == "checks":
        real = adapter.check_gradients

        def checking(*args, **kwargs):
            result = real(*args, **kwargs)
            once()
            return result

        monkeypatch.setattr(adapter, "check_gradients", checking)
    else:
        monkeypatch.setattr(transaction, "signal", _signal_module(before=lambda s, h: once()))
    return done


@pytest.mark.parametrize("where", ["checks", "holding back"])
@pytest.mark.parametrize(
    "action", ["step", "load_state_dict", "foreach", "centered", "state_dict", "deepcopy"]
)
def test_a_handler_calling_the_optimizer_mid_step_is_refused_or_reads_it_whole(
    action, where, handlers, monkeypatch
):
    opt, twin = _pair(foreach=False)
    saved = opt.state_dict()
    out = []
    handlers(signal.SIGUSR1, lambda signum, frame: _act(opt, action, saved, out))
    done = _window(monkeypatch, where, lambda: _kill(signal.SIGUSR1))
    opt.step(_grads())  # the handler's refusal is its own: this step goes on
    monkeypatch.undo()
    assert done and len(out) == 1
    if action in REFUSED:
        assert isinstance(out[0], RuntimeError)
        assert out[0].args[0].startswith("FunctionalRMSprop: ")
        assert re.search(REFUSED[action], out[0].args[0]), out[0]
    elif action == "state_dict":  # the optimizer as it was before the step: whole
        assert {int(e["step"]) for e in out[0]["state"].values()} == {1}
    else:  # an idle copy of the optimizer before the step, which steps on its own
        out[0].step(_grads())
        assert _steps(out[0]) == {2}
    twin.step(_grads())
    assert not any(p.is_deleted() for p in opt.param_group["params"])
    _same(opt, twin)  # the step took place once, whole
    opt.step(_grads())  # and the optimizer goes on
    assert _steps(opt) == {3}


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_a_refused_step_raised_by_the_handler_leaves_the_optimizer_as_it_was(
    foreach, handlers, monkeypatch
):
    # A handler that lets the refusal through stops the outer step before anything ran.
    opt, twin = _pair(foreach)
    params = opt.param_group["params"]

    def stepping(signum, frame):
        opt.step(_grads(scale=2.0))

    handlers(signal.SIGUSR1, stepping)
    _window(monkeypatch, "holding back", lambda: _kill(signal.SIGUSR1))
    with pytest.raises(RuntimeError, match=REFUSED["step"]):
        opt.step(_grads())
    monkeypatch.undo()
    assert opt.param_group["params"] is params
    assert not any(p.is_deleted() for p in params)
    _same(opt, twin)  # nothing changed
    assert signal.getsignal(signal.SIGUSR1) is stepping


@pytest.mark.parametrize("action", ["step", "foreach"])
def test_a_handler_changing_the_optimizer_mid_load_state_dict_is_refused(
    action, handlers, monkeypatch
):
    opt, _ = _pair(foreach=False)
    other = FunctionalRMSprop(_params(), lr=0.2, momentum=0.5)
    for _ in range(3):
        other.step(_grads())
    saved = other.state_dict()
    out = []
    handlers(signal.SIGUSR1, lambda signum, frame: _act(opt, action, saved, out))
    real = adapter.check_state_entry
    sent = []

    def checking(*args, **kwargs):
        real(*args, **kwargs)
        if not sent:
            sent.append(True)
            _kill(signal.SIGUSR1)

    monkeypatch.setattr(adapter, "check_state_entry", checking)
    before = [np.asarray(p) for p in opt.param_group["params"]]
    opt.load_state_dict(saved)
    monkeypatch.undo()
    assert sent and len(out) == 1 and isinstance(out[0], RuntimeError)
    assert f"{action if action == 'step' else 'setting foreach'}" in out[0].args[0]
    assert "called from a signal handler while a load_state_dict() is running" in out[0].args[0]
    assert opt.defaults["lr"] == 0.2 and _steps(opt) == {3}  # the dict, whole
    assert not opt.foreach
    for a, b in zip(opt.param_group["params"], before):  # no step ran
        np.testing.assert_array_equal(np.asarray(a), b)
    opt.step(_grads())
    assert _steps(opt) == {4}


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_a_held_back_handler_runs_after_the_commit_and_may_step_and_load(
    foreach, handlers, monkeypatch
):
    opt, twin = _pair(foreach)
    saved = opt.state_dict()  # after one step
    calls = []

    def usr1(signum, frame):
        calls.append("usr1")
        opt.step(_grads(scale=2.0))  # the outer step is committed: this one runs

    def usr2(signum, frame):
        calls.append("usr2")
        opt.load_state_dict(saved)

    handlers(signal.SIGUSR1, usr1)
    handlers(signal.SIGUSR2, usr2)
    _during_the_run(monkeypatch, signal.SIGUSR1)
    opt.step(_grads())
    assert calls == ["usr1"]
    twin.step(_grads())
    twin.step(_grads(scale=2.0))
    _same(opt, twin)
    monkeypatch.undo()
    _during_the_run(monkeypatch, signal.SIGUSR2)
    opt.step(_grads())
    monkeypatch.undo()
    assert calls == ["usr1", "usr2"]
    assert _steps(opt) == {1}  # the load came after the step


# ------------------------------------------------ load_state_dict's commit holds signals back


def test_a_signal_during_load_state_dicts_commit_is_handled_after_it(handlers):
    # The commit's first line (defaults.update) sends a raising SIGALRM: the
    # time limit is raised once the whole dict is in, never between two lines.
    def time_limit(signum, frame):
        raise TimeoutError("time limit")

    handlers(signal.SIGALRM, time_limit)
    opt = FunctionalRMSprop(_params(), lr=0.1, momentum=0.5)
    opt.step(_grads())
    other = FunctionalRMSprop(_params(), lr=0.2, momentum=0.5)
    for _ in range(3):
        other.step(_grads())
    saved = other.state_dict()

    class Defaults(dict):
        def update(self, *args, **kwargs):
            super().update(*args, **kwargs)
            _kill(signal.SIGALRM)

    opt.defaults = Defaults(opt.defaults)
    with pytest.raises(TimeoutError, match="time limit"):
        opt.load_state_dict(saved)
    assert opt.defaults["lr"] == 0.2
    assert _steps(opt) == {3}  # never the dict's lr with the step counts from before
    for a, b in zip(opt.state_dict()["state"].values(), saved["state"].values()):
        for key in b:
            np.testing.assert_array_equal(a[key], b[key])


# -------------------------------------------------------- a parameter donated elsewhere


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_a_parameter_donated_to_the_users_own_jit_is_named(foreach):
    opt, twin = _pair(foreach)
    params = opt.param_group["params"]
    kept = np.array(params[3])  # a copy: a view of the buffer would keep jit from donating it
    jax.jit(lambda x: x * 2, donate_argnums=0)(params[3])  # deletes params[3]
    assert params[3].is_deleted()
    with pytest.raises(ValueError, match=r"parameter \[3\] is a deleted array"):
        opt.step(_grads())
    assert [i for i, p in enumerate(params) if p.is_deleted()] == [3]  # nothing else lost
    params[3] = jnp.asarray(kept)
    _same(opt, twin)  # nothing changed
    opt.step(_grads())
    assert _steps(opt) == {2}


# ------------------------------------------------------------ however pytest is launched


def test_the_ctrl_c_tests_pass_when_pytest_starts_with_sigint_ignored():
    # As a job started with `&` from a non-interactive shell, or nohup, starts it.
    here = os.path.dirname(os.path.abspath(__file__))
    tests = [
        os.path.join(here, "test_adapter.py")
        + "::test_ctrl_c_at_each_unit_of_a_foreach_step_is_raised_after_the_commit",
        os.path.join(here, "test_adapter_signals.py")
        + "::test_three_handlers_raising_in_a_row_as_the_last_handler_goes_back",
    ]
    env = dict(os.environ)
    # The jrmsprop these tests import (a checkout or an installed wheel), and no other.
    package = os.path.dirname(os.path.dirname(os.path.abspath(adapter.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([package, env.get("PYTHONPATH", "")])
    pytest_cmd = [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    cmd = ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *pytest_cmd]
    ((rc, output),) = run_processes([(cmd, env)], deadline_s=420)
    assert rc == 0, output[-4000:]
    assert "3 passed" in output, output[-4000:]
