"""Test-wide settings: float64/complex128 parity needs x64."""

import jax

jax.config.update("jax_enable_x64", True)
