"""jrmsprop: PyTorch's RMSprop, number for number, in JAX."""

from jrmsprop.adapter import FunctionalRMSprop
from jrmsprop.interop import from_torch_state_dict, to_torch_state_dict
from jrmsprop.parallel import (
    bytes_per_device,
    replicate,
    shard_params,
    shard_state,
    split_shardings,
)
from jrmsprop.transform import RMSpropState, rmsprop, rmsprop_math

__all__ = [
    "FunctionalRMSprop",
    "RMSpropState",
    "bytes_per_device",
    "from_torch_state_dict",
    "replicate",
    "rmsprop",
    "rmsprop_math",
    "shard_params",
    "shard_state",
    "split_shardings",
    "to_torch_state_dict",
]
__version__ = "0.1.0"
