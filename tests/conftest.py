"""Test-wide settings."""

import jax
import torch

# float64/complex128 parity needs x64.
jax.config.update("jax_enable_x64", True)
# The reference runs on tiny tensors, where torch's intra-op threads only
# contend with XLA's for the machine's two cores.
torch.set_num_threads(1)
