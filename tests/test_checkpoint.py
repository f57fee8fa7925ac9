"""Checkpoints with orbax: a run resumed from a checkpoint is bit for bit the
run that never stopped, for the optax state and for the adapter's state_dict();
a sharded checkpoint resumes on another number of devices."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from torch_reference import jitted_step

import jrmsprop

PROGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parallel_progs")
sys.path.insert(0, PROGS)

from runner import check_ran, device_env, run_processes

# One pytree with every kind of leaf a checkpoint must carry bit for bit.
LEAVES = [((4, 3), jnp.float32), ((3,), jnp.complex64), ((2, 2), jnp.bfloat16), ((5,), jnp.float64)]
BEFORE, AFTER = 20, 20  # steps before the checkpoint, steps after it


def _data(leaves=LEAVES, seed=0):
    """Params and a gradient stream; parameter 1 misses every third gradient,
    so per-parameter steps differ from the global count."""
    rng = np.random.default_rng(seed)

    def draw(shape, dtype):
        x = rng.standard_normal(shape)
        if np.dtype(dtype).kind == "c":
            x = x + 1j * rng.standard_normal(shape)
        return jnp.asarray(x, dtype)

    params = [draw(*leaf) for leaf in leaves]
    grads = [[draw(*leaf) for leaf in leaves] for _ in range(BEFORE + AFTER)]
    for t in range(0, BEFORE + AFTER, 3):
        grads[t][1] = None
    return params, grads


def _assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        # Compare the bits: NaN-safe, and -0.0 != 0.0.
        assert x.tobytes() == y.tobytes()


def _make_opt(momentum=0.9):
    # A schedule makes `count` matter: a resumed run with a wrong count diverges.
    schedule = optax.exponential_decay(1e-2, transition_steps=5, decay_rate=0.7)
    return optax.chain(
        optax.clip_by_global_norm(5.0),
        jrmsprop.rmsprop(lr=schedule, momentum=momentum, centered=True, weight_decay=0.01),
    )


def _run(step, params, state, grads):
    for g in grads:
        params, state = step(params, state, g)
    return params, state


# momentum 0: no momentum buffer, in the eager state and in eval_shape's alike.
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_resumed_optax_run_is_bitwise_identical(tmp_path, momentum, x64):
    params0, grads = _data()
    opt = _make_opt(momentum)
    step = jitted_step(opt)  # one compiled step (per None pattern) for all three runs
    straight = _run(step, params0, opt.init(params0), grads)

    params, state = _run(step, params0, opt.init(params0), grads[:BEFORE])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    del params, state

    # A new process knows the shapes, not the values: restore into abstract trees.
    target = {"params": params0, "opt_state": jax.eval_shape(opt.init, params0)}
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = ocp.StandardCheckpointer().restore(tmp_path / "ckpt", target)
    assert isinstance(restored["opt_state"][1], jrmsprop.RMSpropState)
    resumed = _run(step, restored["params"], restored["opt_state"], grads[BEFORE:])

    _assert_bitwise_equal(resumed, straight)
    assert int(resumed[1][1].count) == BEFORE + AFTER


def _adapter(params):
    # Copies: the adapter donates the arrays it replaces, as torch steps in place.
    params = [jnp.array(p, copy=True) for p in params]
    return jrmsprop.FunctionalRMSprop(params, lr=1e-2, momentum=0.9, centered=True)


def _adapter_run(opt, grads):
    for g in grads:
        opt.step(g)


def test_resumed_adapter_run_is_bitwise_identical(tmp_path, x64):
    params0, grads = _data(seed=1)
    straight = _adapter(list(params0))
    _adapter_run(straight, grads)

    first = _adapter(list(params0))
    _adapter_run(first, grads[:BEFORE])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(
        tmp_path / "ckpt",
        {"params": list(first.param_group["params"]), "optimizer": first.state_dict()},
    )
    checkpointer.wait_until_finished()
    del first

    restored = ocp.StandardCheckpointer().restore(tmp_path / "ckpt")
    state_dict = restored["optimizer"]
    # orbax stores dict keys as strings; torch's layout numbers the parameters.
    state_dict["state"] = {int(k): v for k, v in state_dict["state"].items()}
    resumed = _adapter(list(restored["params"]))
    resumed.load_state_dict(state_dict)
    _adapter_run(resumed, grads[BEFORE:])

    _assert_bitwise_equal(resumed.param_group["params"], straight.param_group["params"])
    _assert_bitwise_equal(resumed.state_dict(), straight.state_dict())


def _ckpt_prog(mode: str, devices: int, directory, out) -> dict:
    cmd = [sys.executable, os.path.join(PROGS, "ckpt_prog.py"), mode, str(directory), str(out)]
    check_ran(run_processes([(cmd, device_env(devices))]), f"ckpt_prog.py {mode} ({devices})")
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def test_sharded_checkpoint_saved_on_4_devices_resumes_on_2_and_on_1(tmp_path):
    """The docs' recipe: target shardings from split_shardings on the mesh at hand.

    FSDP params and ZeRO-1 state, saved on 4 devices; resumed on 2 and on 1 the run
    continues equal to the uninterrupted 4-device run (float64; the device count
    changes only the order of the batch reduction). Without target shardings orbax
    reuses the saved ones and refuses the new topology.
    """
    straight = _ckpt_prog("save", 4, tmp_path / "ckpt", tmp_path / "straight.npz")
    values = [k for k in straight if k.startswith(("params", "state"))]
    assert ".count" in "".join(values)
    for devices in (2, 1):
        resumed = _ckpt_prog("resume", devices, tmp_path / "ckpt", tmp_path / f"{devices}.npz")
        assert int(resumed["devices"]) == devices
        assert set(resumed["restored/devices"].tolist()) == {devices}
        assert resumed["restored/same_layout"].all()
        assert "Topology mismatch" in str(resumed["plain_restore_error"])
        for key in values:
            np.testing.assert_allclose(
                resumed[key], straight[key], rtol=1e-12, atol=1e-14, err_msg=key
            )


def test_adapter_state_dict_as_tensors_survives_torch_save_and_loads_into_torch(tmp_path, x64):
    """``state_dict(tensors=True)`` -> torch.save -> torch.load(weights_only=True) ->
    torch.optim.RMSprop, which then continues as the adapter does; and back."""
    import torch

    rng = np.random.default_rng(3)
    dtypes = ["float32", "float64", "complex64", "bfloat16"]
    shapes = [(3, 2), (4,), (2, 2), (5,)]
    config = {"lr": 1e-2, "momentum": 0.9, "centered": True, "weight_decay": 0.1}

    def grads_at(k):
        r = np.random.default_rng(100 + k)
        return [
            r.standard_normal(s).astype(np.float32).astype(d)
            if d != "complex64"
            else (r.standard_normal(s) + 1j * r.standard_normal(s)).astype(d)
            for s, d in zip(shapes, dtypes)
        ]

    start = [rng.standard_normal(s).astype(np.float32).astype(d) for s, d in zip(shapes, dtypes)]
    opt = jrmsprop.FunctionalRMSprop([jnp.asarray(x) for x in start], **config)
    for k in range(3):
        opt.step([jnp.asarray(g) for g in grads_at(k)])

    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(tensors=True), path)
    loaded = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for e in loaded["state"].values() for v in e.values())
    assert loaded["state"][0]["step"].dtype == torch.float32  # torch's layout

    def tensor(x):
        x = np.asarray(x)
        if x.dtype == jnp.bfloat16:
            return torch.tensor(x.astype(np.float32)).to(torch.bfloat16)
        return torch.tensor(x)

    torch_params = [tensor(p).requires_grad_() for p in opt.param_group["params"]]
    torch_opt = torch.optim.RMSprop(torch_params, **config)
    torch_opt.load_state_dict(loaded)
    back = jrmsprop.FunctionalRMSprop([jnp.copy(p) for p in opt.param_group["params"]])
    back.load_state_dict(torch.load(path, weights_only=True))
    _assert_bitwise_equal(back.state_dict(), opt.state_dict())

    for k in range(3, 6):
        grads = grads_at(k)
        opt.step([jnp.asarray(g) for g in grads])
        for p, g in zip(torch_params, grads):
            p.grad = tensor(g)
        torch_opt.step()
    for p, t, d in zip(opt.param_group["params"], torch_params, dtypes):
        tol = {"rtol": 1.6e-2, "atol": 1e-5} if d == "bfloat16" else {}
        torch.testing.assert_close(tensor(p), t.detach(), **tol)


def test_adapter_numpy_state_dict_is_refused_by_torch_load_weights_only(tmp_path):
    """What the README says: the default (numpy) state dict goes to orbax or np.savez;
    torch.load(weights_only=True) refuses numpy arrays, hence tensors=True for torch files."""
    import pickle

    import torch

    opt = jrmsprop.FunctionalRMSprop([jnp.ones(3)], momentum=0.9)
    opt.step([jnp.ones(3)])
    torch.save(opt.state_dict(), tmp_path / "numpy.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(tmp_path / "numpy.pt", weights_only=True)
