"""Batched, jitted embedding of images and texts with a two-tower model (or FLAVA's contrastive embeddings),
sharded over devices."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
import tqdm
from jax.sharding import Mesh

from mmjax import interrupts
from mmjax.data.tokenizers import Tokenizer
from mmjax.data.transforms import normalize_images
from mmjax.models import Flava, TwoTower
from mmjax.parallel import batch_sharding, batch_size_multiple, make_mesh, replicated


def check_batch_size(batch_size: int) -> None:
    """A one-line ValueError unless `batch_size` is a positive int (a negative one embedded nothing)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


class Encoder:
    """Embeds uint8 images `[N, H, W, 3]` and strings in fixed-size jitted batches.

    Each batch is split over the `data × fsdp` devices of `mesh` (by default all of
    this process's devices, `jax.local_devices()`, so in a multi-process run every
    process embeds its own inputs with no cross-host communication); parameters are
    replicated. Inputs are padded to `batch_size`
    (rounded up to a multiple of the device count) so one compiled program serves
    every call. The compute dtype is the model's (`dtype="bfloat16"` in its
    options). Returns the projected, unnormalised embeddings `[N, E]` as float32
    NumPy arrays.
    """

    def __init__(self, model: TwoTower | Flava, params, tokenizer: Tokenizer, image_mean: Sequence[float],
                 image_std: Sequence[float], batch_size: int = 256, mesh: Mesh | None = None,
                 progress: bool = False):
        check_batch_size(batch_size)
        mesh = make_mesh(data=-1, devices=jax.local_devices()) if mesh is None else mesh
        multiple = batch_size_multiple(mesh)
        self.batch_size = -(-batch_size // multiple) * multiple
        self.tokenizer, self.progress = tokenizer, progress
        self._replicated = replicated(mesh)
        self.params = jax.device_put(params, self._replicated)
        self._input_sharding = batch_sharding(mesh)
        size = model.config.vision.image_size
        self.image_shape, self.embed_dim = (size, size, 3), model.config.embed_dim
        jit = lambda fn: jax.jit(fn, in_shardings=(replicated(mesh), self._input_sharding),
                                 out_shardings=self._input_sharding)
        self._images = jit(lambda p, x: model.apply(
            {"params": p}, normalize_images(x, image_mean, image_std), method="encode_image"))
        self._texts = jit(lambda p, t: model.apply({"params": p}, t, method="encode_text"))

    def set_params(self, params) -> None:
        """Embed with `params` from now on (same structure and shapes: nothing recompiles)."""
        self.params = jax.device_put(params, self._replicated)

    def _batched(self, fn, inputs: np.ndarray, unit: str) -> np.ndarray:
        outputs = []
        # a bar for a call of several batches; one batch per call (a benchmark's loop) shows none
        quiet = not self.progress or len(inputs) <= self.batch_size
        with tqdm.tqdm(total=len(inputs), unit=unit, disable=quiet) as bar:
            for start in range(0, len(inputs), self.batch_size):
                interrupts.check()  # a Ctrl-C Python dropped in a gc callback (see mmjax.interrupts)
                chunk = inputs[start:start + self.batch_size]
                padded = np.zeros((self.batch_size, *chunk.shape[1:]), chunk.dtype)
                padded[:len(chunk)] = chunk
                outputs.append(np.asarray(fn(self.params, jax.device_put(padded, self._input_sharding)))[:len(chunk)])
                bar.update(len(chunk))
        return np.concatenate(outputs) if outputs else np.zeros((0, self.embed_dim), np.float32)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.image_shape or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, {', '.join(map(str, self.image_shape))}], "
                             f"got {images.dtype} {list(images.shape)}")
        return self._batched(self._images, images, "images")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """`N` texts → `[N, embed_dim]`; one string is one text."""
        return self._batched(self._texts, self.tokenizer([texts] if isinstance(texts, str) else list(texts)), "texts")
