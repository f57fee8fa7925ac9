"""Train one small MLP with jrmsprop (JAX) and with torch.optim.RMSprop from the same weights and data.

Run:  python examples/quickstart.py [--steps 50] [--seed 0]

Two comparisons, each in float64 and in float32, each with its verdict printed
and asserted:

1. The model: the same MLP in JAX and in torch, each framework computing its
   own gradients. Both loss curves are printed; they agree within
   ``torch.testing.assert_close``. The parameters end a few 1e-5 apart in
   float32 (~1e-13 in float64): the two frameworks' forward and backward
   passes round differently (XLA's tanh and matmul are not torch's kernels) and
   training grows each difference, since the next gradient depends on the
   parameters. torch's own float32 run strays from its float64 run by the
   same order (1.4e-5 against 3.7e-5, with the defaults).
2. The optimizer alone: torch's gradients given to both optimizers, step after
   step. float64: the same numbers to ~1e-15 (asserted: at most 1e-14).
   float32: a few ulps (asserted: ``torch.testing.assert_close`` defaults,
   rtol 1.3e-6 and atol 1e-5, the bar torch holds its own for-loop and foreach
   RMSprop to).
"""

from __future__ import annotations

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import jrmsprop

# float64 parameters need JAX's 64-bit mode; float32 ones stay float32.
jax.config.update("jax_enable_x64", True)

HYPER = {
    "lr": 1e-2,
    "alpha": 0.9,
    "eps": 1e-8,
    "momentum": 0.9,
    "centered": True,
    "weight_decay": 1e-4,
}
FLOAT64_BOUND = 1e-14  # the optimizer alone in float64 (measured: ~1e-15)


def init_weights(rng: np.random.Generator, sizes: list[int]) -> list[np.ndarray]:
    """[w0, b0, w1, b1, ...] in float64, the order torch's parameters take."""
    weights = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        weights.append(rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in))
        weights.append(np.zeros(fan_out))
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


def train(dtype: str, steps: int, seed: int, torch_grads: bool) -> dict:
    """Trains the same MLP with jrmsprop and with torch in ``dtype``.

    Args:
      dtype: "float32" or "float64", for weights, data and optimizer state.
      steps: optimizer steps.
      seed: seed of the weights and the data.
      torch_grads: give jrmsprop torch's gradients (the optimizer alone)
        instead of JAX's gradients of the JAX model.

    Returns:
      ``params`` and ``torch_params``, the final parameters of each as numpy
      arrays; ``losses`` and ``torch_losses``, the loss before each step.
    """
    rng = np.random.default_rng(seed)
    weights = [w.astype(dtype) for w in init_weights(rng, [8, 32, 32, 1])]
    x = rng.standard_normal((256, 8)).astype(dtype)
    y = np.sin(x.sum(axis=1, keepdims=True)).astype(dtype)

    opt = jrmsprop.rmsprop(**HYPER)
    params = [jnp.array(w) for w in weights]
    state = opt.init(params)

    @jax.jit
    def train_step(params, state, x, y, grads):
        loss, own_grads = jax.value_and_grad(jax_loss)(params, x, y)
        grads = own_grads if grads is None else grads
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    # torch.tensor copies: the two models share no memory.
    torch_params = [torch.tensor(w, requires_grad=True) for w in weights]
    torch_opt = torch.optim.RMSprop(torch_params, **HYPER)
    tx, ty = torch.tensor(x), torch.tensor(y)

    jx, jy = jnp.array(x), jnp.array(y)
    losses, torch_losses = [], []
    for _ in range(steps):
        torch_opt.zero_grad()
        tloss = torch_loss(torch_params, tx, ty)
        tloss.backward()
        grads = [jnp.array(p.grad.numpy()) for p in torch_params] if torch_grads else None
        torch_opt.step()
        params, state, loss = train_step(params, state, jx, jy, grads)
        losses.append(float(loss))
        torch_losses.append(tloss.item())
    return {
        "params": [np.array(p) for p in params],
        "torch_params": [p.detach().numpy() for p in torch_params],
        "losses": np.array(losses, dtype),
        "torch_losses": np.array(torch_losses, dtype),
    }


def largest_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """The largest absolute elementwise difference between two parameter lists."""
    return max(float(np.max(np.abs(u.astype(np.float64) - v))) for u, v in zip(a, b))


def main(steps: int = 50, seed: int = 0) -> dict[str, float]:
    """Runs both comparisons in float64 and float32; prints and asserts the verdicts.

    Args:
      steps: optimizer steps per run.
      seed: seed of the weights and the data.

    Returns:
      The largest parameter difference, jrmsprop - torch, of each run:
      ``model_float64``, ``model_float32`` (each framework's own gradients),
      ``optimizer_float64``, ``optimizer_float32`` (torch's gradients for
      both), and ``torch_float32_error``: torch's float32 model run against its
      float64 run.
    """
    runs = {
        (kind, dtype): train(dtype, steps, seed, torch_grads=kind == "optimizer")
        for kind in ("model", "optimizer")
        for dtype in ("float64", "float32")
    }
    figures = {
        f"{kind}_{dtype}": largest_difference(run["params"], run["torch_params"])
        for (kind, dtype), run in runs.items()
    }
    figures["torch_float32_error"] = largest_difference(
        runs["model", "float32"]["torch_params"], runs["model", "float64"]["torch_params"]
    )
    model32 = runs["model", "float32"]

    print(f"1. The model, each framework with its own gradients ({steps} steps, float32):")
    for t in sorted({*range(0, steps, 10), steps - 1}):
        print(
            f"   step {t:3d}  jrmsprop loss {model32['losses'][t]:.6f}"
            f"  torch loss {model32['torch_losses'][t]:.6f}"
        )
    print(f"   largest parameter difference, float64: {figures['model_float64']:.3e}")
    print(f"   largest parameter difference, float32: {figures['model_float32']:.3e}")
    print(
        "   verdict: rounding, grown by training. XLA's forward and backward passes round\n"
        "   differently from torch's and the next gradient depends on the parameters; torch's\n"
        f"   own float32 run ends {figures['torch_float32_error']:.3e} from its float64 run."
        " Loss curves equal within\n   torch.testing.assert_close (asserted)."
    )
    print(f"2. The optimizer alone, torch's gradients given to both ({steps} steps):")
    print(f"   largest parameter difference, float64: {figures['optimizer_float64']:.3e}")
    print(
        "   verdict: the same numbers, to float64 rounding "
        f"(asserted: at most {FLOAT64_BOUND:.0e})."
    )
    print(f"   largest parameter difference, float32: {figures['optimizer_float32']:.3e}")
    print(
        "   verdict: float32 rounding, a few ulps (asserted: torch.testing.assert_close,\n"
        "   rtol 1.3e-6 and atol 1e-5, torch's bar for its own for-loop and foreach RMSprop)."
    )

    for run in runs.values():
        torch.testing.assert_close(run["losses"], run["torch_losses"])
    assert figures["optimizer_float64"] <= FLOAT64_BOUND, figures
    for ours, theirs in zip(*(runs["optimizer", "float32"][k] for k in ("params", "torch_params"))):
        torch.testing.assert_close(ours, theirs)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.seed)
