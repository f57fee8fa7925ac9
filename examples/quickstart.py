"""Train one small MLP with jrmsprop (JAX) and with torch.optim.RMSprop from the same weights and data.

Run:  python examples/quickstart.py [--steps 50]

Prints both losses every step and, at the end, the largest difference between
the two models' parameters.
"""

from __future__ import annotations

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from tqdm import tqdm

import jrmsprop

HYPER = {
    "lr": 1e-2,
    "alpha": 0.9,
    "eps": 1e-8,
    "momentum": 0.9,
    "centered": True,
    "weight_decay": 1e-4,
}


def init_weights(rng: np.random.Generator, sizes: list[int]) -> list[np.ndarray]:
    """[w0, b0, w1, b1, ...] in float32, the order torch's parameters take."""
    weights = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        weights.append(
            (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        )
        weights.append(np.zeros(fan_out, np.float32))
    return weights


def jax_loss(params: list[jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    h = x
    for i in range(0, len(params) - 2, 2):
        h = jnp.tanh(h @ params[i] + params[i + 1])
    return jnp.mean((h @ params[-2] + params[-1] - y) ** 2)


def torch_loss(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = x
    for i in range(0, len(params) - 2, 2):
        h = torch.tanh(h @ params[i] + params[i + 1])
    return torch.mean((h @ params[-2] + params[-1] - y) ** 2)


def main(steps: int = 50, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    weights = init_weights(rng, [8, 32, 32, 1])
    x = rng.standard_normal((256, 8)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)

    opt = jrmsprop.rmsprop(**HYPER)
    params = [jnp.asarray(w) for w in weights]
    state = opt.init(params)

    @jax.jit
    def train_step(params, state, x, y):
        loss, grads = jax.value_and_grad(jax_loss)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    torch_params = [torch.tensor(w, requires_grad=True) for w in weights]
    torch_opt = torch.optim.RMSprop(torch_params, **HYPER)
    tx, ty = torch.tensor(x), torch.tensor(y)

    jx, jy = jnp.asarray(x), jnp.asarray(y)
    for step in tqdm(range(steps), desc="training", unit="step"):
        params, state, loss = train_step(params, state, jx, jy)
        torch_opt.zero_grad()
        tloss = torch_loss(torch_params, tx, ty)
        tloss.backward()
        torch_opt.step()
        tqdm.write(
            f"step {step:3d}  jrmsprop loss {float(loss):.6f}  torch loss {tloss.item():.6f}"
        )

    diff = max(
        float(np.max(np.abs(np.asarray(p) - tp.detach().numpy())))
        for p, tp in zip(params, torch_params)
    )
    print(f"largest parameter difference after {steps} steps: {diff:.3e}")
    return diff


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.seed)
