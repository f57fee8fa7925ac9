"""Train an equinox MLP with jrmsprop, and the same torch.nn network with torch.optim.RMSprop.

equinox's own training loop works unchanged: ``opt.init(eqx.filter(model, eqx.is_array))``,
gradients from ``eqx.filter_value_and_grad``, ``opt.update(grads, state, params)`` and
``eqx.apply_updates``, all under ``eqx.filter_jit``. The filtered params hold ``None`` for the
MLP's activation functions: not parameters, so their updates are ``None`` too, as in optax.

Run:  python examples/equinox_mlp.py [--steps 300]

Prints both losses now and then and, at the end, the largest difference between the two models'
parameters, with what it means.
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import torch

import jrmsprop

HYPER = {"lr": 1e-3, "momentum": 0.9, "centered": True, "weight_decay": 1e-4}


def mse(model: eqx.nn.MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def torch_copy(model: eqx.nn.MLP) -> torch.nn.Sequential:
    """The same network in torch. equinox's Linear.weight is (out, in), as torch's: no transpose."""
    layers: list[torch.nn.Module] = []
    for linear in model.layers:
        layer = torch.nn.Linear(linear.in_features, linear.out_features)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.array(linear.weight)))
            layer.bias.copy_(torch.from_numpy(np.array(linear.bias)))
        layers += [layer, torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def main(steps: int = 300) -> float:
    """Trains both for ``steps`` steps; returns the largest parameter difference."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2.0, 2.0, (256, 2)).astype(np.float32)
    y = (np.sin(x[:, :1]) * np.cos(x[:, 1:]) + 0.01 * rng.standard_normal((256, 1))).astype(
        np.float32
    )

    model = eqx.nn.MLP(2, 1, 32, 2, activation=jnp.tanh, key=jax.random.key(0))
    net = torch_copy(model)  # before training: the same starting weights

    opt = jrmsprop.rmsprop(**HYPER)
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def train_step(model, state, x, y):
        loss, grads = eqx.filter_value_and_grad(mse)(model, x, y)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    torch_opt = torch.optim.RMSprop(net.parameters(), **HYPER)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    jx, jy = jnp.asarray(x), jnp.asarray(y)
    for step in range(steps):
        model, state, loss = train_step(model, state, jx, jy)
        torch_opt.zero_grad()
        torch_loss = torch.mean((net(tx) - ty) ** 2)
        torch_loss.backward()
        torch_opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(
                f"step {step:4d}  jrmsprop loss {float(loss):.6f}  torch loss {torch_loss.item():.6f}"
            )

    # eqx.nn.MLP's array leaves come in torch's parameter order: weight, bias, layer by layer.
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_array))
    diff = max(
        float(np.max(np.abs(np.asarray(ours) - theirs.detach().numpy())))
        for ours, theirs in zip(leaves, net.parameters(), strict=True)
    )
    print(
        f"largest difference between jrmsprop's and torch's parameters after {steps} steps: {diff:.3e}"
    )
    if diff < 1e-4:
        print(
            "verdict: the same trajectory. In float32 the two differ only by rounding "
            "(XLA fuses a*b+c into one instruction where torch rounds twice)."
        )
    else:
        print("verdict: the two runs drifted apart by more than float32 rounding explains.")
    return diff


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    main(parser.parse_args().steps)
