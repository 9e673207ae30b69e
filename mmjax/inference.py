"""Batched, jitted embedding of images and texts with a two-tower model."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from mmjax.data.tokenizers import Tokenizer
from mmjax.data.transforms import normalize_images
from mmjax.models import TwoTower


class Encoder:
    """Embeds uint8 images `[N, H, W, 3]` and strings with fixed-size jitted batches.

    Inputs are padded to `batch_size` so one compiled program serves every call.
    Returns the projected, unnormalised embeddings `[N, E]` as float32 NumPy arrays.
    """

    def __init__(self, model: TwoTower, params, tokenizer: Tokenizer, image_mean: Sequence[float],
                 image_std: Sequence[float], batch_size: int = 256):
        self.params, self.tokenizer, self.batch_size = params, tokenizer, batch_size
        size = model.config.vision.image_size
        self.image_shape = (size, size, 3)
        self._images = jax.jit(lambda p, x: model.apply(
            {"params": p}, normalize_images(x, image_mean, image_std), method=TwoTower.encode_image))
        self._texts = jax.jit(lambda p, t: model.apply({"params": p}, t, method=TwoTower.encode_text))

    def _batched(self, fn, inputs: np.ndarray) -> np.ndarray:
        outputs = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, *chunk.shape[1:]), chunk.dtype)
            padded[:len(chunk)] = chunk
            outputs.append(np.asarray(fn(self.params, padded))[:len(chunk)])
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise ValueError(f"images must be uint8 [N, {', '.join(map(str, self.image_shape))}], "
                             f"got {list(images.shape)}")
        return self._batched(self._images, images.astype(np.uint8))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._batched(self._texts, self.tokenizer(list(texts)))
