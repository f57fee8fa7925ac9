"""jrmsprop.rmsprop against the real torch.optim.RMSprop (SPEC section 5)."""

import numpy as np
import optax
import pytest
from torch_reference import DTYPES, TORCH_GRID, run_side_by_side


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "hyper", TORCH_GRID, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()) or "default"
)
def test_torch_grid_100_steps_with_none_grads(hyper, dtype, foreach, x64_if_wide):
    run_side_by_side(hyper, dtype, steps=100, foreach=foreach, seed=len(str(hyper)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_lr_schedule_with_momentum(dtype, x64_if_wide):
    schedule = optax.cosine_decay_schedule(0.05, decay_steps=100, alpha=0.1)
    run_side_by_side(
        {"momentum": 0.9, "centered": True},
        dtype,
        steps=100,
        lr_schedule=schedule,
    )


def test_lr_schedule_is_called_with_updates_applied_before():
    seen = []

    def schedule(count):
        seen.append(count)
        return 0.01

    import jax.numpy as jnp

    import jrmsprop

    opt = jrmsprop.rmsprop(lr=schedule)
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    for _ in range(3):
        _, state = opt.update({"w": jnp.ones(2)}, state, params)
    assert [int(c) for c in seen] == [0, 1, 2]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize(
    "hyper",
    [{}, {"weight_decay": 0.1, "centered": True, "momentum": 0.1}, {"momentum": 0.9, "eps": 0.01}],
    ids=["default", "centered-wd-momentum", "momentum-eps"],
)
def test_half_precision_close_to_torch(hyper, dtype):
    # Both compute in float32 and store the half type, but torch rounds after
    # every in-place op (square_avg after mul_ and again after addcmul_, avg
    # before the division) and XLA once per step, so the two drift by a few
    # ulps a step; momentum sums that drift. bfloat16 keeps 8 significant bits
    # (ulp 2**-7 at 1), float16 11 (2**-10).
    tol = {"bfloat16": {"rtol": 5e-2, "atol": 5e-2}, "float16": {"rtol": 1e-2, "atol": 1e-2}}[dtype]
    run_side_by_side(hyper, dtype, steps=30, **tol)


def test_eps_is_outside_the_sqrt_where_optax_puts_it_inside():
    # A guard that the parity above is not vacuous: optax's default is measurably different.
    import jax.numpy as jnp

    import jrmsprop

    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([1e-4, -2e-3, 5e-5])}
    ours, _ = jrmsprop.rmsprop(lr=0.1, eps=1e-2).update(
        grads, jrmsprop.rmsprop().init(params), params
    )
    theirs, _ = optax.rmsprop(0.1, decay=0.99, eps=1e-2).update(
        grads, optax.rmsprop(0.1).init(params), params
    )
    assert not np.allclose(ours["w"], theirs["w"], rtol=1e-3)
