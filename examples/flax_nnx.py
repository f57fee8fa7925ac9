"""Train a flax.nnx model with jrmsprop through ``nnx.Optimizer``.

jrmsprop.rmsprop is an ordinary optax transformation, so it drops into
``nnx.Optimizer`` like any other; the hyperparameters are torch's, so a
recipe's ``torch.optim.RMSprop(model.parameters(), lr=..., momentum=...)``
becomes ``nnx.Optimizer(model, jrmsprop.rmsprop(lr=..., momentum=...), wrt=nnx.Param)``.

Run: ``python examples/flax_nnx.py [--steps N]``
"""

import argparse

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm import tqdm

import jrmsprop


class MLP(nnx.Module):
    """A small regression network: Linear -> LayerNorm -> tanh -> Linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(2, 64, rngs=rngs)
        self.norm = nnx.LayerNorm(64, rngs=rngs)
        self.out = nnx.Linear(64, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.norm(self.hidden(x))))


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    """One RMSprop step on the mean squared error; returns the loss before it."""

    def loss_fn(model: MLP) -> jax.Array:
        return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def main(steps: int) -> None:
    key_x, key_noise = jax.random.split(jax.random.key(0))
    x = jax.random.uniform(key_x, (256, 2), jnp.float32, minval=-2.0, maxval=2.0)
    noise = jax.random.normal(key_noise, (256, 1), jnp.float32)
    y = jnp.sin(x[:, :1]) * jnp.cos(x[:, 1:]) + 0.01 * noise

    model = MLP(nnx.Rngs(0))
    # An RL-style recipe: momentum, centered, the large eps of IMPALA.
    tx = jrmsprop.rmsprop(lr=3e-3, momentum=0.9, centered=True, eps=1e-2)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    losses = []
    for t in (bar := tqdm(range(steps), desc="nnx + jrmsprop")):
        losses.append(float(train_step(model, optimizer, x, y)))
        if t % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    print(f"initial loss {losses[0]:.6f}")
    print(f"final loss {losses[-1]:.6f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    main(parser.parse_args().steps)
