"""Bad input gets a clear error that names what was wrong (SPEC section 4)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jrmsprop

NEGATIVE = [
    ("lr", "Invalid learning rate: -1.0"),
    ("eps", "Invalid epsilon value: -1.0"),
    ("momentum", "Invalid momentum value: -1.0"),
    ("weight_decay", "Invalid weight_decay value: -1.0"),
    ("alpha", "Invalid alpha value: -1.0"),
]


@pytest.mark.parametrize("name,message", NEGATIVE)
def test_negative_hyperparameter_has_torchs_wording(name, message):
    with pytest.raises(ValueError) as torch_error:
        torch.optim.RMSprop([torch.zeros(1, requires_grad=True)], **{name: -1.0})
    assert str(torch_error.value) == message
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        jrmsprop.rmsprop(**{name: -1.0})


@pytest.mark.parametrize("name,message", NEGATIVE)
def test_negative_hyperparameter_as_array_is_caught(name, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        jrmsprop.rmsprop(**{name: jnp.asarray(-1.0)})


def test_nan_learning_rate_is_invalid_as_in_torch():
    with pytest.raises(ValueError, match="Invalid learning rate: nan"):
        jrmsprop.rmsprop(lr=float("nan"))


def test_zero_hyperparameters_are_valid():
    jrmsprop.rmsprop(lr=0.0, alpha=0.0, eps=0.0, weight_decay=0.0, momentum=0.0)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_integer_or_boolean_param_is_a_type_error_naming_its_path(dtype):
    params = {"encoder": {"w": jnp.ones(2), "mask": jnp.ones(2, dtype)}}
    with pytest.raises(TypeError, match=r"\['encoder'\]\['mask'\]"):
        jrmsprop.rmsprop().init(params)


def test_integer_grad_is_a_type_error_naming_its_path():
    params = {"w": jnp.ones(2)}
    state = jrmsprop.rmsprop().init(params)
    with pytest.raises(TypeError, match=r"\['w'\].*int32"):
        jrmsprop.rmsprop().update({"w": jnp.ones(2, jnp.int32)}, state, params)


def test_grad_shape_mismatch_names_path_and_both_shapes():
    params = {"a": jnp.ones(2), "b": jnp.ones((3, 4))}
    opt = jrmsprop.rmsprop()
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"\['b'\].*\(4, 3\).*\(3, 4\)"):
        opt.update({"a": jnp.ones(2), "b": jnp.ones((4, 3))}, state, params)


def test_grad_dtype_mismatch_names_path_and_both_dtypes():
    params = [jnp.ones(2, jnp.float32), jnp.ones(2, jnp.complex64)]
    opt = jrmsprop.rmsprop()
    state = opt.init(params)
    with pytest.raises(TypeError, match=r"\[1\].*float32.*complex64"):
        opt.update([jnp.ones(2, jnp.float32), jnp.ones(2, jnp.float32)], state, params)


def test_grad_structure_mismatch_names_both_structures():
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    opt = jrmsprop.rmsprop()
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"structure of grads.*'a'.*'c'.*'a'.*'b'"):
        opt.update({"a": jnp.ones(2), "c": jnp.ones(2)}, state, params)


def test_param_shape_mismatch_against_state_names_path():
    params = {"w": jnp.ones(3)}
    opt = jrmsprop.rmsprop()
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"\['w'\].*params has shape \(4,\).*\(3,\)"):
        opt.update({"w": jnp.ones(3)}, state, {"w": jnp.ones(4)})


def test_non_array_gradient_is_a_type_error():
    params = {"w": jnp.ones(2)}
    opt = jrmsprop.rmsprop()
    with pytest.raises(TypeError, match=r"\['w'\].*str"):
        opt.update({"w": "oops"}, opt.init(params), params)


def test_weight_decay_without_params_is_a_clear_error():
    params = {"w": jnp.ones(2)}
    opt = jrmsprop.rmsprop(weight_decay=0.1)
    with pytest.raises(ValueError, match="weight_decay=0.1 needs params"):
        opt.update({"w": jnp.ones(2)}, opt.init(params))


def test_no_params_needed_without_weight_decay():
    params = {"w": jnp.ones(2)}
    opt = jrmsprop.rmsprop()
    updates, _ = opt.update({"w": jnp.ones(2)}, opt.init(params))
    assert np.all(np.isfinite(updates["w"]))


def test_non_centered_state_in_centered_update_is_an_error():
    params = {"w": jnp.ones(2)}
    state = jrmsprop.rmsprop().init(params)
    with pytest.raises(ValueError, match="no grad_avg.*centered=False"):
        jrmsprop.rmsprop(centered=True).update({"w": jnp.ones(2)}, state, params)


def test_centered_state_in_non_centered_update_is_an_error():
    params = {"w": jnp.ones(2)}
    state = jrmsprop.rmsprop(centered=True).init(params)
    with pytest.raises(ValueError, match="has a grad_avg.*centered=True"):
        jrmsprop.rmsprop().update({"w": jnp.ones(2)}, state, params)


def test_state_without_momentum_buffer_in_momentum_update_is_an_error():
    params = {"w": jnp.ones(2)}
    state = jrmsprop.rmsprop().init(params)
    with pytest.raises(ValueError, match="momentum=0.9 needs a momentum_buffer"):
        jrmsprop.rmsprop(momentum=0.9).update({"w": jnp.ones(2)}, state, params)


def test_foreign_state_is_a_type_error():
    params = {"w": jnp.ones(2)}
    with pytest.raises(TypeError, match="RMSpropState"):
        jrmsprop.rmsprop().update({"w": jnp.ones(2)}, {"w": jnp.zeros(2)}, params)


def test_a_failed_update_changes_nothing():
    params = {"w": jnp.arange(3.0)}
    opt = jrmsprop.rmsprop(momentum=0.5)
    state = opt.init(params)
    _, state = opt.update({"w": jnp.ones(3)}, state, params)
    before = [np.array(x) for x in (params["w"], state.square_avg["w"], state.momentum_buffer["w"])]
    with pytest.raises(ValueError):
        opt.update({"w": jnp.ones(4)}, state, params)
    after = [np.array(x) for x in (params["w"], state.square_avg["w"], state.momentum_buffer["w"])]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)
    assert int(state.step[0]) == 1 and int(state.count) == 1


@pytest.mark.parametrize("buffer", ["momentum_buffer", "grad_avg"])
def test_state_buffer_of_the_wrong_shape_names_its_path(buffer):
    """Every buffer is checked, not only square_avg: a (3, 3) buffer must not broadcast."""
    params = {"w": jnp.ones(3)}
    opt = jrmsprop.rmsprop(momentum=0.9, centered=True)
    state = opt.init(params)
    state = state._replace(**{buffer: {"w": jnp.ones((3, 3))}})
    with pytest.raises(
        ValueError,
        match=rf"\['w'\]: state\.{buffer} has shape \(3, 3\), state.square_avg has shape \(3,\)",
    ):
        opt.update({"w": jnp.ones(3)}, state, params)


def test_state_buffer_of_the_wrong_dtype_names_its_path(x64):
    params = {"w": jnp.ones(3, jnp.float32)}
    opt = jrmsprop.rmsprop(momentum=0.9)
    state = opt.init(params)._replace(momentum_buffer={"w": jnp.ones(3, jnp.float64)})
    with pytest.raises(
        TypeError, match=r"\['w'\]: state\.momentum_buffer is float64, state.square_avg is float32"
    ):
        opt.update({"w": jnp.ones(3, jnp.float32)}, state, params)


def test_state_buffer_of_another_structure_is_an_error():
    params = {"w": jnp.ones(3)}
    opt = jrmsprop.rmsprop(centered=True)
    state = opt.init(params)._replace(grad_avg=[jnp.ones(3)])
    with pytest.raises(ValueError, match=r"structure of state\.grad_avg"):
        opt.update({"w": jnp.ones(3)}, state, params)


@pytest.mark.parametrize(
    "step",
    [
        jnp.zeros(2, jnp.int32),  # one entry too many
        jnp.zeros((), jnp.int32),  # a scalar
        jnp.zeros(1, jnp.float32),  # not an integer
        {"w": jnp.zeros([], jnp.int32)},  # the per-leaf layout of jrmsprop <= 0.1
    ],
)
def test_step_that_is_not_one_integer_per_parameter_is_an_error(step):
    params = {"w": jnp.ones(3)}
    opt = jrmsprop.rmsprop()
    state = opt.init(params)._replace(step=step)
    with pytest.raises(ValueError, match=r"state\.step must be an integer vector.*\(1,\)"):
        opt.update({"w": jnp.ones(3)}, state, params)


def test_none_param_where_the_state_has_an_array_is_an_error():
    params = {"w": jnp.ones(3)}
    opt = jrmsprop.rmsprop(weight_decay=0.1)
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"params leaf \['w'\] is None"):
        opt.update({"w": jnp.ones(3)}, state, {"w": None})


def test_array_gradient_where_params_had_none_is_a_structure_error():
    """A None in params is no parameter: a gradient there belongs to nothing."""
    params = {"w": jnp.ones(3), "b": None}
    opt = jrmsprop.rmsprop()
    state = opt.init(params)
    with pytest.raises(ValueError, match="structure of grads does not match"):
        opt.update({"w": jnp.ones(3), "b": jnp.ones(2)}, state, params)


# --- errors that name the thing: the stateful adapter, inject_hyperparams, loaded states


def _adapter(**kwargs):
    params = [jnp.arange(3.0, dtype=jnp.float32)]
    return params, jrmsprop.FunctionalRMSprop(params, lr=0.1, **kwargs)


def _unchanged(opt, params, before):
    np.testing.assert_array_equal(np.array(params[0]), before)
    assert not params[0].is_deleted()


def test_adapter_step_under_jit_says_to_use_the_pure_transformation():
    params, opt = _adapter()
    before = np.array(params[0])
    with pytest.raises(
        TypeError,
        match=r"FunctionalRMSprop: gradient \[0\] is a traced array.*"
        r"stateful.*jrmsprop\.rmsprop inside it",
    ):
        jax.jit(lambda g: opt.step([g]))(jnp.ones(3, jnp.float32))
    _unchanged(opt, params, before)
    assert opt.state == {}
    opt.step([jnp.ones(3, jnp.float32)])  # still usable eagerly
    assert int(opt.state[0]["step"]) == 1


def test_adapter_built_under_jit_says_so():
    def build(p):
        jrmsprop.FunctionalRMSprop([p])
        return p

    with pytest.raises(TypeError, match=r"parameter \[0\] is a traced array"):
        jax.jit(build)(jnp.ones(3))


def test_inject_hyperparams_without_params_and_zero_weight_decay_steps():
    params = {"w": jnp.array([1.0, -2.0, 0.5], jnp.float32)}
    grads = {"w": jnp.array([0.3, 1e-3, -1.0], jnp.float32)}
    injected = optax.inject_hyperparams(jrmsprop.rmsprop)(lr=0.1, momentum=0.9)
    state = injected.init(params)
    got, _ = injected.update(grads, state)  # no params: weight_decay is a zero array
    want, _ = injected.update(grads, state, params)
    np.testing.assert_array_equal(got["w"], want["w"])


def test_inject_hyperparams_traced_weight_decay_without_params_names_the_remedy():
    params = {"w": jnp.ones(3, jnp.float32)}
    injected = optax.inject_hyperparams(jrmsprop.rmsprop)(lr=0.1)
    with pytest.raises(ValueError, match=r"weight_decay is a traced array.*static_args"):
        jax.jit(injected.update)(params, injected.init(params))
    static = optax.inject_hyperparams(jrmsprop.rmsprop, static_args=("weight_decay",))(lr=0.1)
    updates, _ = jax.jit(static.update)(params, static.init(params))
    assert np.isfinite(np.asarray(updates["w"])).all()


def test_inject_hyperparams_nonzero_weight_decay_without_params_names_its_value():
    params = {"w": jnp.ones(3, jnp.float32)}
    injected = optax.inject_hyperparams(jrmsprop.rmsprop)(lr=0.1, weight_decay=0.25)
    with pytest.raises(ValueError, match=r"weight_decay=0\.25 needs params"):
        injected.update(params, injected.init(params))


def test_python_float_as_a_square_avg_leaf_names_the_leaf():
    params = {"w": jnp.ones(3)}
    opt = jrmsprop.rmsprop()
    state = opt.init(params)._replace(square_avg={"w": 0.5})
    with pytest.raises(TypeError, match=r"state\.square_avg leaf \['w'\] is a float, not an array"):
        opt.update({"w": jnp.ones(3)}, state, params)


@pytest.mark.parametrize("shape", [(3,), ()])
def test_python_float_as_a_loaded_buffer_is_refused_and_changes_nothing(shape):
    params = [jnp.ones(shape, jnp.float32)]
    opt = jrmsprop.FunctionalRMSprop(params, lr=0.1)
    opt.step([jnp.ones(shape, jnp.float32)])
    saved = opt.state_dict()
    bad = opt.state_dict()
    bad["state"][0]["square_avg"] = 0.5
    with pytest.raises(TypeError, match=r"'square_avg' of parameter 0 is a Python float"):
        opt.load_state_dict(bad)
    np.testing.assert_array_equal(
        opt.state_dict()["state"][0]["square_avg"], saved["state"][0]["square_avg"]
    )


def test_python_float_in_a_torch_state_dict_names_the_buffer():
    params = [jnp.ones(3, jnp.float32)]
    torch_param = torch.ones(3, requires_grad=True)
    torch_opt = torch.optim.RMSprop([torch_param])
    torch_param.grad = torch.ones(3)
    torch_opt.step()
    state_dict = torch_opt.state_dict()
    state_dict["state"][0]["square_avg"] = 0.5
    with pytest.raises(TypeError, match=r"torch square_avg at .* is a Python float"):
        jrmsprop.from_torch_state_dict(state_dict, params)


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">c8"])
def test_big_endian_numpy_gradient_is_taken_as_its_native_values(dtype, x64_if_wide):
    native = np.dtype(dtype).newbyteorder("=")
    rng = np.random.default_rng(0)
    values = rng.standard_normal(4)
    if native.kind == "c":
        values = values + 1j * rng.standard_normal(4)
    native_grad = values.astype(native)
    big_grad = native_grad.astype(dtype)
    assert not big_grad.dtype.isnative and (big_grad == native_grad).all()
    params = {"w": jnp.ones(4, native)}
    opt = jrmsprop.rmsprop(lr=0.1, momentum=0.9)
    got, _ = opt.update({"w": big_grad}, opt.init(params), params)
    want, _ = opt.update({"w": native_grad}, opt.init(params), params)
    np.testing.assert_array_equal(got["w"], want["w"])
    assert got["w"].dtype == native

    stepped = []
    for grad in (big_grad, native_grad):
        adapter_params = [jnp.ones(4, native)]
        jrmsprop.FunctionalRMSprop(adapter_params, lr=0.1, momentum=0.9).step([grad])
        stepped.append(np.array(adapter_params[0]))
    np.testing.assert_array_equal(*stepped)


def test_big_endian_param_is_refused_naming_the_byte_order():
    with pytest.raises(TypeError, match=r"\['w'\].*non-native byte order \(>f4.*newbyteorder"):
        jrmsprop.rmsprop().init({"w": np.ones(3, ">f4")})
    params, opt = _adapter()
    opt.step([jnp.ones(3, jnp.float32)])
    before = np.array(params[0])
    params[0] = before.astype(">f4")
    with pytest.raises(TypeError, match=r"FunctionalRMSprop: params leaf \[0\].*non-native byte"):
        opt.step([jnp.ones(3, jnp.float32)])
    assert int(opt.state[0]["step"]) == 1


def test_big_endian_buffer_in_a_state_dict_loads():
    params, opt = _adapter(momentum=0.9)
    opt.step([jnp.ones(3, jnp.float32)])
    saved = opt.state_dict()
    swapped = opt.state_dict()
    for key in ("square_avg", "momentum_buffer"):
        swapped["state"][0][key] = saved["state"][0][key].astype(">f4")
    again = jrmsprop.FunctionalRMSprop([jnp.copy(params[0])], lr=0.1)
    again.load_state_dict(swapped)
    for key in ("square_avg", "momentum_buffer"):
        np.testing.assert_array_equal(again.state[0][key], saved["state"][0][key])


@pytest.mark.parametrize("name", ["lr", "alpha", "eps", "weight_decay", "momentum"])
def test_adapter_defaults_without_a_key_names_it(name):
    params, opt = _adapter()
    before = np.array(params[0])
    del opt.defaults[name]
    with pytest.raises(ValueError, match=rf"FunctionalRMSprop: defaults has no '{name}'"):
        opt.step([jnp.ones(3, jnp.float32)])
    with pytest.raises(ValueError, match=rf"defaults has no '{name}'"):
        opt.state_dict()
    _unchanged(opt, params, before)
    assert f"{name}=None" in repr(opt)


def test_adapter_param_group_without_params_names_it():
    _, opt = _adapter()
    del opt.param_group["params"]
    with pytest.raises(ValueError, match=r"param_group has no 'params'"):
        opt.step([jnp.ones(3, jnp.float32)])
    assert opt.state == {}


def test_adapter_dtype_errors_carry_the_adapters_name():
    params = [jnp.ones(3, jnp.bfloat16)]
    opt = jrmsprop.FunctionalRMSprop(params)
    with pytest.raises(
        TypeError,
        match=r"^FunctionalRMSprop: dtype mismatch at \[0\]: "
        r"gradients is float32, params is bfloat16",
    ):
        opt.step([jnp.ones(3, jnp.float32)])
    with pytest.raises(TypeError, match=r"^FunctionalRMSprop: params leaf \[0\] is int32"):
        jrmsprop.FunctionalRMSprop([jnp.ones(3, jnp.int32)])
    opt.step([jnp.ones(3, jnp.bfloat16)])
    params[0] = jnp.ones(4, jnp.bfloat16)
    with pytest.raises(ValueError, match=r"^FunctionalRMSprop: shape mismatch at \[0\]"):
        opt.step([jnp.ones(3, jnp.bfloat16)])


@pytest.mark.parametrize("name", ["lr", "alpha", "eps", "weight_decay", "momentum"])
def test_a_string_hyperparameter_is_refused_in_both_apis_and_nothing_changes(name):
    # torch refuses one too (a comparison of str and float); float("0.01") would read it.
    with pytest.raises(TypeError, match=f"{name} must be a real number, got the string '0.5'"):
        jrmsprop.rmsprop(**{name: "0.5"})
    params = [jnp.ones(3, jnp.float32)]
    opt = jrmsprop.FunctionalRMSprop(params, lr=1e-2)
    opt.defaults[name] = "0.5"
    with pytest.raises(
        TypeError, match=rf"defaults\['{name}'\] must be a real number, got the string"
    ):
        opt.step([jnp.ones(3, jnp.float32)])
    with pytest.raises(TypeError, match="got the string"):
        opt.state_dict()
    assert np.asarray(params[0]).tolist() == [1.0, 1.0, 1.0] and opt.state == {}


def test_a_hyperparameter_written_into_param_group_is_refused_not_ignored():
    """torch.optim's habit, param_groups[0]["lr"] = x, has no effect on torch's
    _FunctionalRMSprop (it reads defaults); the adapter says so instead of ignoring it."""
    params = [jnp.ones(3, jnp.float32)]
    opt = jrmsprop.FunctionalRMSprop(params, lr=1e-2)
    opt.param_group["lr"] = 5.0
    with pytest.raises(
        ValueError, match=r"param_group holds 'lr' besides 'params'.*opt.defaults\['lr'\]"
    ):
        opt.step([jnp.ones(3, jnp.float32)])
    assert np.asarray(opt.param_group["params"][0]).tolist() == [1.0, 1.0, 1.0] and opt.state == {}
    del opt.param_group["lr"]
    opt.defaults["lr"] = 5.0
    opt.step([jnp.ones(3, jnp.float32)])
    assert int(opt.state[0]["step"]) == 1
