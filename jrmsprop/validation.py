"""Checks and torch's error wording, shared by the transformation, the adapter and interop.

Everything here runs on the host before any computation starts: a call that
is refused has changed nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# torch.optim.RMSprop's messages for a negative (or NaN) hyperparameter, word for word.
HYPERPARAM_ERRORS = {
    "lr": "Invalid learning rate: {}",
    "eps": "Invalid epsilon value: {}",
    "momentum": "Invalid momentum value: {}",
    "weight_decay": "Invalid weight_decay value: {}",
    "alpha": "Invalid alpha value: {}",
}
HYPER_NAMES = tuple(HYPERPARAM_ERRORS)

SUPPORTED_DTYPES = "float16, bfloat16, float32, float64, complex64 or complex128"


def concrete_number(x: Any) -> float | None:
    """The real value of a number or array, or ``None`` when it is traced."""
    try:
        return float(jnp.real(jnp.asarray(x)))
    except jax.errors.ConcretizationTypeError:
        return None


def check_hyperparams(**hyperparams: Any) -> None:
    """Raises torch's ``ValueError`` for a negative (or NaN) hyperparameter.

    Values that are traced (inside ``jit``/``grad``) or schedules are skipped:
    they cannot be read here.
    """
    for name, message in HYPERPARAM_ERRORS.items():
        value = hyperparams.get(name)
        if value is None or callable(value):
            continue
        number = concrete_number(value)
        if number is not None and not 0.0 <= number:
            raise ValueError(message.format(number))


def path_str(path) -> str:
    """A pytree key path as the user writes it (``['w'][0]``), ``<root>`` for the root."""
    return jax.tree_util.keystr(path) or "<root>"


def describe(x: Any) -> str:
    """``float32[3, 2]`` for an array, the type name otherwise."""
    if x is None:
        return "None"
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{jnp.dtype(x.dtype).name}{list(x.shape)}"
    return type(x).__name__


def is_optimizable(dtype: Any) -> bool:
    return dtype is not None and (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating)
    )


def check_leaves(tree: Any, what: str) -> None:
    """``TypeError`` naming the path of a leaf that is not a float/complex array."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not is_optimizable(getattr(leaf, "dtype", None)):
            raise TypeError(
                f"rmsprop: {what} leaf {path_str(path)} is {describe(leaf)}; "
                f"RMSprop steps only {SUPPORTED_DTYPES} arrays "
                "(integer and boolean parameters cannot be optimized, as in torch)"
            )


def check_pair(path, leaf, ref, what: str, ref_what: str) -> None:
    """``leaf`` (``None`` allowed) has ``ref``'s shape and dtype; errors name the path and both."""
    if leaf is None:
        return
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
        raise TypeError(
            f"rmsprop: {what} leaf {path_str(path)} is a {type(leaf).__name__}, "
            f"not an array ({ref_what} there is {describe(ref)})"
        )
    if tuple(leaf.shape) != tuple(ref.shape):
        raise ValueError(
            f"rmsprop: shape mismatch at {path_str(path)}: {what} has shape "
            f"{tuple(leaf.shape)}, {ref_what} has shape {tuple(ref.shape)}"
        )
    if jnp.dtype(leaf.dtype) != jnp.dtype(ref.dtype):
        raise TypeError(
            f"rmsprop: dtype mismatch at {path_str(path)}: {what} is "
            f"{jnp.dtype(leaf.dtype).name}, {ref_what} is {jnp.dtype(ref.dtype).name}"
        )
