"""Vision Transformer image encoder."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import axes, layers


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig(layers.TransformerSpec):
    """Shape of a ViT.

    pool: `"cls"` (a class token is prepended and read out), `"map"` (attention
    pooling, no class token) or `"mean"`. pre_norm: a LayerNorm before the blocks
    (OpenAI CLIP). patch_bias: bias on the patch projection (SigLIP).
    posemb: `"learned"` or `"sincos2d"`. `image_size` need not be a multiple of `patch_size`: as in the
    references (SigLIP So400m/14 at 384 px, 27 × 27 patches), pixels past the last whole patch are not read.
    """

    image_size: int
    patch_size: int
    pool: str = "cls"
    pre_norm: bool = True
    patch_bias: bool = False
    posemb: str = "learned"

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.patch_size <= self.image_size:
            raise ValueError(f"VisionConfig: patch_size {self.patch_size} must be in [1, image_size "
                             f"{self.image_size}]")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ViT(nn.Module):
    """`images [B, H, W, 3] (float, normalised) -> pooled features [B, width]`, or with `return_tokens` the
    token sequence before pooling, `[B, T, width]` (the class token first with `pool="cls"`; the input of a
    fusion block). `patch_mask` bool `[B, num_patches]` (masked image modelling, BEiT / FLAVA): the masked
    patches' embeddings are replaced by a learned `mask_token` (a parameter that exists once the model is
    initialised with a mask) before positions are added."""

    config: VisionConfig
    options: layers.BlockOptions

    @nn.compact
    def __call__(self, images, return_tokens: bool = False, patch_mask=None):
        cfg, opts = self.config, self.options
        dtype = jnp.dtype(opts.dtype)
        images = images if hasattr(images, "ndim") else jnp.asarray(images)
        expected = (cfg.image_size, cfg.image_size, 3)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"ViT expects images [B, {cfg.image_size}, {cfg.image_size}, 3], got {list(images.shape)}")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"ViT expects normalised float images, got {images.dtype} (normalise raw pixels with "
                             f"mmjax.data.transforms.normalize_images, or embed them with mmjax.inference.Encoder)")
        x = layers.PatchEmbed(cfg.patch_size, cfg.width, cfg.patch_bias, dtype, name="patch_embed")(images.astype(dtype))
        if patch_mask is not None:
            patch_mask = jnp.asarray(patch_mask)
            if patch_mask.shape != x.shape[:2]:
                raise ValueError(f"ViT expects patch_mask [B, {cfg.num_patches}] for {list(images.shape)} images, "
                                 f"got {list(patch_mask.shape)}")
            token = self.param("mask_token", nn.with_logical_partitioning(nn.initializers.normal(0.02), (axes.EMBED,)),
                               (cfg.width,))
            x = jnp.where(patch_mask[..., None], token.astype(x.dtype), x)
        position = layers.AddPositionEmbedding(cfg.posemb, cfg.width ** -0.5, name="pos_embed")
        if cfg.posemb == "sincos2d":  # the fixed 2-D table covers the patch grid; a class token gets none (big_vision)
            x = position(x)
        if cfg.pool == "cls":
            x = layers.ClassToken(name="cls")(x)
        if cfg.posemb != "sincos2d":  # a learned table has a row for the class token too (OpenAI CLIP)
            x = position(x)
        if cfg.pre_norm:
            x = layers.layer_norm(opts.norm_eps, dtype, "ln_pre")(x)
        x = layers.Transformer(cfg, opts, name="encoder")(x)
        x = layers.layer_norm(opts.norm_eps, dtype, "ln_post")(x)
        if return_tokens:
            return x
        if cfg.pool == "map":
            return layers.MapHead(cfg.num_heads, cfg.mlp_dim, opts.activation, opts.norm_eps, dtype, name="map_head")(x)
        return layers.pool_tokens(x, cfg.pool)
