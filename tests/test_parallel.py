"""Data-parallel and multi-process training with jrmsprop equals the single-device run.

Every multi-device run happens in a subprocess (tests/parallel_progs/): the
device count must be forced before JAX starts, and this pytest process keeps
its one device, which computes the reference here. Each subprocess runs under
tests/parallel_progs/runner.py's bound (own process group, deadline, SIGTERM,
SIGKILL), and no process outlives the test, also when it fails. A stall fails
the test with the program's output: nothing is retried.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

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
from runner import check_ran, device_env, run_processes

DEVICES = 4
RTOL, ATOL = 1e-10, 1e-12  # float64; a parallel run differs only in the batch reduction order


_RUNS: dict = {}


def program(mode: str) -> dict:
    """Output of ``dp_prog.py MODE`` on DEVICES forced host devices (run once per session)."""
    if mode not in _RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.npz")
            cmd = [sys.executable, os.path.join(PROGS, "dp_prog.py"), mode, path]
            check_ran(run_processes([(cmd, device_env(DEVICES))]), f"dp_prog.py {mode}")
            with np.load(path) as data:
                _RUNS[mode] = {k: data[k] for k in data.files}
    return _RUNS[mode]


@pytest.fixture(scope="module")
def reference() -> dict:
    """Params and state after STEPS single-device steps on the full batch (float64)."""
    with jax.enable_x64(True):
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


def test_shard_map_replicated_param_cotangent_is_already_summed(x64):
    """Pins down the pitfall the docs document, in the installed JAX.

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
    """A leaf is split when any dimension divides by DEVICES, but never count and step."""
    whole = (
        {id(leaf) for leaf in jax.tree.leaves((tree.count, tree.step))}
        if hasattr(tree, "count")
        else set()
    )
    return [
        id(leaf) not in whole and any(n % DEVICES == 0 for n in leaf.shape)
        for leaf in jax.tree.leaves(tree)
    ]


def _state_bytes_after_split(state) -> int:
    return sum(
        leaf.nbytes // DEVICES if split else leaf.nbytes
        for leaf, split in zip(jax.tree.leaves(state), _expected_split(state))
    )


@pytest.mark.parametrize("mode", ["zero1", "fsdp"])
def test_sharded_state_saves_memory_and_equals_unsharded(reference, mode, x64):
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
    assert (replicated, int(out["bytes/state_sharded"][0])) == (5184, 1368)  # the docs'
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


def test_vocabulary_embedding_splits_along_its_width_and_keeps_the_numbers():
    """Issue 13: GPT-2's 50257-word embedding (50257 x 64) on 4 devices, float64.

    The docs' table quotes these bytes; the first-dimension rule (before
    issue 13) is measured beside them for comparison.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.npz")
        cmd = [sys.executable, os.path.join(PROGS, "vocab_prog.py"), path]
        check_ran(run_processes([(cmd, device_env(DEVICES))]), "vocab_prog.py")
        with np.load(path) as data:
            out = {k: data[k] for k in data.files}
    assert int(out["devices"]) == DEVICES
    replicated = int(out["bytes/replicated/state"][0])
    params = int(out["bytes/replicated/params"][0])
    assert (replicated, params) == (78_412_852, 26_137_600)
    for mode in ("zero1", "fsdp"):
        state = out[f"bytes/{mode}/state"]
        # Only count and the per-parameter steps (52 bytes) stay whole; the rest falls by 4.
        assert int(out[f"whole/{mode}/state"]) == 52
        assert state.tolist() == [(replicated - 52) // DEVICES + 52] * DEVICES
        assert state[0] <= 1.1 / DEVICES * replicated
        assert out[f"maxrel/{mode}"] < 1e-10, mode  # largest relative difference, any leaf
    assert out["bytes/zero1/params"].tolist() == [params] * DEVICES
    assert out["bytes/fsdp/params"].tolist() == [params // DEVICES] * DEVICES
    # The old rule: the embedding's buffers stayed whole, 0.99 of the state on every device.
    assert out["bytes/first_dimension/state"].tolist() == [77_499_316] * DEVICES
    assert out["bytes/first_dimension/params"].tolist() == [25_833_088] * DEVICES


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
            device_env(1),
        )
        for rank in range(2)
    ]


def test_two_processes_over_gloo_equal_single_process(reference, tmp_path):
    cmds = two_process_commands(str(tmp_path))
    check_ran(run_processes(cmds), "multihost_prog.py (2 processes)")
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
    with pytest.raises(TypeError, match=r"cannot shard \[.lr.\], a float; expected an array leaf"):
        jrmsprop.shard_state({"lr": 0.1}, mesh, "data")


EXAMPLES = os.path.join(os.path.dirname(PROGS), os.pardir, "examples")


def test_data_parallel_example_checks_params_and_state_against_one_device():
    """float64 (--x64): every path within the example's stated tolerance after the first
    and the last step, and the example exits 0 only then."""
    script = os.path.join(EXAMPLES, "data_parallel.py")
    cmd = [sys.executable, script, "--steps", "3", "--batch", "64", "--width", "16", "--x64"]
    [(rc, output)] = run_processes([(cmd, device_env(DEVICES))])
    check_ran([(rc, output)], "examples/data_parallel.py")
    assert "largest relative difference from one device, params and optimizer state" in output
    assert "tolerance (float64): first step 1e-12; last step 1e-10" in output
    paths = ["pmap", "shard_map", "jit + NamedSharding", "ZeRO-1 (shard_state)", "FSDP"]
    for name in paths:
        [line] = [line for line in output.splitlines() if line.startswith(name)]
        first, last = (float(v) for v in line[len(name) :].split()[-3:-1])
        assert first <= 1e-12 and last <= 1e-10, line
    # Split buffers fall by 4; count, the steps and the (1,) bias stay whole.
    ratio = float(re.search(r"\(([0-9.]+)x less", output).group(1))
    assert 3.5 < ratio <= DEVICES, output
    assert re.search(r"kept whole: \d+ bytes in \.count, \.step", output), output


def test_multihost_example_compares_two_processes_with_one():
    script = os.path.join(EXAMPLES, "multihost.py")
    cmd = [sys.executable, script, "--spawn", "2", "--steps", "3", "--zero", "--x64"]
    [(rc, output)] = run_processes([(cmd, device_env(1))])
    check_ran([(rc, output)], "examples/multihost.py --spawn 2")
    assert "2 processes, 2 devices: params agree" in output, output
    pattern = r"2 processes vs 1 process, float64, params and optimizer state, (\w+) step: "
    pattern += r"largest relative difference (\S+) \(tolerance (\S+)\)"
    found = {when: (float(diff), float(bound)) for when, diff, bound in re.findall(pattern, output)}
    assert found.keys() == {"first", "last"}, output
    assert found["first"][0] <= 1e-12 and found["last"][0] <= 1e-10, output
    assert "2 processes match the single-process run" in output


def _one_device_mesh():
    return jax.make_mesh((1,), ("data",))


# Layouts need no devices: an abstract mesh of DEVICES checks them in this process.
MESH4 = AbstractMesh((DEVICES,), ("data",))


def _specs(tree, rule=jrmsprop.parallel.largest_divisible):
    shardings = jrmsprop.split_shardings(tree, MESH4, "data", rule=rule)
    return [s.spec for s in jax.tree.leaves(shardings)]


@pytest.mark.parametrize(
    ("shape", "size", "spec"),
    [
        ((50257, 64), 4, P(None, "data")),  # odd height: split the width
        ((64, 50257), 4, P("data")),
        ((8, 16), 4, P(None, "data")),  # both divide: the larger one
        ((12, 12), 4, P("data")),  # a tie: the first
        ((3,), 4, P()),  # nothing divides: whole
        ((), 4, P()),
        ((6, 5), 2, P("data")),
    ],
)
def test_default_rule_splits_the_largest_dimension_the_axis_size_divides(shape, size, spec):
    assert jrmsprop.parallel.largest_divisible("x", shape, "data", size) == spec


@pytest.mark.parametrize("step", ["per_leaf", "vector"])
def test_count_and_step_stay_whole_whatever_the_rule_says(step):
    """count and step stay whole, both as one 0-d int32 per leaf and as the coming int32
    vector of shape (num_leaves,), which the default rule alone would split here."""
    params = {"a": jnp.ones((4, 2)), "b": jnp.ones(4), "c": jnp.ones(8), "d": jnp.ones(4)}
    state = jrmsprop.rmsprop(momentum=0.9).init(params)
    if step == "vector":
        state = state._replace(step=jnp.zeros(4, jnp.int32))
    else:
        state = state._replace(step={k: jnp.zeros((), jnp.int32) for k in params})
    shardings = jrmsprop.split_shardings(state, MESH4, "data")
    for leaf in jax.tree.leaves((shardings.count, shardings.step)):
        assert leaf.spec == P()
    for leaf in jax.tree.leaves((shardings.square_avg, shardings.momentum_buffer)):
        assert leaf.spec == P("data")
    # Also inside an optax.chain, and with a custom rule that would split everything.
    everything = lambda path, shape, axis, size: P(axis) if shape else P()
    chained = (optax.EmptyState(), state)
    whole = jrmsprop.parallel.replicated_leaves(chained, MESH4, "data", everything)
    keys = ["a", "b", "c", "d"]
    expected_step = [".step"] if step == "vector" else [f".step['{k}']" for k in keys]
    assert list(whole) == ["[1].count"] + [f"[1]{k}" for k in expected_step]


def test_replicated_leaves_lists_what_stays_whole_with_its_bytes(x64):
    mesh = MESH4
    params = {"embed": jnp.ones((5, 3), jnp.float32), "scale": jnp.ones((), jnp.float64)}
    state = jrmsprop.rmsprop(centered=True).init(params)
    state = state._replace(step=jnp.zeros(2, jnp.int32))  # one int32 per leaf
    assert jrmsprop.parallel.replicated_leaves(state, mesh, "data") == {
        ".count": 4,
        ".step": 8,
        ".square_avg['embed']": 60,  # 5 x 3: nothing divides 4
        ".square_avg['scale']": 8,
        ".grad_avg['embed']": 60,
        ".grad_avg['scale']": 8,
    }
    assert jrmsprop.parallel.replicated_leaves(jax.eval_shape(lambda: params), mesh, "data") == {
        "['embed']": 60,
        "['scale']": 8,
    }


def test_shard_state_warns_when_more_than_warn_bytes_stay_whole():
    mesh = _one_device_mesh()
    state = optimizer().init({"w": jnp.ones((4, 4)), "odd": jnp.ones(())})
    keep_whole = lambda path, shape, axis, size: P()
    with pytest.warns(UserWarning, match=r"stay whole on each device of axis 'data' \(largest: "):
        jrmsprop.shard_state(state, mesh, "data", rule=keep_whole, warn_bytes=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jrmsprop.shard_state(state, mesh, "data", rule=keep_whole, warn_bytes=10_000)
        jrmsprop.shard_params(
            {"w": jnp.ones((4, 4))}, mesh, "data", rule=keep_whole, warn_bytes=None
        )


def test_a_custom_rule_chooses_the_layout_and_is_checked():
    params = {"embed": jnp.ones((6, 4)), "bias": jnp.ones(4)}
    width = lambda path, shape, axis, size: P(None, axis) if "embed" in path else P()
    assert _specs(params, width) == [P(), P(None, "data")]
    with pytest.raises(TypeError, match=r"the rule returned a tuple for \['bias'\]"):
        _specs(params, lambda path, shape, axis, size: (axis,))
    with pytest.raises(ValueError, match="mesh has no axis 'model'"):
        _specs(params, lambda path, shape, axis, size: P("model"))
    with pytest.raises(ValueError, match=r"has more entries than \['bias'\] of shape \(4,\)"):
        _specs(params, lambda path, shape, axis, size: P(None, axis))


def test_placing_on_an_abstract_mesh_says_it_needs_devices():
    abstract = AbstractMesh((1,), ("data",))
    state = optimizer().init({"w": jnp.ones((4, 4))})
    for place in (jrmsprop.shard_state, jrmsprop.shard_params):
        with pytest.raises(
            TypeError,
            match=rf"{place.__name__} places arrays on devices.*"
            r"AbstractMesh.*split_shardings",
        ):
            place(state, abstract, "data")
    with pytest.raises(TypeError, match=r"replicate places arrays on devices"):
        jrmsprop.replicate(state, abstract)
    layout = jrmsprop.split_shardings(state, abstract, "data")  # a layout needs no devices
    assert tuple(layout.square_avg["w"].spec) == ("data",)


def test_a_rule_naming_one_mesh_axis_twice_names_the_leaf():
    mesh = jax.make_mesh((1,), ("data",))
    state = optimizer().init({"w": jnp.ones((4, 4))})
    with pytest.raises(
        ValueError,
        match=r"P\('data', 'data'\) for \.square_avg\['w'\] splits "
        r"dimensions 0 and 1 over the same mesh axis 'data'",
    ):
        jrmsprop.shard_state(state, mesh, "data", rule=lambda *_: P("data", "data"))
    with pytest.raises(ValueError, match=r"over the same mesh axis 'data'"):
        jrmsprop.split_shardings(state, mesh, "data", rule=lambda *_: P(("data",), "data"))


def test_a_rule_leaving_a_dimension_unconstrained_names_the_leaf():
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    state = optimizer().init({"w": jnp.ones((4, 4))})
    with pytest.raises(
        ValueError,
        match=r"for \.square_avg\['w'\] leaves dimension 0 "
        r"unconstrained.*with_sharding_constraint",
    ):
        jrmsprop.shard_state(state, mesh, "data", rule=lambda *_: P(P.UNCONSTRAINED))
