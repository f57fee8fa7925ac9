"""Data-parallel and multi-process training with jrmsprop equals the single-device run.

Every multi-device run happens in a subprocess (tests/parallel_progs/): the
device count must be forced before JAX starts, and this pytest process keeps
its one device, which computes the reference here. Each subprocess runs in its
own process group under a hard deadline; past it the group gets SIGTERM, then
SIGKILL after a grace period (a process inside jax.distributed catches SIGTERM),
and no process outlives the test, also when it fails. A stall fails the test
with the program's output: nothing is retried.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrmsprop

PROGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parallel_progs")
sys.path.insert(0, PROGS)

from common import (
    flat,
    free_port,
    loss_fn,
    make_problem,
    optimizer,
    reference_run,
)

DEVICES = 4
DEADLINE_S = 120
GRACE_S = 5
RTOL, ATOL = 1e-10, 1e-12  # float64; a parallel run differs only in the batch reduction order


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


def _env(devices: int) -> dict:
    env = dict(os.environ)
    # Must be set before JAX starts: that is why these runs are subprocesses.
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _check_ran(results: list, what: str) -> None:
    for i, (rc, output) in enumerate(results):
        if rc != 0:
            stalled = "Termination timeout" in output or rc in (-signal.SIGKILL, -signal.SIGTERM)
            hint = " (an XLA CPU collective stall or hang; not retried)" if stalled else ""
            pytest.fail(f"{what}: process {i} exited with {rc}{hint}:\n{output[-4000:]}")


_RUNS: dict = {}


def program(mode: str) -> dict:
    """Output of ``dp_prog.py MODE`` on DEVICES forced host devices (run once per session)."""
    if mode not in _RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.npz")
            cmd = [sys.executable, os.path.join(PROGS, "dp_prog.py"), mode, path]
            _check_ran(run_processes([(cmd, _env(DEVICES))]), f"dp_prog.py {mode}")
            with np.load(path) as data:
                _RUNS[mode] = {k: data[k] for k in data.files}
    return _RUNS[mode]


@pytest.fixture(scope="module")
def reference() -> dict:
    """Params and state after STEPS single-device steps on the full batch."""
    params, state = reference_run()
    return {
        **{f"params{k}": v for k, v in flat(params).items()},
        **{f"state{k}": v for k, v in flat(state).items()},
    }


def assert_matches(out: dict, reference: dict, prefix: str = "") -> None:
    for key, expected in reference.items():
        np.testing.assert_allclose(out[prefix + key], expected, rtol=RTOL, atol=ATOL, err_msg=key)


def test_pmap_replicas_bitwise_identical_and_equal_single_device(reference):
    out = program("pmap")
    assert int(out["devices"]) == DEVICES
    for r in range(1, DEVICES):
        for key in reference:
            np.testing.assert_array_equal(out[f"replica{r}/{key}"], out[f"replica0/{key}"], key)
    assert_matches(out, reference, "replica0/")


def test_shard_map_equals_single_device(reference):
    out = program("shard_map")
    assert int(out["devices"]) == DEVICES
    assert_matches(out, reference)


def test_shard_map_replicated_param_cotangent_is_already_summed():
    """Pins down the pitfall the README documents, in the installed JAX.

    Under shard_map (check_vma=True) the cotangent of a replicated param is
    psum'ed over the axis, so pmean(jax.grad(local loss)) is the SUM of the
    local gradients, DEVICES times the full-batch gradient, as is jax.grad of
    the local loss alone. The three right patterns give the full-batch gradient;
    with check_vma=False and no pmean, out_specs=P() silently returns device 0's.
    """
    out = program("shard_map")
    params, x, y = make_problem()
    full = flat(jax.grad(loss_fn)(jax.tree.map(jnp.asarray, params), x, y))
    rows = slice(0, x.shape[0] // DEVICES)
    first = flat(jax.grad(loss_fn)(jax.tree.map(jnp.asarray, params), x[rows], y[rows]))
    for key, g in full.items():
        np.testing.assert_allclose(out[f"pitfall/grad_of_local{key}"], DEVICES * g, rtol=1e-12)
        np.testing.assert_allclose(out[f"pitfall/pmean_of_grad{key}"], DEVICES * g, rtol=1e-12)
        # check_vma=False and no pmean: out_specs=P() returns device 0's local gradient.
        np.testing.assert_allclose(out[f"pitfall/novma_grad_of_local{key}"], first[key], rtol=1e-12)
        for right in ("grad_of_pmean", "grad_over_n", "novma_pmean_of_grad"):
            np.testing.assert_allclose(out[f"pitfall/{right}{key}"], g, rtol=1e-12, atol=1e-15)


def test_sharded_jit_equals_single_device(reference):
    out = program("jit")
    assert bool(out["sharding/batch_is_split"]) and bool(out["sharding/params_replicated"])
    assert_matches(out, reference)


def _expected_split(tree) -> list[bool]:
    return [leaf.ndim >= 1 and leaf.shape[0] % DEVICES == 0 for leaf in jax.tree.leaves(tree)]


def _state_bytes_after_split(state) -> int:
    return sum(
        leaf.nbytes // DEVICES if split else leaf.nbytes
        for leaf, split in zip(jax.tree.leaves(state), _expected_split(state))
    )


@pytest.mark.parametrize("mode", ["zero1", "fsdp"])
def test_sharded_state_saves_memory_and_equals_unsharded(reference, mode):
    out = program(mode)
    params, _, _ = make_problem()
    state = optimizer().init(jax.tree.map(jnp.asarray, params))
    # Split exactly where the first dimension divides the axis size, replicated elsewhere.
    assert out["layout/state_split"].tolist() == _expected_split(state)
    replicated = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    assert out["bytes/state_replicated"].tolist() == [replicated] * DEVICES
    assert out["bytes/state_sharded"].tolist() == [_state_bytes_after_split(state)] * DEVICES
    # The split buffers are nearly all of the state: per device it falls by ~DEVICES.
    assert out["bytes/state_sharded"][0] * DEVICES < 1.1 * replicated
    param_bytes = sum(a.nbytes for a in jax.tree.leaves(params))
    if mode == "fsdp":
        assert out["layout/params_split"].tolist() == _expected_split(params)
        assert out["bytes/params"][0] < param_bytes / 2
    else:
        assert not out["layout/params_split"].any()
        assert out["bytes/params"].tolist() == [param_bytes] * DEVICES
    assert_matches(out, reference)


def test_zero1_on_explicit_mesh_axes_with_params_resharded(reference):
    out = program("zero1_explicit")
    params, _, _ = make_problem()
    state = optimizer().init(jax.tree.map(jnp.asarray, params))
    assert bool(out["layout/explicit"])
    assert out["layout/state_split"].tolist() == _expected_split(state)
    assert not out["layout/params_split"].any()
    assert_matches(out, reference)


def two_process_commands(out_dir: str) -> list:
    """multihost_prog.py as ranks 0 and 1 on a free loopback port, one device each."""
    port = free_port()
    return [
        (
            [
                sys.executable,
                os.path.join(PROGS, "multihost_prog.py"),
                f"127.0.0.1:{port}",
                "2",
                str(rank),
                os.path.join(out_dir, f"rank{rank}.npz"),
            ],
            _env(1),
        )
        for rank in range(2)
    ]


def test_two_processes_over_gloo_equal_single_process(reference, tmp_path):
    cmds = two_process_commands(str(tmp_path))
    _check_ran(run_processes(cmds), "multihost_prog.py (2 processes)")
    outs = []
    for rank in range(2):
        with np.load(tmp_path / f"rank{rank}.npz") as data:
            outs.append({k: data[k] for k in data.files})
        assert int(outs[-1]["process_index"]) == rank and int(outs[-1]["process_count"]) == 2
    for key in reference:
        np.testing.assert_array_equal(outs[0][key], outs[1][key], key)
    assert_matches(outs[0], reference)


def test_run_processes_kills_a_process_that_ignores_sigterm():
    """The runner's bound holds against a process that, like jax.distributed, ignores SIGTERM."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    start = time.monotonic()
    cmd = [sys.executable, "-c", code]
    [(rc, _)] = run_processes([(cmd, dict(os.environ))], deadline_s=1, grace_s=1)
    assert rc == -signal.SIGKILL
    assert time.monotonic() - start < 10


def test_shard_state_on_one_device_keeps_values():
    mesh = jax.make_mesh((1,), ("data",))
    params, _, _ = make_problem()
    state = optimizer().init(jax.tree.map(jnp.asarray, params))
    sharded = jrmsprop.shard_state(state, mesh, "data")
    assert jax.tree.structure(sharded) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)


def test_shard_state_rejects_an_unknown_axis():
    mesh = jax.make_mesh((1,), ("data",))
    state = optimizer().init({"w": jnp.ones(4)})
    with pytest.raises(ValueError, match=r"mesh has no axis 'batch'; its axes are \('data',\)"):
        jrmsprop.shard_state(state, mesh, "batch")


def test_shard_state_rejects_a_leaf_that_is_not_an_array():
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(TypeError, match="cannot shard a float; expected an array leaf"):
        jrmsprop.shard_state({"lr": 0.1}, mesh, "data")


EXAMPLES = os.path.join(os.path.dirname(PROGS), os.pardir, "examples")


def test_data_parallel_example_runs_and_every_path_matches_one_device():
    script = os.path.join(EXAMPLES, "data_parallel.py")
    cmd = [sys.executable, script, "--steps", "3", "--batch", "64", "--width", "16"]
    [(rc, output)] = run_processes([(cmd, _env(DEVICES))])
    _check_ran([(rc, output)], "examples/data_parallel.py")
    paths = ["pmap", "shard_map", "jit + NamedSharding", "ZeRO-1 (shard_state)", "FSDP"]
    for name in paths:
        [line] = [line for line in output.splitlines() if line.startswith(name)]
        assert float(line[len(name) :].split()[-2]) < 1e-5, line  # float32, 3 steps
    # Split buffers fall by 4; the scalars and the (1,) bias stay whole.
    ratio = float(re.search(r"\(([0-9.]+)x less\)", output).group(1))
    assert 3.5 < ratio <= DEVICES, output


def test_multihost_example_spawns_two_processes_that_agree():
    script = os.path.join(EXAMPLES, "multihost.py")
    cmd = [sys.executable, script, "--spawn", "2", "--steps", "3", "--zero"]
    [(rc, output)] = run_processes([(cmd, _env(1))])
    _check_ran([(rc, output)], "examples/multihost.py --spawn 2")
    assert "2 processes, 2 devices: params agree" in output, output
