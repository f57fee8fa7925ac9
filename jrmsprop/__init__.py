"""jrmsprop: PyTorch's RMSprop, number for number, in JAX."""

from jrmsprop.transform import RMSpropState, rmsprop, rmsprop_math

__all__ = ["RMSpropState", "rmsprop", "rmsprop_math"]
__version__ = "0.1.0"
