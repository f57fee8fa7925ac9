"""Migrating real torch runs by name (jrmsprop.interop.from_torch / to_torch).

Each case: torch trains N steps, the run moves to JAX and takes M steps there
(torch's own gradients replayed, and JAX's gradients where the model is written
in JAX), compared with torch continuing, params and every buffer, step and lr;
then the JAX run moves back into a copy of torch's objects taken at the move,
and both torch runs continue L steps and are compared again.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch.testing import assert_close

from jrmsprop import interop
from jrmsprop.schedules import from_torch_scheduler

L = torch.optim.lr_scheduler
N, M, BACK = 6, 6, 2


def _tol(dtype):
    return {} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}


def _batches(model_in, steps, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((4, *model_in), generator=gen, dtype=dtype) for _ in range(steps)]


def _torch_step(model, opt, x, loss_fn):
    opt.zero_grad(set_to_none=True)
    loss_fn(model, x).backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    return grads


def _train(model, opt, sched, batches, loss_fn, k, start):
    """torch steps over ``batches``; the scheduler steps after every k-th optimizer step."""
    grads = []
    for i, x in enumerate(batches):
        grads.append(_torch_step(model, opt, x, loss_fn))
        if sched is not None and (start + i + 1) % k == 0:
            sched.step()
    return grads


def _compare(params, opt_state, model, opt, sched, twin, k, dtype):
    """JAX's run written into ``twin`` (torch objects at the move) equals torch's run."""
    for name, p in model.named_parameters():
        assert_close(torch.from_numpy(np.array(params[name])), p.detach(), **_tol(dtype))
    interop.to_torch(params, opt_state, *twin, steps_per_scheduler_step=k)
    t_model, t_opt, t_sched = twin
    for (name, p), (_, q) in zip(model.named_parameters(), t_model.named_parameters()):
        assert_close(q.detach(), p.detach(), **_tol(dtype), msg=lambda m, name=name: f"{name}: {m}")
    ours, theirs = t_opt.state_dict(), opt.state_dict()
    assert ours["state"].keys() == theirs["state"].keys()
    for i, entry in theirs["state"].items():
        assert ours["state"][i].keys() == entry.keys(), i
        for key, value in entry.items():
            if key == "step":
                assert float(ours["state"][i][key]) == float(value), (i, key)
            else:
                assert_close(
                    ours["state"][i][key],
                    value,
                    **_tol(dtype),
                    msg=lambda m, i=i, key=key: f"{i} {key} {m}",
                )
    assert [g["lr"] for g in ours["param_groups"]] == [g["lr"] for g in theirs["param_groups"]]
    if sched is not None:
        assert t_sched.state_dict() == sched.state_dict()  # last_epoch, _last_lr, ...


def _migrate_and_continue(make, loss_fn, in_shape, dtype, k=1, horizon=None, jax_loss=None):
    torch.manual_seed(0)
    model, opt, sched = make()
    model.to(dtype)
    batches = _batches(in_shape, N + M + BACK, dtype)
    _train(model, opt, sched, batches[:N], loss_fn, k, 0)

    params, tx, opt_state = interop.from_torch(
        model, opt, sched, steps_per_scheduler_step=k, horizon=horizon
    )
    assert list(params) == [n for n, _ in model.named_parameters()]
    assert jax.tree.structure(opt_state) == jax.tree.structure(tx.init(params))
    twin = copy.deepcopy((model, opt, sched))
    start_params, start_state = params, opt_state
    grads = _train(model, opt, sched, batches[N : N + M], loss_fn, k, N)

    @jax.jit
    def step(g, s, p):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    for g in grads:
        g = {n: None if v is None else jnp.asarray(v.numpy()) for n, v in g.items()}
        params, opt_state = step(g, opt_state, params)
    _compare(params, opt_state, model, opt, sched, twin, k, dtype)

    if jax_loss is not None:  # the model's own JAX gradients instead of torch's
        own_params, own_state = start_params, start_state
        for x in batches[N : N + M]:
            g = jax.grad(jax_loss)(own_params, jnp.asarray(x.numpy()))
            own_params, own_state = step(g, own_state, own_params)
        for name, p in model.named_parameters():
            assert_close(torch.from_numpy(np.array(own_params[name])), p.detach(), **_tol(dtype))

    # Back in torch: the twin continues as the original does.
    _train(model, opt, sched, batches[N + M :], loss_fn, k, N + M)
    t_model, t_opt, t_sched = twin
    _train(t_model, t_opt, t_sched, batches[N + M :], loss_fn, k, N + M)
    for (name, p), (_, q) in zip(model.named_parameters(), t_model.named_parameters()):
        assert_close(q.detach(), p.detach(), **_tol(dtype))
    for i, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            assert_close(t_opt.state_dict()["state"][i][key], value, **_tol(dtype))
    return params


def _square_loss(model, x):
    return (model(x) ** 2).mean()


# --- the models ---------------------------------------------------------------


def _layernorms():
    model = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Tanh(), torch.nn.LayerNorm(8))
    with torch.no_grad():  # distinct values, so a swapped buffer shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return (
        model,
        torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.5, centered=True),
        None,
    )


def _layernorm_jax(params, x):
    def norm(h, i):
        mean = h.mean(-1, keepdims=True)
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        return (h - mean) / jnp.sqrt(var + 1e-5) * params[f"{i}.weight"] + params[f"{i}.bias"]

    return (norm(jnp.tanh(norm(x, 0)), 2) ** 2).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_layernorm_model_whose_sorted_names_differ_from_torch_order(dtype, x64_if_wide):
    params = _migrate_and_continue(_layernorms, _square_loss, (8,), dtype, jax_loss=_layernorm_jax)
    assert jax.tree_util.tree_flatten_with_path(params)[0][0][0][0].key == "0.bias"  # sorted


def _transformer():
    model = torch.nn.TransformerEncoderLayer(
        16, 2, dim_feedforward=32, dropout=0.0, batch_first=True
    )
    return model, torch.optim.RMSprop(model.parameters(), lr=1e-3, weight_decay=0.01), None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_transformer_encoder_layer(dtype, x64_if_wide):
    _migrate_and_continue(_transformer, _square_loss, (5, 16), dtype)


class _CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def _cnn_cosine():
    model = _CNN()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.9)
    return model, opt, L.CosineAnnealingLR(opt, T_max=7, eta_min=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_cnn_with_batchnorm_and_cosine_annealing(dtype, x64_if_wide):
    _migrate_and_continue(_cnn_cosine, _square_loss, (1, 6, 6), dtype, horizon=M)


def _mlp():
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    )


def _mlp_jax(params, x):
    h = x @ params["0.weight"].T + params["0.bias"]
    mean = h.mean(-1, keepdims=True)
    h = (h - mean) / jnp.sqrt(((h - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
    h = jnp.tanh(h * params["1.weight"] + params["1.bias"])
    return ((h @ params["3.weight"].T + params["3.bias"]) ** 2).mean()


def _three_groups_steplr():
    model = _mlp()
    opt = torch.optim.RMSprop(
        [
            {"params": [model[0].weight], "weight_decay": 0.1},
            {"params": [model[0].bias, model[1].weight, model[1].bias]},
            {
                "params": [model[3].weight, model[3].bias],
                "lr": 3e-3,
                "momentum": 0.9,
                "centered": True,
            },
        ],
        lr=1e-2,
    )
    return model, opt, L.StepLR(opt, step_size=4, gamma=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_three_param_groups_with_steplr_crossing_boundaries(dtype, x64_if_wide):
    _migrate_and_continue(
        _three_groups_steplr, _square_loss, (6,), dtype, horizon=M, jax_loss=_mlp_jax
    )


def _one_cycle():
    model = _mlp()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.5)
    return model, opt, L.OneCycleLR(opt, max_lr=0.01, total_steps=N + M + BACK)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_one_cycle(dtype, x64_if_wide):
    _migrate_and_continue(_one_cycle, _square_loss, (6,), dtype, jax_loss=_mlp_jax)


def _epochs_warmup_then_cosine():
    model = _mlp()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    warmup = L.LinearLR(opt, start_factor=0.1, total_iters=2)
    cosine = L.CosineAnnealingLR(opt, T_max=4)
    return model, opt, L.SequentialLR(opt, [warmup, cosine], milestones=[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_scheduler_stepped_once_per_epoch_of_three_steps(dtype, x64_if_wide):
    _migrate_and_continue(_epochs_warmup_then_cosine, _square_loss, (6,), dtype, k=3, horizon=M)


def _frozen_first_layer():
    model = _mlp()
    model[0].requires_grad_(False)  # in the optimizer, never a gradient: no torch state
    return model, torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.9), None


def test_a_frozen_part_that_never_got_gradients():
    _migrate_and_continue(_frozen_first_layer, _square_loss, (6,), torch.float32)


# --- schedules, refusals, position checks ---------------------------------------


@pytest.mark.parametrize(
    "make, horizon",
    [
        (lambda o: L.StepLR(o, 7, 0.5), 150),
        (lambda o: L.MultiStepLR(o, [10, 40, 90], 0.3), None),
        (lambda o: L.ExponentialLR(o, 0.97), 150),
        (lambda o: L.CosineAnnealingLR(o, 30, eta_min=1e-4), 150),
        (lambda o: L.LinearLR(o, 0.1, total_iters=50), None),
        (lambda o: L.ConstantLR(o, 0.3, total_iters=20), None),
        (lambda o: L.PolynomialLR(o, total_iters=60, power=2.0), None),
        (lambda o: L.OneCycleLR(o, max_lr=[0.5, 1.0], total_steps=160), None),
        (
            lambda o: L.SequentialLR(
                o, [L.LinearLR(o, 0.1, total_iters=5), L.CosineAnnealingLR(o, 40)], [5]
            ),
            150,
        ),
    ],
    ids=[
        "step",
        "multistep",
        "exponential",
        "cosine",
        "linear",
        "constant",
        "polynomial",
        "onecycle",
        "sequential",
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])  # JAX's default mode; x64
def test_schedules_equal_torch_get_last_lr_float_for_float(make, horizon, dtype, x64_if_wide):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.RMSprop(
        [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.5}], lr=0.1
    )
    sched = make(opt)
    for _ in range(9):
        opt.step()
        sched.step()
    schedules, count = from_torch_scheduler(sched, horizon=horizon)
    assert count == 9
    table = jax.jit(lambda n: jnp.stack([s(n) for s in schedules]))
    for n in range(count, count + 150):
        expected = [float(np.asarray(lr, dtype)) for lr in sched.get_last_lr()]
        assert table(n).dtype == dtype and [float(v) for v in table(n)] == expected, n
        opt.step()
        sched.step()


def test_past_the_table_the_lr_follows_the_closed_form_and_a_settled_one_holds():
    opt = torch.optim.RMSprop(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    (lr,), count = from_torch_scheduler(L.StepLR(opt, 2), horizon=4)
    assert float(lr(count + 4)) == pytest.approx(0.1 * 0.1**2, rel=1e-6)
    assert float(lr(count + 4000)) == pytest.approx(0.1 * 0.1**1000, rel=1e-6, abs=1e-30)
    (lr,), count = from_torch_scheduler(L.LinearLR(opt, total_iters=3))
    assert float(lr(10**6)) == float(lr(count + 3))


@pytest.mark.parametrize(
    "make, advice",
    [
        (lambda o: L.LambdaLR(o, lambda e: 0.9**e), "optax schedule"),
        (lambda o: L.MultiplicativeLR(o, lambda e: 0.9), "optax schedule"),
        (
            lambda o: L.ChainedScheduler([L.StepLR(o, 2), L.CosineAnnealingLR(o, 9)]),
            r"_schedulers\[1\] is a CosineAnnealingLR in a ChainedScheduler.*product",
        ),
        (
            lambda o: L.SequentialLR(o, [L.LambdaLR(o, lambda e: 1.0), L.StepLR(o, 2)], [3]),
            r"_schedulers\[0\] is a LambdaLR",
        ),
    ],
    ids=["lambda", "multiplicative", "chained", "sequential_of_lambda"],
)
def test_untranslatable_schedulers_are_refused_saying_what_to_do(make, advice):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.RMSprop(model.parameters())
    with pytest.raises(TypeError, match=advice):
        interop.from_torch(model, opt, make(opt))


def test_a_scheduler_that_never_settles_needs_no_horizon():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=0.1)
    params, tx, state = interop.from_torch(model, opt, L.CosineAnnealingLR(opt, 10))
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(30):  # past any table a horizon would have asked for
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert all(np.isfinite(np.asarray(p)).all() for p in params.values())
    (lr,), count = from_torch_scheduler(L.CosineAnnealingLR(opt, 10))
    assert float(lr(count + 20)) == pytest.approx(0.1, rel=1e-6)  # its period, 2 * T_max


def test_optimizer_parameters_outside_the_model_are_refused():
    # (Model parameters outside the optimizer are kept fixed: tests/test_bridge_run.py.)
    model = _mlp()
    opt = torch.optim.RMSprop([*model.parameters(), torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[6\].*not a parameter"):
        interop.from_torch(model, opt)


def test_a_tied_weight_is_one_parameter_under_its_first_name():
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 3, bias=False)
    )
    model[1].weight = model[0].weight
    params, _, opt_state = interop.from_torch(model, torch.optim.RMSprop(model.parameters()))
    assert list(params) == ["0.weight"] and opt_state.step.shape == (1,)


def test_from_state_dicts_equals_from_the_objects():
    torch.manual_seed(0)
    model, opt, sched = _three_groups_steplr()
    _train(model, opt, sched, _batches((6,), 3, torch.float32), _square_loss, 1, 0)
    names = [n for n, _ in model.named_parameters()]
    order = [
        names[[id(p) for p in model.parameters()].index(id(q))]
        for g in opt.param_groups
        for q in g["params"]
    ]
    a = interop.from_torch(model, opt, sched, horizon=5)
    b = interop.from_torch_state_dicts(
        model.state_dict(), opt.state_dict(), order, (L.StepLR, sched.state_dict()), horizon=5
    )
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a[2], b[2]))
    assert list(b[0]) == order


def test_position_based_functions_refuse_a_dict_flattened_out_of_order():
    model, opt, _ = _layernorms()
    model(torch.ones(2, 8)).sum().backward()
    opt.step()
    by_name = {n: jnp.array(p.detach().numpy()) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"sorted order.*from_torch"):
        jrmsprop_interop_position(opt.state_dict(), by_name)
    from collections import OrderedDict

    _, state = jrmsprop_interop_position(opt.state_dict(), OrderedDict(by_name))
    assert_close(
        torch.from_numpy(np.array(state.square_avg["0.weight"])),
        opt.state_dict()["state"][0]["square_avg"],
    )
    bad_state = state._replace(
        square_avg=dict(state.square_avg), momentum_buffer=None, grad_avg=None
    )
    with pytest.raises(ValueError, match="sorted order"):
        interop.to_torch_state_dict({}, bad_state)


def jrmsprop_interop_position(state_dict, params):
    return interop.from_torch_state_dict(state_dict, params)


def test_imports_are_checked_as_load_state_dict_checks():
    model, opt, _ = _layernorms()
    model(torch.ones(2, 8)).sum().backward()
    opt.step()
    params = [jnp.array(p.detach().numpy()) for p in model.parameters()]
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][7] = sd["state"][0]
    with pytest.raises(ValueError, match=r"entries \[7\] belong to no parameter"):
        interop.from_torch_state_dict(sd, params)
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["eps"] = -1.0
    with pytest.raises(ValueError, match="Invalid epsilon value: -1.0"):
        interop.from_torch_state_dict(sd, params)
    _, state = interop.from_torch_state_dict(opt.state_dict(), params)
    with pytest.raises(ValueError, match="Invalid alpha value: -0.5"):
        interop.to_torch_state_dict({"alpha": -0.5, "momentum": 0.5, "centered": True}, state)
