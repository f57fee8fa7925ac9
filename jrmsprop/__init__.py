"""jrmsprop: PyTorch's RMSprop, number for number, in JAX."""

from jrmsprop.adapter import FunctionalRMSprop
from jrmsprop.interop import from_torch_state_dict, to_torch_state_dict
from jrmsprop.transform import RMSpropState, rmsprop, rmsprop_math

__all__ = [
    "FunctionalRMSprop",
    "RMSpropState",
    "from_torch_state_dict",
    "rmsprop",
    "rmsprop_math",
    "to_torch_state_dict",
]
__version__ = "0.1.0"
