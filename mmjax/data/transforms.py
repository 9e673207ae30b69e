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


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB. 16-bit greyscale (PIL modes `I;16…`, and `I` as older PIL opens 16-bit PNGs) is
    scaled to 8 bits (`round(v / 257)`); PIL's own `convert("RGB")`, which torchvision and OpenCLIP use, clips it
    at 255, so that a 16-bit photo comes out nearly all white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):
        pixels = np.asarray(image).astype(np.float32) / 257
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """uint8 `[size, size, 3]`: shorter side resized to `size` (bicubic), then the centre crop.

    Follows torchvision's `Resize(size)` (long side `int(size * long / short)`) and
    `CenterCrop(size)` (offset `round((side - size) / 2)`) on a PIL image.
    """
    image = to_rgb(image)
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
