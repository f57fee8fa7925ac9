"""Moving a run between torch.optim.RMSprop and jrmsprop: continuing on either
side after the move equals continuing where the run started."""

import copy
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch.testing import assert_close

import jrmsprop

SHAPES = [(3, 4), (4,), (2, 2)]
BEFORE, AFTER = 15, 25  # steps before the move, steps after it

CONFIGS = {
    "default": {},
    "momentum_centered_decay": {"momentum": 0.9, "centered": True, "weight_decay": 0.1},
    "maximize_momentum": {"maximize": True, "momentum": 0.5, "lr": 1e-3, "eps": 1e-2},
}
# Each configuration once, the dtypes spread over them (the full grid is the
# parity tests' job; here the move itself is under test).
CASES = [
    ("default", np.float32),
    ("momentum_centered_decay", np.complex64),
    ("maximize_momentum", np.float64),
]


def _data(dtype, seed=0):
    """Initial params and a gradient stream; a None gradient skips its parameter.

    Parameter 1 misses every third gradient; parameter 2 gets none before the
    move, so torch has no state entry for it when the state is exported.
    """
    rng = np.random.default_rng(seed)

    def draw(shape):
        x = rng.standard_normal(shape)
        if np.dtype(dtype).kind == "c":
            x = x + 1j * rng.standard_normal(shape)
        return x.astype(dtype)

    params = [draw(s) for s in SHAPES]
    grads = []
    for t in range(BEFORE + AFTER):
        step = [draw(s) for s in SHAPES]
        if t % 3 == 0:
            step[1] = None
        if t < BEFORE:
            step[2] = None
        grads.append(step)
    return params, grads


def _torch_steps(params, optimizer, grads):
    for step in grads:
        for p, g in zip(params, step):
            p.grad = None if g is None else torch.from_numpy(g.copy())
        optimizer.step()


def _jax_steps(params, hyperparams, state, grads):
    opt = jrmsprop.rmsprop(**hyperparams)

    @jax.jit  # traced once per None pattern
    def train_step(step, state, params):
        updates, state = opt.update(step, state, params)
        return optax.apply_updates(params, updates), state

    for step in grads:
        step = [None if g is None else jnp.asarray(g) for g in step]
        params, state = train_step(step, state, params)
    return params, state


def _assert_state_matches(torch_params, torch_opt, jax_params, state):
    """Params and every state buffer of torch equal jrmsprop's."""
    for i, (ours, p) in enumerate(zip(jax_params, torch_params)):
        assert_close(np.array(ours), p.detach().numpy(), msg=lambda m, i=i: f"param {i}: {m}")
    for i, p in enumerate(torch_params):
        torch_state = torch_opt.state.get(p, {})
        assert int(state.step[i]) == int(torch_state.get("step", 0)), f"step of parameter {i}"
        names = ["square_avg"]
        names += ["momentum_buffer"] if state.momentum_buffer is not None else []
        names += ["grad_avg"] if state.grad_avg is not None else []
        for name in names:
            ours = np.array(getattr(state, name)[i])
            theirs = torch_state[name].numpy() if torch_state else np.zeros_like(ours)
            assert_close(ours, theirs, msg=lambda m, n=name, i=i: f"{n} of parameter {i}: {m}")


@pytest.mark.parametrize("config, dtype", CASES)
def test_continuing_in_jax_after_import_equals_continuing_in_torch(config, dtype, x64_if_wide):
    params0, grads = _data(dtype)
    torch_params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0]
    torch_opt = torch.optim.RMSprop(torch_params, **CONFIGS[config])
    _torch_steps(torch_params, torch_opt, grads[:BEFORE])
    assert 2 not in torch_opt.state_dict()["state"]  # a never-stepped parameter

    # What a user does: torch.save, then torch.load(weights_only=True), then import.
    buffer = io.BytesIO()
    torch.save(torch_opt.state_dict(), buffer)
    buffer.seek(0)
    state_dict = torch.load(buffer, weights_only=True)
    params = [jnp.asarray(p.detach().numpy().copy()) for p in torch_params]
    hyperparams, state = jrmsprop.from_torch_state_dict(state_dict, params)
    assert hyperparams == {**jrmsprop.interop._DEFAULTS, **CONFIGS[config]}

    params, state = _jax_steps(params, hyperparams, state, grads[BEFORE:])
    _torch_steps(torch_params, torch_opt, grads[BEFORE:])
    _assert_state_matches(torch_params, torch_opt, params, state)


@pytest.mark.parametrize("config, dtype", CASES)
def test_continuing_in_torch_after_export_equals_continuing_in_jax(config, dtype, x64_if_wide):
    params0, grads = _data(dtype, seed=1)
    hyperparams = {**jrmsprop.interop._DEFAULTS, **CONFIGS[config]}
    params = [jnp.asarray(p) for p in params0]
    state = jrmsprop.rmsprop(**hyperparams).init(params)
    params, state = _jax_steps(params, hyperparams, state, grads[:BEFORE])

    state_dict = jrmsprop.to_torch_state_dict(hyperparams, state)
    assert 2 not in state_dict["state"]  # step 0 here: no entry, as in torch
    torch_params = [torch.nn.Parameter(torch.from_numpy(np.array(p))) for p in params]
    torch_opt = torch.optim.RMSprop(torch_params)  # defaults: load_state_dict sets the group
    torch_opt.load_state_dict(state_dict)
    _torch_steps(torch_params, torch_opt, grads[BEFORE:])
    params, state = _jax_steps(params, hyperparams, state, grads[BEFORE:])
    _assert_state_matches(torch_params, torch_opt, params, state)


def test_round_trip_is_bit_exact():
    params0, grads = _data(np.float32, seed=2)
    hyperparams = {**jrmsprop.interop._DEFAULTS, **CONFIGS["momentum_centered_decay"]}
    params = [jnp.asarray(p) for p in params0]
    state = jrmsprop.rmsprop(**hyperparams).init(params)
    params, state = _jax_steps(params, hyperparams, state, grads)
    back_hyperparams, back = jrmsprop.from_torch_state_dict(
        jrmsprop.to_torch_state_dict(hyperparams, state), params
    )
    assert back_hyperparams == hyperparams
    chex_equal = jax.tree.map(lambda a, b: a.dtype == b.dtype and np.array_equal(a, b), state, back)
    assert all(jax.tree.leaves(chex_equal))


def test_inject_hyperparams_state_exports_its_current_values():
    """inject_hyperparams' state.hyperparams (arrays) is what torch's group holds."""
    params0, grads = _data(np.float32, seed=3)
    params = [jnp.asarray(p) for p in params0]
    opt = optax.inject_hyperparams(jrmsprop.rmsprop)(lr=0.1, momentum=0.9)
    state = opt.init(params)
    state.hyperparams["lr"] = jnp.asarray(0.025, state.hyperparams["lr"].dtype)
    step = [None if g is None else jnp.asarray(g) for g in grads[BEFORE]]
    assert step[1] is None
    _, state = opt.update(step, state, params)
    state_dict = jrmsprop.to_torch_state_dict(state.hyperparams, state.inner_state)
    group = state_dict["param_groups"][0]
    assert group["lr"] == pytest.approx(0.025) and group["momentum"] == pytest.approx(0.9)
    assert sorted(state_dict["state"]) == [0, 2]  # parameter 1 has not been stepped yet


def test_bfloat16_moves_bit_exact():
    params = [jnp.asarray(np.linspace(-1, 1, 6), jnp.bfloat16)]
    opt = jrmsprop.rmsprop(momentum=0.5)
    state = opt.init(params)
    _, state = opt.update([jnp.asarray(np.linspace(2, 3, 6), jnp.bfloat16)], state, params)
    state_dict = jrmsprop.to_torch_state_dict({"momentum": 0.5}, state)
    assert state_dict["state"][0]["square_avg"].dtype == torch.bfloat16
    _, back = jrmsprop.from_torch_state_dict(state_dict, params)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
        assert a.dtype == b.dtype and np.array_equal(
            np.asarray(a, np.float32), np.asarray(b, np.float32)
        )


def _stepped_torch_state(n_params=3, momentum=0.0):
    params0, grads = _data(np.float32)
    torch_params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0[:n_params]]
    torch_opt = torch.optim.RMSprop(torch_params, momentum=momentum)
    _torch_steps(torch_params, torch_opt, [g[:n_params] for g in grads[:3]])
    return torch_opt.state_dict(), [jnp.asarray(p) for p in params0[:n_params]]


def test_parameter_count_mismatch_names_both_sides():
    state_dict, params = _stepped_torch_state()
    with pytest.raises(ValueError, match=r"torch state has 3 parameters.*JAX params have 2 leaves"):
        jrmsprop.from_torch_state_dict(state_dict, params[:2])


def test_shape_mismatch_names_both_sides():
    state_dict, params = _stepped_torch_state()
    params[0] = params[0].T  # a torch Linear weight is (out, in): a layout slip
    with pytest.raises(ValueError, match=r"torch parameter 0.*\(3, 4\).*\(4, 3\)"):
        jrmsprop.from_torch_state_dict(state_dict, params)


def test_a_float32_state_into_float64_params_is_upcast_exactly(x64):
    state_dict, params = _stepped_torch_state()
    params[1] = params[1].astype(jnp.float64)
    _, state = jrmsprop.from_torch_state_dict(state_dict, params)
    torch_buffer = state_dict["state"][1]["square_avg"]
    assert state.square_avg[1].dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(state.square_avg[1]), torch_buffer.double().numpy())
    assert state.square_avg[0].dtype == jnp.float32


@pytest.mark.parametrize(
    "narrower", [jnp.float16, jnp.bfloat16, jnp.complex64], ids=["float16", "bfloat16", "complex"]
)
def test_a_wider_or_other_kind_state_is_refused_naming_both_sides(narrower):
    state_dict, params = _stepped_torch_state()
    params[1] = params[1].astype(narrower)
    name = jnp.dtype(narrower).name
    with pytest.raises(ValueError, match=rf"dtype mismatch at torch parameter 1.*float32.*{name}"):
        jrmsprop.from_torch_state_dict(state_dict, params)


def test_missing_state_entry_for_the_configuration_is_an_error():
    state_dict, params = _stepped_torch_state(momentum=0.0)
    state_dict = copy.deepcopy(state_dict)
    state_dict["param_groups"][0]["momentum"] = 0.9  # set after the buffers were made
    with pytest.raises(ValueError, match=r"no 'momentum_buffer'"):
        jrmsprop.from_torch_state_dict(state_dict, params)


def test_several_param_groups_are_refused():
    params0, _ = _data(np.float32)
    torch_params = [torch.nn.Parameter(torch.from_numpy(p)) for p in params0]
    torch_opt = torch.optim.RMSprop(
        [{"params": torch_params[:1]}, {"params": torch_params[1:], "lr": 0.1}]
    )
    with pytest.raises(ValueError, match="2 param_groups"):
        jrmsprop.from_torch_state_dict(torch_opt.state_dict(), [jnp.asarray(p) for p in params0])


def test_state_that_does_not_fit_the_hyperparameters_is_refused():
    params = [jnp.ones(3)]
    state = jrmsprop.rmsprop().init(params)
    with pytest.raises(ValueError, match="no momentum_buffer"):
        jrmsprop.to_torch_state_dict({"momentum": 0.9}, state)
    with pytest.raises(ValueError, match="no grad_avg"):
        jrmsprop.to_torch_state_dict({"centered": True}, state)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        jrmsprop.to_torch_state_dict({"learning_rate": 0.1}, state)
    with pytest.raises(TypeError, match="lr is a schedule"):
        jrmsprop.to_torch_state_dict({"lr": optax.constant_schedule(0.1)}, state)


def test_torch_is_imported_lazily_with_a_clear_message():
    # A real interpreter where `import torch` fails (sys.modules[name] = None is
    # Python's documented way to make an import raise ImportError).
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import jax.numpy as jnp, jrmsprop\n"
        "state = jrmsprop.rmsprop().init([jnp.ones(2)])\n"
        "try:\n"
        "    jrmsprop.to_torch_state_dict({}, state)\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert "ImportError: jrmsprop's torch interop needs PyTorch" in out
    assert "pip install torch" in out


def test_migration_example_prints_equal_curves(capsys):
    # In this process (torch and jax are already imported): the example's main().
    path = Path(__file__).resolve().parents[1] / "examples" / "migrate_from_torch.py"
    spec = importlib.util.spec_from_file_location("migrate_from_torch", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(before=20, after=30)  # raises if the curves differ
    out = capsys.readouterr().out
    assert "curves equal" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 10
    assert_close(
        np.array([float(r[2]) for r in rows]),
        np.array([float(r[1]) for r in rows]),
        rtol=0,
        atol=1.5e-6,
    )  # printed to 6 decimals


@pytest.mark.parametrize(
    "make, found",
    [
        (lambda ps: torch.optim.Adam(ps, lr=1e-3), "exp_avg"),
        (lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9), "dampening"),
    ],
)
def test_another_optimizers_state_dict_is_named_not_a_key_error(make, found):
    params0, grads = _data(np.float32)
    torch_params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0]
    torch_opt = make(torch_params)
    _torch_steps(torch_params, torch_opt, grads[:2])
    with pytest.raises(ValueError, match=rf"not an RMSprop state dict.*{found}"):
        jrmsprop.from_torch_state_dict(torch_opt.state_dict(), [jnp.array(p) for p in params0])


@pytest.mark.parametrize("bad", [-1.0, 2.5, float("nan"), float("inf"), "three"])
def test_step_must_be_a_finite_non_negative_integer(bad):
    state_dict, params = _stepped_torch_state()
    state_dict = copy.deepcopy(state_dict)
    state_dict["state"][0]["step"] = bad if isinstance(bad, str) else torch.tensor(bad)
    with pytest.raises(ValueError, match=r"torch parameter 0.*step must be"):
        jrmsprop.from_torch_state_dict(state_dict, params)


def test_conjugate_and_negative_bit_tensors_are_read_by_value():
    """A lazily conjugated or negated tensor (x.conj(), x.conj().imag) reads as its values."""
    params = [jnp.zeros(3, jnp.complex64), jnp.zeros(3, jnp.float32)]
    z = torch.tensor([1 + 2j, 3 - 1j, -2 + 0.5j], dtype=torch.complex64)
    lazy_neg = z.conj().imag  # a view with the negative bit set
    assert z.conj().is_conj() and lazy_neg.is_neg()
    state_dict = {
        "state": {
            0: {"step": torch.tensor(1.0), "square_avg": z.conj()},
            1: {"step": torch.tensor(1.0), "square_avg": lazy_neg},
        },
        "param_groups": [
            {
                "lr": 0.01,
                "alpha": 0.99,
                "eps": 1e-8,
                "weight_decay": 0,
                "momentum": 0,
                "centered": False,
                "maximize": False,
                "params": [0, 1],
            }
        ],
    }
    _, state = jrmsprop.from_torch_state_dict(state_dict, params)
    np.testing.assert_array_equal(state.square_avg[0], np.conj(z.numpy()))
    np.testing.assert_array_equal(state.square_avg[1], -z.numpy().imag)
    np.testing.assert_array_equal(state.step, [1, 1])
