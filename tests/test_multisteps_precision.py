"""The docs' ecosystem section: optax.MultiSteps against torch's scaled-loss
accumulation in float64 is off by float32 rounding (about 1e-7) because optax
accumulates in float32 by default; accumulator_dtype=jnp.float64 gives float64
rounding (about 1e-16)."""

import inspect

import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch_reference import jitted_step

import jrmsprop

K, STEPS = 4, 100
SHAPES = {"w": (8, 4), "b": (8,)}


def _largest_difference_from_torch(**multisteps_kwargs):
    rng = np.random.default_rng(0)
    init = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
    grads = [{n: rng.standard_normal(s) for n, s in SHAPES.items()} for _ in range(STEPS)]
    opt = optax.MultiSteps(
        jrmsprop.rmsprop(lr=1e-2, momentum=0.9), every_k_schedule=K, **multisteps_kwargs
    )
    params = {n: jnp.asarray(x) for n, x in init.items()}
    state = opt.init(params)
    step = jitted_step(opt)
    torch_params = {n: torch.tensor(x, requires_grad=True) for n, x in init.items()}
    torch_opt = torch.optim.RMSprop(torch_params.values(), lr=1e-2, momentum=0.9)
    for p in torch_params.values():
        p.grad = torch.zeros_like(p)
    for t, g in enumerate(grads):
        params, state = step(params, state, {n: jnp.asarray(x) for n, x in g.items()})
        for n, p in torch_params.items():  # (loss / k).backward()
            p.grad.add_(torch.from_numpy(g[n]) / K)
        if (t + 1) % K == 0:
            torch_opt.step()
            torch_opt.zero_grad(set_to_none=False)
    assert all(params[n].dtype == jnp.float64 for n in SHAPES)
    return max(float(np.max(np.abs(params[n] - torch_params[n].detach().numpy()))) for n in SHAPES)


def test_multisteps_accumulates_in_float32_by_default():
    default = inspect.signature(optax.MultiSteps).parameters["accumulator_dtype"].default
    assert jnp.dtype(default) == jnp.float32


def test_float64_multisteps_is_off_by_float32_rounding_by_default(x64):
    assert 1e-8 < _largest_difference_from_torch() < 1e-6  # docs: 8.2e-8


def test_float64_accumulator_gives_float64_rounding(x64):
    assert _largest_difference_from_torch(accumulator_dtype=jnp.float64) < 1e-14  # docs: 8.9e-16
