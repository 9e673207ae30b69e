"""Captions for images from a Flamingo trained to caption (`config.loss="captioning"`, configs/flamingo_tiny.py).

A caption is what the model writes after an image's token and the start of text, as it was trained
(`mmjax.models.flamingo.captioning_inputs`): `[<image>, <start>, prompt words…]` continued by
`mmjax.models.generation.generate` until the end-of-text token or the end of the context.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from mmjax.data.tokenizers import Tokenizer
from mmjax.data.transforms import normalize_images
from mmjax.inference import check_batch_size
from mmjax.models import Flamingo
from mmjax.models.beam_search import beam_search
from mmjax.models.flamingo import captioning_inputs
from mmjax.models.generation import generate
from mmjax.parallel import batch_sharding, batch_size_multiple, make_mesh, replicated


class Captioner:
    """Writes captions for uint8 images `[N, H, W, 3]` in batches of `batch_size`, each one `generate` (or
    `beam_search`) call split over the `data × fsdp` devices of `mesh` (by default this process's devices, as
    `mmjax.inference.Encoder`), the parameters replicated. A batch is filled up with repeats of its own images
    (which end when their originals end) to a multiple of the device count: of `batch_size` when the images take
    more than one batch (one compiled program serves every batch). The batches, and so the sampled captions
    (batch `i` draws with `seed + i`), are those of one device."""

    def __init__(self, model: Flamingo, params, tokenizer: Tokenizer, image_mean: Sequence[float],
                 image_std: Sequence[float], batch_size: int = 64, mesh: Mesh | None = None):
        check_batch_size(batch_size)
        mesh = make_mesh(data=-1, devices=jax.local_devices()) if mesh is None else mesh
        self._devices = batch_size_multiple(mesh)
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.params = jax.device_put(params, replicated(mesh))
        self._input_sharding = batch_sharding(mesh)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        size = model.config.vision.image_size
        self.image_shape = (size, size, 3)

    def prompt(self, text: str = "") -> tuple[np.ndarray, int]:
        """`(token ids [L], length)`: the image token, the start of text and `text`'s tokens, without its end. A
        ValueError when they leave no position to write into."""
        tokens = self.tokenizer([text])
        ids = captioning_inputs(tokens, self.model.config.media_token_id)
        context = ids.shape[1]
        ends = np.flatnonzero(tokens[0] == self.tokenizer.eot_id)
        length = int(ends[0]) + 1 if len(ends) else context  # the image token, then the text up to its end
        if length >= context:
            raise ValueError(f"the prompt {text!r} fills the model's {context}-token context; shorten it")
        return np.asarray(ids[0]), length

    def unknown_prompt_words(self, text: str) -> list[str]:
        """The words of `text` the tokenizer reads as its unknown token (none for a byte-level BPE)."""
        if self.tokenizer.unk_id is None:
            return []
        encoding = self.tokenizer.backend.encode(text)
        return [text[a:b] for i, (a, b) in zip(encoding.ids, encoding.offsets) if i == self.tokenizer.unk_id]

    def caption(self, images: np.ndarray, prompt: str = "", num_tokens: int | None = None, temperature: float = 0.0,
                top_k: int = 0, seed: int = 0, num_beams: int = 1, length_penalty: float = 1.0) -> list[str]:
        """One caption per image, `prompt`'s words first. `num_tokens`: the most tokens written after the prompt
        (None: up to the end of the context). `temperature` 0 is greedy; otherwise batch `i` draws with seed
        `seed + i`. `num_beams` > 1: the best of a beam search (`mmjax.models.beam_search`, hypotheses scored by
        their log-probability over their length ** `length_penalty`), with `temperature` 0. A caption cut short by
        `num_tokens` ends with its last written token."""
        if num_beams != 1 and temperature:
            raise ValueError(f"beam search (num_beams={num_beams}) chooses the likeliest captions: use temperature 0, "
                             f"not {temperature}")
        if num_beams == 1 and length_penalty != 1.0:
            raise ValueError(f"length_penalty={length_penalty} scores the hypotheses of a beam search: set num_beams "
                             f"above 1")
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.image_shape or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, {', '.join(map(str, self.image_shape))}], "
                             f"got {images.dtype} {list(images.shape)}")
        ids, length = self.prompt(prompt)
        num_tokens = len(ids) - length if num_tokens is None else num_tokens
        rows = -(-min(len(images), self.batch_size) // self._devices) * self._devices
        captions = []
        for i, start in enumerate(range(0, len(images), self.batch_size)):
            chunk = images[start:start + self.batch_size]
            filled = jax.device_put(np.resize(chunk, (rows, *chunk.shape[1:])), self._input_sharding)
            normalized = normalize_images(filled, self.image_mean, self.image_std)[:, None]  # one image each
            prompts, lengths = np.tile(ids, (rows, 1)), np.full(rows, length)
            if num_beams == 1:
                written = generate(self.model, self.params, normalized, prompts, lengths, num_tokens,
                                   eos_id=self.tokenizer.eot_id, pad_id=self.tokenizer.pad_id,
                                   temperature=temperature, top_k=top_k, seed=seed + i)
            else:
                written = beam_search(self.model, self.params, normalized, prompts, lengths, num_tokens,
                                      num_beams=num_beams, eos_id=self.tokenizer.eot_id, pad_id=self.tokenizer.pad_id,
                                      length_penalty=length_penalty)
            captions += [self.decode(row[:length + num_tokens]) for row in written[:len(chunk)]]  # not the padding
        return captions

    def decode(self, ids: np.ndarray) -> str:
        """The text of a written row `[L]`: its tokens after the image token up to the end of text, ids the
        tokenizer does not have (the image token) left out."""
        ids = np.asarray(ids)[1:]
        return self.tokenizer.decode(ids[ids < self.tokenizer.vocab_size])
