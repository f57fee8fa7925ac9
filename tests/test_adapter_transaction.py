"""FunctionalRMSprop's all-or-nothing promise under signals, debug flags and copies."""

from __future__ import annotations

import copy
import os
import pickle
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrmsprop import FunctionalRMSprop

PROGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parallel_progs")
sys.path.insert(0, PROGS)
from runner import check_ran, device_env, run_processes

N = 130  # with foreach=True: units of 64, 64 and 2


def _params():
    return [jnp.ones((4,), jnp.float32) for _ in range(N)]


def _grads(rng):
    g = rng.standard_normal((N, 4)).astype(np.float32)
    return [jnp.asarray(row) for row in g]


def _steps(opt):
    return {int(e["step"]) for e in opt.state_dict()["state"].values()}


def _same(a, b):
    """Two optimizers hold bitwise the same params and state dict."""
    for x, y in zip(a.param_group["params"], b.param_group["params"]):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    da, db = a.state_dict(), b.state_dict()
    assert da["param_groups"] == db["param_groups"]
    assert da["state"].keys() == db["state"].keys()
    for i, entry in da["state"].items():
        assert entry.keys() == db["state"][i].keys()
        for key, value in entry.items():
            np.testing.assert_array_equal(value, db["state"][i][key])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # in a gc callback
@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_a_raising_sigalrm_handler_at_random_moments_never_half_applies_a_step(foreach):
    armed = [False]

    def time_limit(signum, frame):
        if armed[0]:
            armed[0] = False
            raise TimeoutError("time limit")

    rng = np.random.default_rng(17)  # fixed gradients and delays
    opt = FunctionalRMSprop(_params(), momentum=0.5, centered=True, foreach=foreach)
    twin = FunctionalRMSprop(_params(), momentum=0.5, centered=True, foreach=foreach)
    warm = _grads(rng)
    timings = []
    for _ in range(3):  # the median: one slow step on a loaded machine does not set the delays
        started = time.perf_counter()
        opt.step(warm)
        jax.block_until_ready(opt.param_group["params"])
        timings.append(time.perf_counter() - started)
        twin.step(warm)
    duration = float(np.median(timings))
    previous = signal.signal(signal.SIGALRM, time_limit)
    raised = applied = 0
    try:
        for _ in range(300):  # bounded by its count, not by a clock: a loaded machine is slower
            grads = _grads(rng)
            before = _steps(opt)
            try:
                try:
                    armed[0] = True
                    signal.setitimer(signal.ITIMER_REAL, float(rng.uniform(0.05, 1.2)) * duration)
                    opt.step(grads)
                    signal.setitimer(signal.ITIMER_REAL, 0)
                finally:
                    armed[0] = False
            except TimeoutError:
                raised += 1
            signal.setitimer(signal.ITIMER_REAL, 0)
            params = opt.param_group["params"]
            assert not any(p.is_deleted() for p in params)
            after = _steps(opt)
            assert len(after) == 1, after  # every parameter took the step, or none did
            if after != before:
                applied += 1
                twin.step(grads)
        _same(opt, twin)  # the applied steps are whole: the twin's numbers, bit for bit
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert raised > 0  # the TimeoutError reached the caller
    assert applied > 0
    opt.step(warm)  # and the optimizer goes on


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_a_sigusr1_handler_that_saves_state_dict_mid_step_sees_a_whole_optimizer(foreach):
    opt = FunctionalRMSprop(_params(), momentum=0.5, foreach=foreach)
    saved = []

    def checkpoint(signum, frame):
        saved.append(opt.state_dict())

    rng = np.random.default_rng(18)
    grads = _grads(rng)
    opt.step(grads)
    started = time.perf_counter()
    opt.step(grads)
    jax.block_until_ready(opt.param_group["params"])
    duration = time.perf_counter() - started
    previous = signal.signal(signal.SIGUSR1, checkpoint)
    main = threading.main_thread().ident
    try:
        for delay in rng.uniform(0.0, 1.2, size=40) * duration:
            timer = threading.Timer(float(delay), signal.pthread_kill, (main, signal.SIGUSR1))
            timer.start()
            opt.step(grads)
            timer.join()
            time.sleep(0.002)  # a signal sent after the step is handled here
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert len(saved) == 40
    for state_dict in saved:
        steps = {int(e["step"]) for e in state_dict["state"].values()}
        assert len(steps) == 1  # a whole optimizer: one count for all
    # The last checkpoint loads and continues like the optimizer it was taken from.
    assert not any(p.is_deleted() for p in opt.param_group["params"])


def test_held_back_signals_are_delivered_in_order_and_handlers_put_back():
    seen = []

    def usr1(signum, frame):
        seen.append("usr1")

    def usr2(signum, frame):
        seen.append("usr2")

    old1 = signal.signal(signal.SIGUSR1, usr1)
    old2 = signal.signal(signal.SIGUSR2, usr2)
    try:
        from jrmsprop import transaction

        with transaction.signals_deferred():
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.01)
            assert seen == []  # held back
        assert seen == ["usr2", "usr1"]
        assert signal.getsignal(signal.SIGUSR1) is usr1
        assert signal.getsignal(signal.SIGUSR2) is usr2
    finally:
        signal.signal(signal.SIGUSR1, old1)
        signal.signal(signal.SIGUSR2, old2)


def test_load_state_dict_interrupted_at_random_loads_one_whole_dict():
    armed = [False]

    def time_limit(signum, frame):
        if armed[0]:
            armed[0] = False
            raise TimeoutError

    rng = np.random.default_rng(19)
    a = FunctionalRMSprop(_params(), lr=0.1, momentum=0.5)
    b = FunctionalRMSprop(_params(), lr=0.2, momentum=0.5)
    grads = _grads(rng)
    a.step(grads)
    for _ in range(3):
        b.step(grads)
    dicts = [a.state_dict(), b.state_dict()]
    opt = FunctionalRMSprop(_params(), momentum=0.5)
    started = time.perf_counter()
    opt.load_state_dict(dicts[0])
    duration = time.perf_counter() - started
    previous = signal.signal(signal.SIGALRM, time_limit)
    try:
        for k in range(100):
            target = dicts[k % 2]
            try:
                try:
                    armed[0] = True
                    signal.setitimer(signal.ITIMER_REAL, float(rng.uniform(0.0, 1.2)) * duration)
                    opt.load_state_dict(target)
                    signal.setitimer(signal.ITIMER_REAL, 0)
                finally:
                    armed[0] = False
            except TimeoutError:
                pass
            signal.setitimer(signal.ITIMER_REAL, 0)
            lr, steps = opt.defaults["lr"], _steps(opt)
            assert (lr, steps) in ((0.1, {1}), (0.2, {3})), (lr, steps)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("flag", ["jax_debug_nans", "jax_debug_infs"])
@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_debug_flags_give_jaxs_floating_point_error_and_lose_nothing(flag, foreach):
    rng = np.random.default_rng(20)
    opt = FunctionalRMSprop(_params(), momentum=0.5, foreach=foreach)
    twin = FunctionalRMSprop(_params(), momentum=0.5, foreach=foreach)
    grads = _grads(rng)
    opt.step(grads)
    twin.step(grads)
    bad = list(grads)
    bad[N - 1] = jnp.full((4,), np.nan if flag == "jax_debug_nans" else np.inf, jnp.float32)
    with _flag(flag):
        with pytest.raises(FloatingPointError):
            opt.step(bad)
        params = opt.param_group["params"]
        assert not any(p.is_deleted() for p in params)
        _same(opt, twin)  # nothing applied, nothing lost
        opt.step(grads)  # and the flagged optimizer still steps
    twin.step(grads)
    _same(opt, twin)


class _flag:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.old = getattr(jax.config, self.name)
        jax.config.update(self.name, True)

    def __exit__(self, *exc):
        jax.config.update(self.name, self.old)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_deepcopy_and_pickle_give_an_independent_optimizer_continuing_bit_for_bit(how, foreach):
    rng = np.random.default_rng(21)
    opt = FunctionalRMSprop(_params(), momentum=0.5, centered=True, foreach=foreach)
    first = [_grads(rng) for _ in range(2)]
    opt.step(first[0])
    opt.foreach = not foreach  # a layout switch, then back
    opt.foreach = foreach
    opt.step(first[1])
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert twin._lock is not opt._lock
    _same(opt, twin)
    later = [_grads(rng) for _ in range(3)]
    for g in later:
        twin.step(g)  # the copy steps; the original is untouched (nothing shared, nothing deleted)
    assert not any(p.is_deleted() for p in opt.param_group["params"])
    assert _steps(opt) == {2}
    for g in later:
        opt.step(g)
    _same(opt, twin)


def test_copy_copy_is_a_clear_error():
    opt = FunctionalRMSprop(_params())
    with pytest.raises(TypeError, match="copy.deepcopy"):
        copy.copy(opt)


def test_a_gradient_on_another_device_in_the_last_unit_is_refused_before_anything_runs():
    # Two forced host devices need a fresh process; the program asserts, for
    # both foreach settings: refused with the position and the remedy, nothing
    # changed or deleted; another sharding on the same devices is accepted.
    cmd = [sys.executable, os.path.join(PROGS, "adapter_devices_prog.py")]
    results = run_processes([(cmd, device_env(2))])
    check_ran(results, "adapter_devices_prog.py")
    assert results[0][1].strip().endswith("ok")
