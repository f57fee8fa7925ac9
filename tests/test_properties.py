"""Hypothesis: random valid hyperparameters, shapes and dtypes; one step equals torch."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_reference import assert_matches_torch, random_array, to_torch

import jrmsprop

hyperparameters = st.fixed_dictionaries(
    {
        "lr": st.floats(0.0, 1.0),
        # Below ~0.1 a centered variance estimate, alpha * (1 - alpha) * g**2
        # after one step, is the difference of two nearly equal numbers and the
        # rounding of a fused multiply-add (torch) against a separate multiply
        # (XLA) decides it: both are right to float precision, not to each other.
        "alpha": st.floats(0.1, 1.0),
        "eps": st.floats(0.0, 1.0).filter(lambda e: e == 0.0 or e > 1e-12) | st.just(1e-8),
        "weight_decay": st.floats(0.0, 1.0),
        "momentum": st.floats(0.0, 0.99),
        "centered": st.booleans(),
        "maximize": st.booleans(),
    }
)
shapes = st.lists(st.lists(st.integers(1, 4), max_size=3).map(tuple), min_size=1, max_size=3)


@settings(max_examples=40, deadline=None)
@given(
    hyper=hyperparameters,
    shapes=shapes,
    dtype=st.sampled_from(["float32", "float64", "complex64", "complex128"]),
    warmup=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_step_equals_torch(hyper, shapes, dtype, warmup, seed):
    import jax.numpy as jnp
    import optax

    rng = np.random.default_rng(seed)
    init = [random_array(rng, s, dtype) for s in shapes]
    params = [jnp.asarray(x) for x in init]
    torch_params = [to_torch(x).requires_grad_(True) for x in init]
    torch_opt = torch.optim.RMSprop(torch_params, **hyper)
    opt = jrmsprop.rmsprop(**hyper)
    state = opt.init(params)
    # A few warm-up steps first, so the step under test sees non-zero state.
    for _ in range(warmup + 1):
        grads = [random_array(rng, s, dtype) for s in shapes]
        for tp, g in zip(torch_params, grads):
            tp.grad = to_torch(g)
        torch_opt.step()
        updates, state = opt.update([jnp.asarray(g) for g in grads], state, params)
        params = optax.apply_updates(params, updates)
    # eps = 0 with a zero second moment gives inf/nan on both sides, at the same places.
    assert_matches_torch(params, state, torch_params, torch_opt, equal_nan=True)
