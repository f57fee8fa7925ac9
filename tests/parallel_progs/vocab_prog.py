"""ZeRO-1 and FSDP on a transformer block with GPT-2's vocabulary; run in a subprocess.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=N python vocab_prog.py OUT.npz
       [--float32] [--steps S]

The embedding is 50257 x 64 (tied to the output layer): its height is odd, so
only its width splits over the devices. Trains STEPS steps on one device, then
with the state split (ZeRO-1) and with params and state split (FSDP), and
writes per-device bytes (each helper, and the old first-dimension-only rule
for comparison) and the largest relative difference from the one-device run to
OUT.npz, beside that of one device with its batch reversed (the same loss,
another reduction order). float64 by default, so a difference can only come from the order of
the batch reduction. Every step ends in jax.block_until_ready (see dp_prog.py).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import OPT_KWARGS, flat
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jrmsprop

VOCAB, WIDTH, CONTEXT, SEQUENCES = 50257, 64, 16, 8
STEPS = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 4


def make_params(dtype) -> dict:
    """One pre-norm transformer block (4 heads, MLP 4x) with a tied 50257-word embedding."""
    rng = np.random.default_rng(0)
    normal = lambda *shape, scale=0.02: jnp.asarray(rng.normal(size=shape) * scale, dtype)
    return {
        "embed": normal(VOCAB, WIDTH),
        "pos": normal(CONTEXT, WIDTH),
        "ln1": {"scale": jnp.ones(WIDTH, dtype), "bias": jnp.zeros(WIDTH, dtype)},
        "qkv": normal(WIDTH, 3 * WIDTH),
        "proj": normal(WIDTH, WIDTH),
        "ln2": {"scale": jnp.ones(WIDTH, dtype), "bias": jnp.zeros(WIDTH, dtype)},
        "mlp_in": normal(WIDTH, 4 * WIDTH),
        "mlp_in_bias": jnp.zeros(4 * WIDTH, dtype),
        "mlp_out": normal(4 * WIDTH, WIDTH),
        "mlp_out_bias": jnp.zeros(WIDTH, dtype),
    }


def layer_norm(x, p):
    x = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
    return x * p["scale"] + p["bias"]


def loss_fn(params: dict, tokens: jax.Array) -> jax.Array:
    """Next-token cross-entropy of a causal block over (sequences, CONTEXT + 1) tokens."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    x = params["embed"][inputs] + params["pos"]
    heads = lambda a: a.reshape(*a.shape[:2], 4, WIDTH // 4).transpose(0, 2, 1, 3)
    q, k, v = map(heads, jnp.split(layer_norm(x, params["ln1"]) @ params["qkv"], 3, axis=-1))
    scores = q @ k.transpose(0, 1, 3, 2) / jnp.sqrt(WIDTH // 4)
    scores = jnp.where(jnp.tril(jnp.ones((CONTEXT, CONTEXT), bool)), scores, -1e9)
    att = (jax.nn.softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    x = x + att @ params["proj"]
    h = jax.nn.gelu(layer_norm(x, params["ln2"]) @ params["mlp_in"] + params["mlp_in_bias"])
    x = x + h @ params["mlp_out"] + params["mlp_out_bias"]
    logits = x @ params["embed"].T
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def first_dimension(path, shape, axis, size):
    """The rule before issue 13: split dimension 0 only, for the comparison."""
    return P(axis) if shape and shape[0] % size == 0 else P()


def train(step, params, state, tokens):
    for _ in range(STEPS):
        params, state = step(params, state, tokens)
        jax.block_until_ready((params, state))  # bounded run-ahead: see dp_prog.py
    return params, state


def max_relative_diff(tree, reference) -> float:
    worst = 0.0
    for key, want in flat(reference).items():
        got = flat(tree)[key]
        worst = max(worst, float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300)))
    return worst


def main() -> None:
    path = sys.argv[1]
    dtype = jnp.float32 if "--float32" in sys.argv else jnp.float64
    if dtype == jnp.float64:
        jax.config.update("jax_enable_x64", True)
    opt = jrmsprop.rmsprop(**OPT_KWARGS)
    params = make_params(dtype)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (SEQUENCES, CONTEXT + 1)))

    def step(params, state, tokens):
        updates, state = opt.update(jax.grad(loss_fn)(params, tokens), state, params)
        return optax.apply_updates(params, updates), state

    ref = train(jax.jit(step), params, opt.init(params), tokens)
    # How far one device is from itself when only the order of the batch changes: the
    # size of difference a reduction order alone makes on this model after STEPS steps.
    reordered = train(jax.jit(step), params, opt.init(params), tokens[::-1])

    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    devices = mesh.devices.ravel().tolist()
    per_device = lambda tree: np.array([jrmsprop.bytes_per_device(tree)[d] for d in devices])
    split_tokens = jax.device_put(tokens, NamedSharding(mesh, P("data")))
    out = {"devices": np.array(len(devices))}
    out["maxrel/one_device_reversed_batch"] = np.array(max_relative_diff(reordered, ref))
    for mode in ("zero1", "fsdp"):
        placed = (jrmsprop.shard_params if mode == "fsdp" else jrmsprop.replicate)(params, mesh)
        state = jrmsprop.shard_state(opt.init(params), mesh, "data")
        layout = (
            jax.tree.map(lambda a: a.sharding, placed),
            jrmsprop.split_shardings(state, mesh, "data"),
        )
        result = train(jax.jit(step, out_shardings=layout), placed, state, split_tokens)
        out[f"maxrel/{mode}"] = np.array(max_relative_diff(result, ref))
        out[f"bytes/{mode}/params"] = per_device(result[0])
        out[f"bytes/{mode}/state"] = per_device(result[1])
        out[f"whole/{mode}/state"] = np.array(
            sum(jrmsprop.parallel.replicated_leaves(result[1], mesh, "data").values())
        )

    state = opt.init(params)
    out["bytes/replicated/params"] = per_device(jrmsprop.replicate(params, mesh))
    out["bytes/replicated/state"] = per_device(jrmsprop.replicate(state, mesh))
    old = {"rule": first_dimension, "warn_bytes": None}
    out["bytes/first_dimension/params"] = per_device(jrmsprop.shard_params(params, mesh, **old))
    out["bytes/first_dimension/state"] = per_device(jrmsprop.shard_state(state, mesh, **old))
    np.savez(path, **out)
    for key, value in out.items():
        print(f"{key}: {value.tolist()}", flush=True)


if __name__ == "__main__":
    main()
