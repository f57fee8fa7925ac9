"""Runs the real ``torch.optim.RMSprop`` beside ``jrmsprop.rmsprop`` on the same gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import jrmsprop

# torch's own RMSprop test grid (test/optim/test_optim.py, optim_inputs_func_rmsprop)
# plus the extras of SPEC section 5. The lr schedule case is in SCHEDULE_CASE.
TORCH_GRID: list[dict[str, Any]] = [
    {},
    {"lr": 1e-3},
    {"weight_decay": 0.1},
    {"maximize": True},
    {"weight_decay": 0.1, "centered": True},
    {"maximize": True, "weight_decay": 0.1},
    {"weight_decay": 0.1, "centered": True, "momentum": 0.1},
    {"weight_decay": 0.1, "centered": True, "momentum": 0.1, "maximize": True},
    {"momentum": 0.9},
    {"eps": 0.01},
    {"alpha": 0.9},
]

DTYPES = ["float32", "float64", "complex64", "complex128"]

SHAPES = {"layer": {"w": (4, 3), "b": (3,)}, "head": [(2, 5), ()]}


def random_array(rng: np.random.Generator, shape: tuple, dtype: str) -> np.ndarray:
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return np.asarray(x, dtype=dtype)


def to_torch(x: Any) -> torch.Tensor:
    x = np.asarray(x)
    if x.dtype.name == "bfloat16":
        return torch.tensor(x.astype(np.float32)).to(torch.bfloat16)
    return torch.tensor(x)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.detach().float().numpy()
    return t.detach().numpy()


def as_comparable(x: Any) -> torch.Tensor:
    """A JAX array as a torch tensor of the same dtype, for ``assert_close``."""
    return to_torch(np.asarray(x))


def assert_matches_torch(
    params: Any,
    state: jrmsprop.RMSpropState,
    torch_params: list[torch.Tensor],
    torch_opt: torch.optim.Optimizer,
    **tol: Any,
) -> None:
    """Params and every state buffer equal torch's (``assert_close`` defaults unless ``tol``)."""
    leaves = jax.tree.leaves(params)
    steps = np.asarray(state.step)
    sq = jax.tree.leaves(state.square_avg)
    bufs = jax.tree.leaves(state.momentum_buffer) if state.momentum_buffer is not None else None
    gavg = jax.tree.leaves(state.grad_avg) if state.grad_avg is not None else None
    for i, (leaf, tp) in enumerate(zip(leaves, torch_params, strict=True)):
        torch.testing.assert_close(
            as_comparable(leaf), tp.detach(), msg=lambda m, i=i: f"param {i}: {m}", **tol
        )
        tstate = torch_opt.state.get(tp, {})
        if not tstate:  # torch creates state lazily at the first gradient
            assert int(steps[i]) == 0, f"param {i}: torch never stepped it, jrmsprop did"
            continue
        assert int(steps[i]) == int(tstate["step"]), f"param {i}: step"
        torch.testing.assert_close(
            as_comparable(sq[i]),
            tstate["square_avg"],
            msg=lambda m, i=i: f"square_avg {i}: {m}",
            **tol,
        )
        if "momentum_buffer" in tstate:
            torch.testing.assert_close(
                as_comparable(bufs[i]),
                tstate["momentum_buffer"],
                msg=lambda m, i=i: f"momentum_buffer {i}: {m}",
                **tol,
            )
        if "grad_avg" in tstate:
            torch.testing.assert_close(
                as_comparable(gavg[i]),
                tstate["grad_avg"],
                msg=lambda m, i=i: f"grad_avg {i}: {m}",
                **tol,
            )
    if torch_opt.state:
        first = next(iter(torch_opt.state.values()))
        assert (bufs is not None) == ("momentum_buffer" in first), "momentum_buffer presence"
        assert (gavg is not None) == ("grad_avg" in first), "grad_avg presence"


def run_side_by_side(
    hyper: dict[str, Any],
    dtype: str,
    *,
    steps: int = 100,
    foreach: bool = False,
    seed: int = 0,
    none_prob: float = 0.2,
    shapes: Any = SHAPES,
    lr_schedule: Callable[[Any], Any] | None = None,
    jit: bool = True,
    **tol: Any,
) -> None:
    """Steps jrmsprop and torch on identical random gradients; compares every 25 steps and at the end.

    Gradients of a leaf are ``None`` with probability ``none_prob`` (torch: ``p.grad = None``).
    With ``lr_schedule`` (an optax schedule), jrmsprop gets it as its lr and
    torch's ``param_groups[0]["lr"]`` is set to ``lr_schedule(k)`` before step ``k``.
    """
    rng = np.random.default_rng(seed)
    is_shape = lambda s: isinstance(s, tuple)
    init = jax.tree.map(lambda s: random_array(rng, s, dtype), shapes, is_leaf=is_shape)
    params = jax.tree.map(jnp.asarray, init)
    torch_params = [to_torch(x).requires_grad_(True) for x in jax.tree.leaves(init)]
    torch_kwargs = dict(hyper)
    if lr_schedule is not None:
        torch_kwargs["lr"] = float(lr_schedule(0))
    torch_opt = torch.optim.RMSprop(torch_params, foreach=foreach, **torch_kwargs)
    opt = jrmsprop.rmsprop(**{**hyper, **({"lr": lr_schedule} if lr_schedule else {})})
    state = opt.init(params)
    update = jax.jit(opt.update) if jit else opt.update
    treedef = jax.tree.structure(params)
    n = treedef.num_leaves
    # A few None patterns, so each compiles once: all present, and one or two leaves missing.
    patterns = [np.ones(n, bool)] + [rng.random(n) > 0.5 for _ in range(2)]
    for k in range(steps):
        present = patterns[0] if rng.random() > none_prob else patterns[1 + rng.integers(2)]
        grads_np = [
            random_array(rng, np.shape(leaf), dtype) if keep else None
            for leaf, keep in zip(jax.tree.leaves(init), present)
        ]
        for tp, g in zip(torch_params, grads_np):
            tp.grad = None if g is None else to_torch(g)
        if lr_schedule is not None:
            torch_opt.param_groups[0]["lr"] = float(lr_schedule(k))
        torch_opt.step()
        grads = jax.tree.unflatten(
            treedef, [None if g is None else jnp.asarray(g) for g in grads_np]
        )
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        if (k + 1) % 25 == 0 or k + 1 == steps:
            assert_matches_torch(params, state, torch_params, torch_opt, **tol)


def jitted_step(opt: optax.GradientTransformation) -> Callable:
    """``(params, state, grads) -> (params, state)``: one jitted optax step with ``opt``."""

    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step
