"""foreach=True step time: 64 params with a random 10% None per step vs all present.

Run from the repository root: ``python benchmarks/none_pattern_step.py [elements per param]``.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jrmsprop import FunctionalRMSprop

N, STEPS = 64, 200
SIZE = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
rng = np.random.default_rng(0)
params = [jnp.asarray(rng.standard_normal(SIZE).astype(np.float32)) for _ in range(N)]
grads = [jnp.asarray(rng.standard_normal(SIZE).astype(np.float32)) for _ in range(N)]
opt = FunctionalRMSprop(params, foreach=True, momentum=0.9, centered=True)
masks = [rng.random(N) > 0.1 for _ in range(STEPS)]


def run(kind):
    times = []
    for k in range(STEPS):
        g = grads if kind == "all" else [x if m else None for x, m in zip(grads, masks[k])]
        start = time.perf_counter()
        opt.step(g)
        jax.block_until_ready(opt.param_group["params"])
        times.append(time.perf_counter() - start)
    return np.median(times)


run("all")
run("none10")  # warm up (compiles)
res = {"all": [], "none10": []}
for _ in range(5):  # interleaved
    for kind, times in res.items():
        times.append(run(kind))
a, b = np.median(res["all"]), np.median(res["none10"])
print(
    f"64 params x {SIZE} float32, centered+momentum, foreach=True: all present {a * 1e3:.3f} ms, "
    f"random 10% None {b * 1e3:.3f} ms, ratio {b / a:.2f}x"
)
