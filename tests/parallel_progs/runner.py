"""Bounded subprocess runs for the multi-device and multi-process tests.

Used by tests/test_parallel.py, tests/test_checkpoint.py and stall_loop.py.
Each command runs in its own process group under a hard deadline; past it the
group gets SIGTERM, then SIGKILL after a grace period (a process inside
jax.distributed catches SIGTERM), and no process outlives the call. A stall
fails the test with the program's output: nothing is retried.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time

import pytest

PROGS = os.path.dirname(os.path.abspath(__file__))
DEADLINE_S = 120
GRACE_S = 5


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def run_processes(
    cmds: list[tuple[list[str], dict]], deadline_s: float = DEADLINE_S, grace_s: float = GRACE_S
) -> list:
    """Runs commands side by side, each in its own session; returns ``[(rc, output)]``.

    Bounded: past ``deadline_s``, or ``grace_s`` after the first process fails
    (its peers may wait for it forever), every group gets SIGTERM and, after
    ``grace_s``, SIGKILL. The ``finally`` SIGKILLs whatever is left, so no
    process outlives the call.
    """
    with contextlib.ExitStack() as stack:
        # Output goes to files: a pipe could fill up and block the program.
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in cmds]
        procs: list[subprocess.Popen] = []
        try:
            for (cmd, env), log in zip(cmds, logs):
                procs.append(
                    subprocess.Popen(
                        cmd,
                        env=env,
                        cwd=PROGS,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            end = time.monotonic() + deadline_s
            while time.monotonic() < end and any(p.poll() is None for p in procs):
                if any(p.poll() not in (None, 0) for p in procs):
                    end = min(end, time.monotonic() + grace_s)
                time.sleep(0.05)
            if any(p.poll() is None for p in procs):
                for p in procs:
                    _kill_group(p, signal.SIGTERM)
                grace_end = time.monotonic() + grace_s
                while time.monotonic() < grace_end and any(p.poll() is None for p in procs):
                    time.sleep(0.05)
        finally:
            for p in procs:
                _kill_group(p, signal.SIGKILL)  # also ends any child the program started
                p.wait()
        results = []
        for p, log in zip(procs, logs):
            log.seek(0)
            results.append((p.returncode, log.read().decode(errors="replace")))
    return results


def device_env(devices: int) -> dict:
    """The environment for a program on ``devices`` forced host (CPU) devices."""
    env = dict(os.environ)
    # Must be set before JAX starts: that is why these runs are subprocesses.
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def check_ran(results: list, what: str) -> None:
    """Fails the test with the output of every process that did not exit 0."""
    for i, (rc, output) in enumerate(results):
        if rc != 0:
            stalled = "Termination timeout" in output or rc in (-signal.SIGKILL, -signal.SIGTERM)
            hint = " (an XLA CPU collective stall or hang; not retried)" if stalled else ""
            pytest.fail(f"{what}: process {i} exited with {rc}{hint}:\n{output[-4000:]}")
