"""Image transforms: host-side resize + crop (PIL), and normalisation inside jitted code."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def normalize_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 `[B, H, W, 3]` → float32 `(x / 255 − mean) / std`, per channel."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """uint8 `[size, size, 3]`: shorter side resized to `size` (bicubic), then the centre crop.

    Follows torchvision's `Resize(size)` (long side `int(size * long / short)`) and
    `CenterCrop(size)` (offset `round((side - size) / 2)`) on a PIL image.
    """
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left = int(round((new_width - size) / 2.0))
    top = int(round((new_height - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)
