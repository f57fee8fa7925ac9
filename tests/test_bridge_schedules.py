"""torch schedulers through the bridge: every count, epochs, the split both ways.

Every value is judged against real torch: a scheduler stepped as a training
loop steps it.
"""

import copy
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch.testing import assert_close

from jrmsprop import interop
from jrmsprop.interop import schedules as bridge
from jrmsprop.schedules import from_torch_scheduler

L = torch.optim.lr_scheduler
START = 9  # scheduler steps torch takes before the move


def _opt(lr=0.1):
    model = torch.nn.Linear(2, 2)
    return torch.optim.RMSprop(
        [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.5 * lr / 0.1}], lr=lr
    )


def _torch_lrs(opt, sched, steps):
    """torch's lr of each group at each of the next ``steps`` positions (the current first)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for i in range(steps):
            out.append(sched.get_last_lr())
            if i < steps - 1:
                sched.step()  # (no optimizer step: the lrs are all that is read)
    return np.asarray(out, np.float64)


def _jax_lrs(schedules, counts):
    table = jax.jit(jax.vmap(lambda n: jnp.stack([s(n) for s in schedules])))
    return np.asarray(table(jnp.asarray(counts)))


CASES = {
    "step": (lambda o: L.StepLR(o, 7, 0.9), 1e-12),
    "multistep_far": (lambda o: L.MultiStepLR(o, [10, 40, 5000, 5000, 70000, 10**9], 0.3), 0),
    "exponential": (lambda o: L.ExponentialLR(o, 0.9999), 1e-12),
    "cosine": (lambda o: L.CosineAnnealingLR(o, 30, eta_min=1e-4), 1e-10),
    "warm_restarts_x2": (lambda o: L.CosineAnnealingWarmRestarts(o, 5, 2, eta_min=1e-3), 1e-12),
    "warm_restarts_x1": (lambda o: L.CosineAnnealingWarmRestarts(o, 7), 1e-12),
    "linear_long": (lambda o: L.LinearLR(o, 0.1, total_iters=50_000), 1e-12),
    "constant": (lambda o: L.ConstantLR(o, 0.3, total_iters=20), 0),
    "polynomial_long": (lambda o: L.PolynomialLR(o, total_iters=5000, power=2.0), 1e-12),
    "onecycle_long": (lambda o: L.OneCycleLR(o, max_lr=[0.5, 1.0], total_steps=100_000), 1e-12),
    "sequential": (
        lambda o: L.SequentialLR(
            o,
            [
                L.LinearLR(o, 0.1, total_iters=5),
                L.CosineAnnealingLR(o, 40),
                L.ExponentialLR(o, 0.9999),
            ],
            [5, 3000],
        ),
        1e-10,
    ),
    "sequential_settling": (
        lambda o: L.SequentialLR(
            o, [L.CosineAnnealingLR(o, 40), L.LinearLR(o, 1.0, 0.2, total_iters=100)], [60]
        ),
        0,
    ),
    "sequential_onecycle": (
        lambda o: L.SequentialLR(
            o,
            [
                L.LinearLR(o, 0.1, total_iters=5),
                L.OneCycleLR(o, max_lr=[0.5, 1.0], total_steps=50, cycle_momentum=False),
                L.StepLR(o, 1000, 0.5),
            ],
            [20, 70],
        ),
        1e-12,
    ),
    "chained": (
        lambda o: L.ChainedScheduler([L.StepLR(o, 3, 0.999), L.LinearLR(o, 0.5, total_iters=4000)]),
        1e-12,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_lr_equals_torchs_over_100000_steps(x64, case):
    make, rtol = CASES[case]
    opt = _opt()
    sched = make(opt)
    _torch_lrs(opt, sched, START + 1)
    schedules, count = from_torch_scheduler(sched)
    assert count == START
    steps = 100_000 - START if case == "onecycle_long" else 100_000
    ours = _jax_lrs(schedules, np.arange(count, count + steps))
    theirs = _torch_lrs(opt, sched, steps)
    assert not np.isnan(ours).any()
    exact = bridge.TABLE  # torch's own values: to the last bit
    np.testing.assert_array_equal(ours[:exact], theirs[:exact])
    # Past the table: the closed form, against torch's recursive form.
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=1e-15)


def test_a_piecewise_constant_scheduler_is_torchs_to_the_last_bit_at_every_change(x64):
    opt = _opt()
    sched = L.MultiStepLR(opt, [20, 3000, 3000, 25_000], 0.7)
    _torch_lrs(opt, sched, START + 1)
    (lr, _), count = from_torch_scheduler(sched)
    theirs = _torch_lrs(opt, sched, 30_000)[:, 0]
    np.testing.assert_array_equal(_jax_lrs([lr], np.arange(count, count + 30_000))[:, 0], theirs)
    assert float(lr(2**31 - 1)) == theirs[-1]


def test_far_ends_cost_their_milestones_not_their_steps(x64):
    """A milestone or an end at 10**9: a few entries, not one per step."""
    opt = _opt()
    far = [
        L.MultiStepLR(opt, [50, 10**9], 0.5),
        L.LinearLR(opt, 0.5, total_iters=10**9),
        L.PolynomialLR(opt, total_iters=10**9),
        L.OneCycleLR(opt, max_lr=1.0, total_steps=10**9, cycle_momentum=False),
    ]
    for sched in far:
        (lr, _), _ = from_torch_scheduler(sched)
        accessed = jax.jit(lr).lower(jnp.int32(0)).compile().cost_analysis()["bytes accessed"]
        assert accessed < 200_000, (type(sched).__name__, accessed)
    (lr, _), _ = from_torch_scheduler(L.MultiStepLR(_opt(), [50, 10**9], 0.5))
    assert [float(lr(n)) for n in (49, 50, 10**9 - 1, 10**9)] == [0.1, 0.05, 0.05, 0.025]
    (lr, _), _ = from_torch_scheduler(L.LinearLR(_opt(), 0.5, total_iters=10**9))
    assert float(lr(5 * 10**8)) == pytest.approx(0.075, rel=1e-12)
    assert float(lr(2 * 10**9)) == pytest.approx(0.1, rel=1e-12)


def test_one_cycle_ends_as_torch_does_at_its_last_step(x64):
    """torch allows last_epoch == total_steps (and raises past it): that lr holds."""
    opt = _opt()
    sched = L.OneCycleLR(opt, max_lr=[0.5, 1.0], total_steps=100)
    _torch_lrs(opt, sched, START + 1)
    (lr, _), count = from_torch_scheduler(sched)
    theirs = _torch_lrs(opt, sched, 100 - START + 1)
    ours = _jax_lrs([lr], np.arange(count, count + len(theirs)))[:, 0]
    np.testing.assert_array_equal(ours, theirs[:, 0])  # to last_epoch == total_steps
    assert float(lr(100)) == theirs[-1, 0] and float(lr(10**6)) == theirs[-1, 0]


def test_a_horizon_shorter_than_one_cycle_cuts_nothing(x64):
    opt = _opt()
    sched = L.OneCycleLR(opt, max_lr=[0.5, 1.0], total_steps=100)
    _torch_lrs(opt, sched, START + 1)
    schedules, count = from_torch_scheduler(sched, horizon=5)
    theirs = _torch_lrs(opt, sched, 100 - START + 1)
    np.testing.assert_array_equal(_jax_lrs(schedules, np.arange(count, 101)), theirs)


def test_a_sequential_ending_in_a_settling_scheduler_holds_its_end(x64):
    opt = _opt()
    make, _ = CASES["sequential_settling"]
    sched = make(opt)
    _torch_lrs(opt, sched, START + 1)
    schedules, count = from_torch_scheduler(sched)
    theirs = _torch_lrs(opt, sched, 400)
    np.testing.assert_array_equal(_jax_lrs(schedules, np.arange(count, count + 400)), theirs)
    np.testing.assert_array_equal(_jax_lrs(schedules, [10**9]), theirs[-1:])


def test_a_sequential_restarts_a_one_cycle_child_at_its_milestone(x64):
    opt = _opt()
    make, _ = CASES["sequential_onecycle"]
    sched = make(opt)
    _torch_lrs(opt, sched, START + 1)
    schedules, count = from_torch_scheduler(sched)
    theirs = _torch_lrs(opt, sched, 200)
    np.testing.assert_array_equal(_jax_lrs(schedules, np.arange(count, count + 200)), theirs)


@pytest.mark.parametrize("case", ["cosine", "multistep_far", "sequential", "step"])
def test_a_count_before_the_position_reads_the_current_lr(x64, case):
    opt = _opt()
    sched = CASES[case][0](opt)
    _torch_lrs(opt, sched, START + 1)
    for k in (1, 3):
        schedules, count = from_torch_scheduler(sched, steps_per_scheduler_step=k)
        assert count == START * k
        before = _jax_lrs(schedules, np.arange(0, count + 1))
        np.testing.assert_array_equal(before, np.broadcast_to(sched.get_last_lr(), before.shape))


# --- real runs: params past a former horizon, epochs --------------------------


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _run(model, opt, sched, steps, k, start, seed):
    """torch steps, the scheduler after every k-th; returns each step's gradients."""
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        (model(torch.randn(4, 6, generator=gen)) ** 2).mean().backward()
        grads.append(
            {
                n: None if p.grad is None else jnp.asarray(p.grad.numpy())
                for n, p in model.named_parameters()
            }
        )
        opt.step()
        if sched is not None and (start + i + 1) % k == 0:
            sched.step()
    return grads


def _replay(tx, params, state, grads):
    @jax.jit
    def step(g, s, p):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    for g in grads:
        params, state = step(g, state, params)
    return params, state


def _assert_params_equal(params, model):
    for name, p in model.named_parameters():
        assert_close(torch.from_numpy(np.array(params[name])), p.detach(), msg=name)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: L.StepLR(o, 2, 0.8),
        lambda o: L.CosineAnnealingLR(o, 8, eta_min=1e-3),
        lambda o: L.ExponentialLR(o, 0.95),
    ],
    ids=["step", "cosine", "exponential"],
)
def test_params_50_steps_past_a_former_horizon_equal_torchs(make):
    model = _model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.5)
    sched = make(opt)
    _run(model, opt, sched, 6, 1, 0, 0)
    horizon = 6  # what a run had to pass before; now only accepted
    params, tx, state = interop.from_torch(model, opt, sched, horizon=horizon)
    grads = _run(model, opt, sched, horizon + 50, 1, 6, 1)
    params, state = _replay(tx, params, state, grads)
    _assert_params_equal(params, model)


def _epochs(steps, k=3):
    model = _model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    sched = L.StepLR(opt, 1, 0.5)  # stepped once per epoch of k optimizer steps
    _run(model, opt, sched, steps, k, 0, 0)
    return model, opt, sched


@pytest.mark.parametrize("given", [3, None], ids=["given", "derived"])
def test_an_epoch_scheduler_checkpointed_mid_epoch_continues_as_torch(given):
    model, opt, sched = _epochs(13)  # epoch 4, one step into the fifth
    assert sched.last_epoch == 4
    twin = copy.deepcopy((model, opt, sched))
    params, tx, state = interop.from_torch(model, opt, sched, steps_per_scheduler_step=given)
    assert int(state.count) == 13
    grads = _run(model, opt, sched, 20, 3, 13, 1)
    params, state = _replay(tx, params, state, grads)
    _assert_params_equal(params, model)
    interop.to_torch(params, state, *twin)  # the same split back, derived again
    assert twin[2].state_dict() == sched.state_dict()
    assert twin[1].param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_a_split_that_contradicts_the_steps_is_refused_naming_the_argument():
    model, opt, sched = _epochs(12)  # steps 12, last_epoch 4
    with pytest.raises(ValueError, match=r"12 steps.*last_epoch 4.*steps_per_scheduler_step=3"):
        interop.from_torch(model, opt, sched, steps_per_scheduler_step=1)
    with pytest.raises(ValueError, match=r"12 steps.*last_epoch 4.*steps_per_scheduler_step=3"):
        interop.from_torch_state_dicts(
            model.state_dict(),
            opt.state_dict(),
            [n for n, _ in model.named_parameters()],
            (L.StepLR, sched.state_dict()),
            steps_per_scheduler_step=1,
        )
    params, tx, state = interop.from_torch(model, opt, sched)  # derived: 3
    assert int(state.count) == 12
    with pytest.raises(ValueError, match=r"steps_per_scheduler_step=3"):
        interop.to_torch(params, state, model, opt, sched, steps_per_scheduler_step=1)
    assert sched.last_epoch == 4


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_a_bad_steps_per_scheduler_step_is_refused(bad):
    model, opt, sched = _epochs(12)
    with pytest.raises(ValueError, match="steps_per_scheduler_step must be a positive int"):
        interop.from_torch(model, opt, sched, steps_per_scheduler_step=bad)
    with pytest.raises(ValueError, match="steps_per_scheduler_step must be a positive int"):
        from_torch_scheduler(sched, steps_per_scheduler_step=bad)
    params, _, state = interop.from_torch(model, opt, sched)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="steps_per_scheduler_step must be a positive int"):
        interop.to_torch(params, state, model, opt, sched, steps_per_scheduler_step=bad)
    assert sched.last_epoch == 4 and opt.state_dict()["param_groups"] == before["param_groups"]


def test_an_ambiguous_split_asks_for_steps_per_scheduler_step():
    model, opt, sched = _epochs(5, k=7)  # 5 steps, the scheduler not yet stepped
    with pytest.raises(ValueError, match=r"pass steps_per_scheduler_step=.*above 5"):
        interop.from_torch(model, opt, sched)
    _, _, state = interop.from_torch(model, opt, sched, steps_per_scheduler_step=7)
    assert int(state.count) == 5


def test_without_a_scheduler_the_count_is_the_largest_step():
    model = _model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    _run(model, opt, None, 3, 1, 0, 0)
    model[0].requires_grad_(False)  # no gradient: its step stays at 3
    _run(model, opt, None, 4, 1, 3, 1)
    steps = sorted(int(e["step"]) for e in opt.state_dict()["state"].values())
    assert steps == [3, 3, 7, 7]
    _, _, state = interop.from_torch(model, opt)
    assert int(state.count) == 7


def test_a_scheduler_given_to_one_direction_only_does_what_the_docs_say():
    # to_torch alone: the scheduler moves to count // k as if the JAX run followed it.
    model, opt, sched = _epochs(12)
    params, tx, state = interop.from_torch(model, opt)
    grads = _run(*copy.deepcopy((model, opt, None)), 6, 1, 12, 1)
    params, state = _replay(tx, params, state, grads)
    interop.to_torch(params, state, model, opt, sched)
    assert sched.last_epoch == 18 // 3
    # from_torch alone: the scheduler and the groups' lr stay where they were.
    model, opt, sched = _epochs(12)
    lr = opt.param_groups[0]["lr"]
    params, tx, state = interop.from_torch(model, opt, sched)
    grads = _run(*copy.deepcopy((model, opt, None)), 6, 1, 12, 1)
    params, state = _replay(tx, params, state, grads)
    interop.to_torch(params, state, model, opt)
    assert sched.last_epoch == 4 and opt.param_groups[0]["lr"] == lr


# --- ReduceLROnPlateau: torch's scheduler decides, its lr rides in the state ------

METRICS = [1.0, 0.9, 0.9, 0.95, 0.9, 0.91, 0.9, 0.92, 0.93, 0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patience": 1, "factor": 0.5, "cooldown": 1, "min_lr": [2e-3, 1e-3]},
        {"mode": "max", "patience": 0, "threshold": 0.05, "factor": 0.3, "eps": 1e-3},
        {"patience": 2, "threshold_mode": "abs", "threshold": 0.01, "factor": 0.7},
    ],
    ids=["min_rel_cooldown_min_lr", "max_rel_eps", "abs"],
)
def test_reduce_lr_on_plateau_both_ways_as_torch(kwargs):
    model = _model()
    opt = torch.optim.RMSprop(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 5e-3}],
        lr=1e-2,
        momentum=0.5,
    )
    sched = L.ReduceLROnPlateau(opt, **kwargs)
    k, epochs_before = 3, 2
    _run(model, opt, None, k * epochs_before, 1, 0, 0)
    for metric in METRICS[:epochs_before]:
        sched.step(metric)
    twin = copy.deepcopy((model, opt, sched))
    params, tx, state = interop.from_torch(*twin)
    # torch: epochs of k steps, the scheduler fed each epoch's metric
    gen_seed = 1
    for epoch, metric in enumerate(METRICS[epochs_before:]):
        grads = _run(model, opt, None, k, 1, 0, gen_seed + epoch)
        sched.step(metric)
        params, state = _replay(tx, params, state, grads)
        twin[2].step(metric)  # the same scheduler object that was migrated
        state = interop.plateau.follow(state, twin[2])
    assert [g["lr"] for g in opt.param_groups] != [1e-2, 5e-3]  # it did reduce
    _assert_params_equal(params, model)
    interop.to_torch(params, state, *twin)
    assert twin[2].state_dict() == sched.state_dict()
    assert [g["lr"] for g in twin[1].param_groups] == [g["lr"] for g in opt.param_groups]


def test_a_plateau_lr_not_followed_is_refused_before_anything_is_written():
    model = _model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    sched = L.ReduceLROnPlateau(opt, patience=0)
    _run(model, opt, None, 2, 1, 0, 0)
    params, tx, state = interop.from_torch(model, opt, sched)
    sched.step(1.0)
    sched.step(2.0)  # reduces the lr; the state was not told
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"plateau.follow\(opt_state, scheduler\)"):
        interop.to_torch(jax.tree.map(lambda p: p + 1, params), state, model, opt, sched)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n])
    interop.to_torch(params, interop.plateau.follow(state, sched), model, opt, sched)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: L.ChainedScheduler([L.StepLR(o, 2, 0.8), L.LinearLR(o, 0.5, total_iters=5)]),
        lambda o: L.CosineAnnealingWarmRestarts(o, 3, 2, eta_min=1e-4),
        lambda o: L.SequentialLR(
            o,
            [
                L.LinearLR(o, 0.1, total_iters=5),
                L.OneCycleLR(o, max_lr=0.05, total_steps=20, cycle_momentum=False),
                L.StepLR(o, 4, 0.5),
            ],
            [5, 25],
        ),
    ],
    ids=["chained", "warm_restarts", "sequential_onecycle"],
)
def test_the_new_schedulers_round_trip_as_torch_continues(make):
    model = _model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    sched = make(opt)
    _run(model, opt, sched, 8, 1, 0, 0)
    twin = copy.deepcopy((model, opt, sched))
    params, tx, state = interop.from_torch(model, opt, sched)
    params, state = _replay(tx, params, state, _run(model, opt, sched, 30, 1, 8, 1))
    _assert_params_equal(params, model)
    interop.to_torch(params, state, *twin)
    assert twin[2].state_dict() == sched.state_dict()
    assert [g["lr"] for g in twin[1].param_groups] == [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize(
    "make",
    [
        lambda o: L.StepLR(o, 1000, 0.5),
        lambda o: L.CosineAnnealingLR(o, 5000, eta_min=1e-4),
        lambda o: L.OneCycleLR(o, max_lr=0.05, total_steps=10**7),
        lambda o: L.MultiStepLR(o, [10, 900_000]),
    ],
    ids=["step", "cosine", "onecycle", "multistep"],
)
def test_to_torch_far_ahead_costs_milestones_not_steps(make):
    """10**6 JAX steps: to_torch puts torch's value at the target without 10**6 torch steps."""
    model = _model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    sched = make(opt)
    _run(model, opt, sched, 3, 1, 0, 0)
    params, tx, state = interop.from_torch(model, opt, sched)
    far = 10**6
    state = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            jnp.asarray(far, jnp.int32) if path[-1] == jax.tree_util.GetAttrKey("count") else x
        ),
        state,
    )
    reference = copy.deepcopy(sched)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference.step(far)  # torch's own value there: its closed form, or its lr
    if isinstance(sched, L.MultiStepLR):  # torch's recursive value: each milestone's factor
        expected = [(1e-2 * 0.1**1) * 0.1**1]
    else:
        expected = reference.get_last_lr()
    (lr,), _ = from_torch_scheduler(sched)
    interop.to_torch(params, state, model, opt, sched)
    assert sched.last_epoch == far and sched._step_count == reference._step_count + far - 4
    assert sched.get_last_lr() == expected
    assert opt.param_groups[0]["lr"] == pytest.approx(float(lr(far)), rel=1e-6)
