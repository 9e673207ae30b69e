"""Image transforms that run inside the jitted step, on device."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def normalize_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 `[B, H, W, 3]` → float32 `(x / 255 − mean) / std`, per channel."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
