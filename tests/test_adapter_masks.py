"""foreach=True: the None pattern is a runtime mask, so a unit compiles once whatever it is."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_counter import CompileCounter

from jrmsprop import FunctionalRMSprop, adapter

N = 70  # with foreach=True: float32 units of 64 and 6 leaves, and one float64 unit


def _specs(rng):
    return [((int(rng.integers(1, 20)),), np.float32 if k % 7 else np.float64) for k in range(N)]


@pytest.mark.parametrize(
    "config", [{}, {"centered": True, "momentum": 0.9, "weight_decay": 0.1}], ids=["plain", "cmw"]
)
def test_random_none_patterns_compile_nothing_after_the_first_step(config, x64):
    rng = np.random.default_rng(5)
    specs = _specs(rng)
    init = [rng.standard_normal(s).astype(d) for s, d in specs]
    loop = FunctionalRMSprop([jnp.asarray(x) for x in init], **config)
    fused = FunctionalRMSprop([jnp.asarray(x) for x in init], foreach=True, **config)
    compiles = []
    for k in range(30):
        mask = rng.random(N) > 0.1 if k else np.ones(N, bool)
        grads = [
            jnp.asarray(rng.standard_normal(s).astype(d)) if m else None
            for (s, d), m in zip(specs, mask)
        ]
        before = [np.array(p) for p in fused.param_group["params"]]
        before_state = {i: {k: np.array(v) for k, v in e.items()} for i, e in fused.state.items()}
        with CompileCounter() as counter:
            fused.step(grads)
            jax.block_until_ready(fused.param_group["params"])
        compiles.append(counter.count)
        loop.step(grads)
        after_state = fused.state
        for i in np.flatnonzero(~mask):  # skipped: param and state bit for bit, step unchanged
            np.testing.assert_array_equal(np.array(fused.param_group["params"][i]), before[i])
            if i in before_state:
                for key, value in before_state[i].items():
                    np.testing.assert_array_equal(np.array(after_state[i][key]), value)
            else:
                assert i not in after_state
    assert compiles[0] >= 1  # the counter sees compiles
    assert compiles[1:] == [0] * 29, compiles
    # the same numbers as foreach=False (steps equal; values up to rounding, see test_adapter)
    for i, entry in loop.state.items():
        assert int(entry["step"]) == int(fused.state[i]["step"])
    for a, b in zip(loop.param_group["params"], fused.param_group["params"]):
        a, b = np.array(a), np.array(b)
        assert np.abs(a - b).max() <= 8 * np.finfo(a.dtype).eps * max(np.abs(a).max(), 1e-30)


def test_the_pattern_cache_is_bounded():
    rng = np.random.default_rng(6)
    opt = FunctionalRMSprop([jnp.ones(3, jnp.float32) for _ in range(12)], foreach=True)
    for _ in range(3 * adapter._TODO_CACHE):
        mask = rng.random(12) > 0.5
        mask[0] = True
        opt.step([jnp.ones(3, jnp.float32) if m else None for m in mask])
    assert len(opt._todo) <= adapter._TODO_CACHE
