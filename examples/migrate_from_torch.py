"""Move a training run from PyTorch to JAX mid-way, without a bump in the curve.

A torch model is trained with ``torch.optim.RMSprop`` (two param groups: no
weight decay on biases) and a ``CosineAnnealingLR`` for a while and saved the
usual way (``torch.save`` of the model's, the optimizer's and the scheduler's
state dicts). The checkpoint is loaded with ``torch.load(path,
weights_only=True)`` (plain tensors, nothing else unpickled), and one call,
``jrmsprop.interop.from_torch``, gives the params by name, the optax
transformation (the groups, each lr continuing torch's schedule) and its state.
Training goes on in JAX and, for comparison, in torch from the same checkpoint:
both loss curves are printed, and they are the same curve.

Run: ``python examples/migrate_from_torch.py [--before N] [--after N]``
"""

import argparse
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from tqdm import tqdm

import jrmsprop


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def batches(steps: int, batch: int = 32):
    """The same mini-batches for torch and JAX: a fixed, seeded stream."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 1)).astype(np.float32)
    for _ in range(steps):
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        yield x, np.tanh(x @ w) + 0.1 * rng.standard_normal((batch, 1)).astype(np.float32)


def torch_train(model, optimizer, scheduler, data, desc: str) -> list[float]:
    losses = []
    for x, y in tqdm(data, desc=desc):
        optimizer.zero_grad()
        loss = torch.mean((model(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def jax_forward(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """The torch model as a function of its parameters, by torch's names and layout:
    ``Linear`` computes ``x @ weight.T + bias``."""
    h = jnp.tanh(x @ params["0.weight"].T + params["0.bias"])
    return h @ params["2.weight"].T + params["2.bias"]


def make_optimizer(model: torch.nn.Module):
    """RMSprop with weight decay on the weights only, and a cosine lr schedule."""
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    optimizer = torch.optim.RMSprop(
        [{"params": weights, "weight_decay": 1e-2}, {"params": biases}],
        lr=1e-3,
        momentum=0.9,
        centered=True,
    )
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)


def main(before: int, after: int) -> None:
    # 1. Train in torch and checkpoint, as a torch recipe does.
    model = make_model()
    optimizer, scheduler = make_optimizer(model)
    data = list(batches(before + after))
    torch_train(model, optimizer, scheduler, data[:before], "torch, before the move")
    path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        path,
    )

    # 2. Load it: plain tensors only, nothing unpickled.
    checkpoint = torch.load(path, weights_only=True)

    # 3. JAX carries on from the checkpoint: rebuild the torch objects (cheap, no
    #    training) and load it, then one call matches everything by name.
    model = make_model()
    model.load_state_dict(checkpoint["model"])
    optimizer, scheduler = make_optimizer(model)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    params, tx, opt_state = jrmsprop.interop.from_torch(model, optimizer, scheduler, horizon=after)
    print("params by name:", list(params))

    @jax.jit
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((jax_forward(p, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jax_losses = []
    for x, y in tqdm(data[before:], desc="jax, after the move"):
        params, opt_state, loss = train_step(params, opt_state, x, y)
        jax_losses.append(float(loss))

    # 4. The reference: torch carries on from the same file. (Loaded again:
    #    torch's load_state_dict adopts the loaded tensors and steps them in place.)
    checkpoint = torch.load(path, weights_only=True)
    model = make_model()
    model.load_state_dict(checkpoint["model"])
    optimizer, scheduler = make_optimizer(model)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    torch_losses = torch_train(model, optimizer, scheduler, data[before:], "torch, after the move")

    print(f"\n{'step':>6} {'torch loss':>12} {'jax loss':>12}")
    for t in range(0, after, max(1, after // 10)):
        print(f"{before + t:>6} {torch_losses[t]:>12.6f} {jax_losses[t]:>12.6f}")
    torch_final = {name: p.detach().numpy() for name, p in model.named_parameters()}
    # torch's own bar for two implementations of one optimizer (float32 defaults).
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1.3e-6, atol=1e-5)
    for name, theirs in torch_final.items():
        np.testing.assert_allclose(np.asarray(params[name]), theirs, rtol=1.3e-6, atol=1e-5)
    gap = max(abs(a - b) for a, b in zip(jax_losses, torch_losses))
    print(f"curves equal: max |torch - jax| loss difference {gap:.2e} over {after} steps")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=int, default=200, help="torch steps before the move")
    parser.add_argument("--after", type=int, default=300, help="steps after the move")
    args = parser.parse_args()
    main(args.before, args.after)
