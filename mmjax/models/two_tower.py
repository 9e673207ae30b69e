"""Two-tower image-text model (CLIP, SigLIP).

`model.apply(params, image=…, text=…)` returns `(image_emb, text_emb, aux)`:
L2-normalised `[B, E]` embeddings (None for a tower not given) and
`aux = {"logit_scale": …, "logit_bias": …}` (bias only for SigLIP). Either tower
can be skipped, so embedding only images is the same code path.
`encode_image` / `encode_text` return the projected, unnormalised embeddings; `image_tokens` / `text_tokens`
the towers' token sequences before pooling, for a fusion block (`mmjax.models.fusion`).
Temperature and bias are parameters of the model; the losses live in
`mmjax.losses`.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import axes, layers
from mmjax.models.text import TextConfig, TextTransformer
from mmjax.models.vit import VisionConfig, ViT


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
    """A full two-tower model.

    image_projection: project image features to `embed_dim` (no bias), or use
    them as they are (`False`, SigLIP, where width == embed_dim).
    text_projection_bias: SigLIP's text head has a bias, CLIP's projection not.
    logit_scale_init: `log(1/0.07)` for CLIP, `log(10)` for SigLIP.
    logit_bias_init: `None` for CLIP (no bias parameter), −10 for SigLIP.
    text_activation: the text tower's activation when it is not `options`' (None): a checkpoint whose towers
    differ (OpenCLIP's SigLIP 2, an exact-GELU timm image tower beside a tanh-GELU text tower).
    """

    vision: VisionConfig
    text: TextConfig
    embed_dim: int
    options: layers.BlockOptions = layers.BlockOptions()
    image_projection: bool = True
    text_projection_bias: bool = False
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None
    text_activation: str | None = None

    def __post_init__(self):
        if self.text_activation not in (None, *layers.ACTIVATIONS):
            raise ValueError(f"TwoTowerConfig: text_activation {self.text_activation!r} is not one of "
                             f"{sorted(layers.ACTIVATIONS)}")

    @property
    def text_options(self) -> layers.BlockOptions:
        """The `BlockOptions` of the text tower: `options`, with `text_activation` when it is set."""
        return dataclasses.replace(self.options, activation=self.text_activation or self.options.activation)


def l2_normalize(x: jax.Array) -> jax.Array:
    """`x [..., E]` divided by its L2 norm along the last axis, in float32 (a zero vector stays 0)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class TwoTower(nn.Module):
    config: TwoTowerConfig

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.options.dtype)
        self.image_encoder = ViT(cfg.vision, cfg.options)
        self.text_encoder = TextTransformer(cfg.text, cfg.text_options)
        if cfg.image_projection:
            self.image_proj = layers.dense(cfg.embed_dim, (axes.EMBED, axes.PROJ), use_bias=False, dtype=dtype)
        elif cfg.vision.width != cfg.embed_dim:
            raise ValueError(f"without an image projection the vision width ({cfg.vision.width}) "
                             f"must equal embed_dim ({cfg.embed_dim})")
        self.text_proj = layers.dense(cfg.embed_dim, (axes.EMBED, axes.PROJ), use_bias=cfg.text_projection_bias,
                                      dtype=dtype)
        scalar = lambda value: nn.with_logical_partitioning(nn.initializers.constant(value), ())
        self.logit_scale = self.param("logit_scale", scalar(cfg.logit_scale_init), ())
        if cfg.logit_bias_init is not None:
            self.logit_bias = self.param("logit_bias", scalar(cfg.logit_bias_init), ())

    def encode_image(self, images: jax.Array) -> jax.Array:
        """`images [B, H, W, 3]` (normalised floats) → unnormalised embeddings `[B, E]` (float32)."""
        features = self.image_encoder(images)
        if self.config.image_projection:
            features = self.image_proj(features)
        return features.astype(jnp.float32)

    def encode_text(self, token_ids: jax.Array) -> jax.Array:
        """`token_ids [B, L]` → unnormalised embeddings `[B, E]` (float32)."""
        return self.text_proj(self.text_encoder(token_ids)).astype(jnp.float32)

    def image_tokens(self, images: jax.Array) -> jax.Array:
        """`images [B, H, W, 3]` (normalised floats) → the ViT's final tokens `[B, T, vision width]`."""
        return self.image_encoder(images, return_tokens=True)

    def text_tokens(self, token_ids: jax.Array) -> jax.Array:
        """`token_ids [B, L]` → the text transformer's final tokens `[B, L, text width]`. A caption's valid length
        (the `text_lengths` of a fusion block) is its end-of-text position + 1: `argmax(token_ids, -1) + 1` for
        CLIP's tokenizer, whose end-of-text id is the largest."""
        return self.text_encoder(token_ids, return_tokens=True)

    def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None):
        image_emb = None if image is None else l2_normalize(self.encode_image(image))
        text_emb = None if text is None else l2_normalize(self.encode_text(text))
        aux = {"logit_scale": self.logit_scale}
        if self.config.logit_bias_init is not None:
            aux["logit_bias"] = self.logit_bias
        return image_emb, text_emb, aux
