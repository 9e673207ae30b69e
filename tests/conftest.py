"""Test set-up: 8 fake CPU devices so mesh code runs without accelerators.

The flag must be set before JAX creates its backend, so it lives here, at
import time of the test session.
"""
import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")
