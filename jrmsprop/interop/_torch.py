"""torch, imported lazily, and conversion between torch tensors and arrays.

Nothing else in the bridge imports torch: a user without it can import
``jrmsprop`` (and the bridge) and gets a clear ``ImportError`` only when a
torch object has to be read or made.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "jrmsprop's torch interop needs PyTorch, which is not installed: pip install torch"
        ) from error
    return torch


def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (or any array) as a numpy array, dtype kept."""
    if hasattr(value, "detach"):
        torch = _import_torch()
        # A conjugated or negated view (x.conj(), -x lazily) is materialized first.
        tensor = value.detach().cpu().resolve_conj().resolve_neg()
        if tensor.dtype == torch.bfloat16:
            # numpy has no bfloat16: move the bits, then view them as ml_dtypes'.
            return tensor.view(torch.int16).numpy().view(jnp.bfloat16)
        return tensor.numpy()
    return np.asarray(value)


def _to_tensor(array: Any):
    """A JAX array as a torch tensor of the same dtype (a copy)."""
    torch = _import_torch()
    array = np.array(array)
    if array.dtype == jnp.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _tensor_view(array: Any):
    """A torch tensor reading ``array``'s memory (a CPU JAX array: no copy), only to be read.

    For ``tensor.copy_(_tensor_view(array))``: one copy, straight into torch's tensor.
    """
    torch = _import_torch()
    array = np.asarray(array)
    bfloat16 = array.dtype == jnp.bfloat16
    with warnings.catch_warnings():
        # A JAX array's numpy view is read-only; torch only reads it here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(array.view(np.int16) if bfloat16 else array)
    return tensor.view(torch.bfloat16) if bfloat16 else tensor


def _dtype_name(value: Any) -> str:
    return str(value.dtype).removeprefix("torch.")


def _number(value: Any) -> Any:
    """A hyperparameter as a Python number (torch allows a tensor lr)."""
    if isinstance(value, (bool, int, float)):
        return value
    return _to_numpy(value).item()
