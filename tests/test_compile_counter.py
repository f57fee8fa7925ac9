"""tests/compile_counter.py counts compilations, so a zero from it means something."""

import jax
import numpy as np
from compile_counter import CompileCounter


def test_counts_each_new_compilation_and_no_cache_hit():
    f = jax.jit(lambda x: x * 2 + 1)
    three, four = jax.device_put(np.ones(3)), jax.device_put(np.ones(4))
    with CompileCounter() as first:
        f(three)
    with CompileCounter() as again:
        f(three)  # cached
    with CompileCounter() as other_shape:
        f(four)
    assert (first.count, again.count, other_shape.count) == (1, 0, 1)


def test_nested_counters_both_count():
    x = jax.device_put(np.ones(5))
    with CompileCounter() as outer:
        with CompileCounter() as inner:
            jax.jit(lambda x: x - 3)(x)
        jax.jit(lambda x: x + 3)(x)
    assert (outer.count, inner.count) == (2, 1)
