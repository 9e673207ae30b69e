"""FLAVA: an image encoder, a text encoder and a multimodal encoder over both, with the heads of its
pre-training objectives.

- The image encoder is a ViT (class token first); the text encoder a bidirectional transformer whose first
  token (BERT's [CLS]) is its summary; padding after each caption's `text_lengths` is masked out.
- The multimodal encoder is an `EarlyFusion` block over both encoders' tokens: `[fusion token, image…,
  text…]` through a bidirectional transformer.
- Heads: image and text projections for the contrastive loss (with a learned temperature), an ITM head on the
  fusion token, masked-language heads on the text encoder (MLM) and on the multimodal text positions (MMM), and
  a masked-image head on the image encoder's patches that regresses their pixels (MAE-style; FLAVA itself
  predicts the tokens of a DALL-E codebook, which is not bundled).

`model.apply(params, images, token_ids, text_lengths, key, method="losses")` computes the whole objective
(`Flava.losses`; `text_lengths=None` reads them from the padding, `padded_lengths`); `__call__` returns every
head's output for one pass; `encode_image` / `encode_text` give the contrastive embeddings, as `TwoTower`'s do, so
training (`config.loss="flava"`), evaluation and search run FLAVA as they run CLIP. Shapes: B = batch, N = patches,
L = text length, V = vocabulary, E = `embed_dim`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.losses import (clip_loss, hard_negatives, itm_loss, mask_tokens, masked_lm_loss, masked_patch_loss,
                          matching_pairs, patchify, prediction_positions, random_patch_mask)
from mmjax.losses.contrastive import clip_scale
from mmjax.models import axes, layers
from mmjax.models.fusion import EarlyFusion, MatchingHead
from mmjax.models.text import TextConfig, TextTransformer
from mmjax.models.two_tower import l2_normalize
from mmjax.models.vit import VisionConfig, ViT


@dataclasses.dataclass(frozen=True)
class FlavaConfig:
    """vision: the image encoder (`pool="cls"`). text: the text encoder (bidirectional, `causal=False`).
    multimodal: the multimodal encoder's shape. embed_dim: the contrastive embedding. mask_token_id: the text
    [MASK] id. pad_id: the id that pads captions after their end (`padded_lengths`). mask_prob: the MLM share of
    text tokens, at most `max_predictions` per caption (BERT's `max_predictions_per_seq`; default
    `ceil(2 · mask_prob · context_length)`), the only positions the MLM and MMM heads run on; mim_ratio: the MIM
    share of patches."""

    vision: VisionConfig
    text: TextConfig
    multimodal: layers.TransformerSpec
    embed_dim: int
    mask_token_id: int
    pad_id: int = 0
    mask_prob: float = 0.15
    max_predictions: int | None = None
    mim_ratio: float = 0.4
    options: layers.BlockOptions = layers.BlockOptions()
    logit_scale_init: float = math.log(1 / 0.07)

    def __post_init__(self):
        if self.vision.pool != "cls":
            raise ValueError(f"FlavaConfig: the image encoder must pool its class token (vision.pool='cls'), got "
                             f"{self.vision.pool!r}")
        if self.text.causal:
            raise ValueError("FlavaConfig: the text encoder must be bidirectional (text.causal=False)")
        if not 0 <= self.mask_token_id < self.text.vocab_size:
            raise ValueError(f"FlavaConfig: mask_token_id {self.mask_token_id} is not in the vocabulary "
                             f"[0, {self.text.vocab_size})")
        if self.max_predictions is not None and not 1 <= self.max_predictions <= self.text.context_length:
            raise ValueError(f"FlavaConfig: max_predictions {self.max_predictions} must lie in [1, "
                             f"{self.text.context_length}] (the context length)")
        if self.pad_id == self.mask_token_id:
            raise ValueError(f"FlavaConfig: pad_id and mask_token_id are both {self.pad_id}")

    @property
    def predictions(self) -> int:
        """The masked positions per caption the MLM and MMM heads run on (`max_predictions` or its default)."""
        default = math.ceil(2 * self.mask_prob * self.text.context_length)
        return self.max_predictions or min(max(default, 1), self.text.context_length)


def padded_lengths(token_ids: jax.Array, pad_id: int) -> jax.Array:
    """`token_ids [B, L]` → each caption's length `[B]` int32: one past its last id that is not `pad_id` (at least
    1). Padding only follows a caption's end-of-text, so a pad id inside a caption (CLIP's BPE pads with 0, the
    id of "!") counts as text."""
    token_ids = jnp.asarray(token_ids)
    text = token_ids != pad_id
    last = token_ids.shape[1] - jnp.argmax(text[:, ::-1], axis=1)
    return jnp.where(text.any(axis=1), last, 1).astype(jnp.int32)


class MaskDraws(NamedTuple):
    """A step's random draws, from its key alone (`draw_masks`): the keys of the hard negatives, and the masked
    pass's ids `[B, L]`, their weights `[B, L]` (1 where a token was chosen) and the masked patches `[B, N]`."""
    text_key: jax.Array
    image_key: jax.Array
    masked_ids: jax.Array
    weights: jax.Array
    patch_mask: jax.Array

    def pairs(self, logits: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The 3B ITM pairs (`matching_pairs`) mined from the contrastive `logits [B, B]`."""
        return matching_pairs(hard_negatives(logits, self.text_key), hard_negatives(logits.T, self.image_key))

    def totals(self) -> dict[str, jax.Array]:
        """The masked losses' divisors over the whole batch: chosen tokens (`mlm`, MMM's too), masked patches
        (`mim`)."""
        return {"mlm": jnp.sum(self.weights), "mim": jnp.sum(self.patch_mask.astype(jnp.float32))}


def draw_masks(config: FlavaConfig, token_ids: jax.Array, text_lengths: jax.Array, key: jax.Array) -> MaskDraws:
    """The draws of `Flava.losses` for a batch `token_ids [B, L]` with `text_lengths [B]`: every row's are those
    of the whole batch, so micro-batches of it (rows taken from these) draw what the batch draws."""
    mining_key, text_mask_key, patch_mask_key = jax.random.split(key, 3)
    text_key, image_key = jax.random.split(mining_key)
    positions = jnp.arange(token_ids.shape[1])[None, :]
    maskable = (positions >= 1) & (positions < text_lengths[:, None] - 1)
    masked_ids, weights = mask_tokens(token_ids, text_mask_key, mask_id=config.mask_token_id,
                                      vocab_size=config.text.vocab_size, mask_prob=config.mask_prob,
                                      maskable=maskable, max_predictions=config.predictions)
    patch_mask = random_patch_mask(patch_mask_key, token_ids.shape[0], config.vision.num_patches, config.mim_ratio)
    return MaskDraws(text_key, image_key, masked_ids, weights, patch_mask)


class Flava(nn.Module):
    config: FlavaConfig

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.options.dtype)
        self.image_encoder = ViT(cfg.vision, cfg.options)
        self.text_encoder = TextTransformer(cfg.text, cfg.options)
        self.multimodal_encoder = EarlyFusion(cfg.multimodal, cfg.options)
        self.image_proj = layers.dense(cfg.embed_dim, (axes.EMBED, axes.PROJ), use_bias=False, dtype=dtype)
        self.text_proj = layers.dense(cfg.embed_dim, (axes.EMBED, axes.PROJ), use_bias=False, dtype=dtype)
        self.logit_scale = self.param("logit_scale", nn.with_logical_partitioning(
            nn.initializers.constant(cfg.logit_scale_init), ()), ())
        self.itm_head = MatchingHead()
        self.mlm_head = layers.dense(cfg.text.vocab_size, (axes.EMBED, axes.VOCAB))
        self.mmm_head = layers.dense(cfg.text.vocab_size, (axes.EMBED, axes.VOCAB))
        self.mim_head = layers.dense(cfg.vision.patch_size ** 2 * 3, (axes.EMBED, None))

    def encode(self, images, token_ids, text_lengths=None, patch_mask=None):
        """`images [B, H, W, 3]` (normalised), `token_ids [B, L]` → `(image_tokens [B, 1 + N, Dv],
        text_tokens [B, L, Dt])`; `patch_mask [B, N]` replaces the masked patches by the mask token."""
        return (self.image_encoder(images, return_tokens=True, patch_mask=patch_mask),
                self.text_encoder(token_ids, return_tokens=True, lengths=text_lengths))

    def embed(self, image_tokens, text_tokens):
        """L2-normalised contrastive embeddings `(image_emb [B, E], text_emb [B, E])` of the first tokens."""
        return (l2_normalize(self.image_proj(image_tokens[:, 0])), l2_normalize(self.text_proj(text_tokens[:, 0])))

    def encode_image(self, images) -> jax.Array:
        """`images [B, H, W, 3]` (normalised) → unnormalised contrastive embeddings `[B, E]` float32."""
        return self.image_proj(self.image_encoder(images, return_tokens=True)[:, 0]).astype(jnp.float32)

    def encode_text(self, token_ids) -> jax.Array:
        """`token_ids [B, L]` padded with `pad_id` → unnormalised contrastive embeddings `[B, E]` float32."""
        tokens = self.text_encoder(token_ids, return_tokens=True, lengths=padded_lengths(token_ids, self.config.pad_id))
        return self.text_proj(tokens[:, 0]).astype(jnp.float32)

    def fuse(self, image_tokens, text_tokens, text_lengths=None):
        """The multimodal encoder: `(pooled [B, Dm], tokens [B, 1 + (1 + N) + L, Dm])`."""
        return self.multimodal_encoder(image_tokens, text_tokens, text_lengths)

    def __call__(self, images, token_ids, text_lengths=None, patch_mask=None) -> dict[str, jax.Array]:
        """Every head on one pass: `image_emb`, `text_emb` `[B, E]`, `logit_scale`, `itm_logits [B, 2]`,
        `mlm_logits` and `mmm_logits` `[B, L, V]`, `mim_pixels [B, N, p·p·3]`. No `patch_mask`: nothing is
        masked (and `init` still creates the mask token)."""
        if patch_mask is None:
            patch_mask = jnp.zeros((images.shape[0], self.config.vision.num_patches), bool)
        image_tokens, text_tokens = self.encode(images, token_ids, text_lengths, patch_mask)
        image_emb, text_emb = self.embed(image_tokens, text_tokens)
        pooled, tokens = self.fuse(image_tokens, text_tokens, text_lengths)
        return {"image_emb": image_emb, "text_emb": text_emb, "logit_scale": self.logit_scale,
                "itm_logits": self.itm_head(pooled), "mlm_logits": self.mlm_head(text_tokens.astype(jnp.float32)),
                "mmm_logits": self.mmm_head(tokens[:, 1 + image_tokens.shape[1]:].astype(jnp.float32)),
                "mim_pixels": self.mim_head(image_tokens[:, 1:].astype(jnp.float32))}

    def contrastive(self, image_tokens, text_tokens) -> tuple[jax.Array, jax.Array]:
        """`(clip_loss of the embeddings, logits [B, B])`: the logits the hard negatives are mined from, without
        gradient."""
        image_emb, text_emb = self.embed(image_tokens, text_tokens)
        logits = jax.lax.stop_gradient(clip_scale(self.logit_scale) * image_emb @ text_emb.T)
        return clip_loss(image_emb, text_emb, self.logit_scale), logits

    def matching(self, image_tokens, text_tokens, text_lengths, pairs, total: int | None = None) -> jax.Array:
        """`itm_loss` of the pairs `(image_index, text_index, labels)` (`matching_pairs`) of the tokens
        `[B, …]`; `total`: the number of pairs it is the mean over, when these are a chunk of them."""
        image_index, text_index, labels = pairs
        pooled, _ = self.fuse(image_tokens[image_index], text_tokens[text_index], text_lengths[text_index])
        return itm_loss(self.itm_head(pooled), labels, total)

    def masked(self, images, token_ids, text_lengths, draws: MaskDraws,
               totals: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
        """`{"mlm", "mim", "mmm"}` of the masked pass (`draws`'s masked ids and patches); `totals`: the divisors of
        a larger batch these rows are a micro-batch of (`MaskDraws.totals`), else this batch's own."""
        cfg, totals = self.config, totals or {}
        image_tokens, text_tokens = self.encode(images, draws.masked_ids, text_lengths, draws.patch_mask)
        _, fused = self.fuse(image_tokens, text_tokens, text_lengths)
        predicted = prediction_positions(draws.weights, cfg.predictions)

        def at_positions(x):  # [B, L, ...] → [B, predictions, ...]
            return jnp.take_along_axis(x, predicted.reshape(*predicted.shape, *[1] * (x.ndim - 2)), axis=1)

        targets, weights = at_positions(token_ids), at_positions(draws.weights)
        text_logits = self.mlm_head(at_positions(text_tokens).astype(jnp.float32))
        fused_logits = self.mmm_head(at_positions(fused[:, 1 + image_tokens.shape[1]:]).astype(jnp.float32))
        pixels = self.mim_head(image_tokens[:, 1:].astype(jnp.float32))
        return {"mlm": masked_lm_loss(text_logits, targets, weights, totals.get("mlm")),
                "mim": masked_patch_loss(pixels, patchify(images, cfg.vision.patch_size), draws.patch_mask,
                                         total=totals.get("mim")),
                "mmm": masked_lm_loss(fused_logits, targets, weights, totals.get("mlm"))}

    def losses(self, images, token_ids, text_lengths, key) -> dict[str, jax.Array]:
        """FLAVA's objective on a batch of aligned pairs: `{"contrastive", "itm", "mlm", "mim", "mmm", "total"}`
        (total: the plain sum), float32 scalars. `text_lengths [B]`, or None: `padded_lengths(token_ids, pad_id)`.

        - Clean pass: the contrastive loss (`clip_loss`) of the embeddings, and ITM on the B pairs plus a
          hard negative caption per image and a hard negative image per caption (`matching`).
        - Masked pass (`draw_masks`): `mask_tokens` on the caption tokens between the first and the end-of-text
          (`text_lengths[b] − 1`, at most `config.predictions` of them), `random_patch_mask` on the patches. MLM
          from the text encoder, MMM from the multimodal encoder's text positions, both with their heads on the
          masked positions alone (`prediction_positions`: the logits are `[B, predictions, V]`, not
          `[B, L, V]`); MIM from the image encoder's masked patches (`masked_patch_loss` against
          `patchify(images)`).

        `mmjax.train.flava_accumulation` computes the same objective in micro-batches from these pieces."""
        token_ids = jnp.asarray(token_ids)
        text_lengths = (padded_lengths(token_ids, self.config.pad_id) if text_lengths is None
                        else jnp.asarray(text_lengths))
        draws = draw_masks(self.config, token_ids, text_lengths, key)
        image_tokens, text_tokens = self.encode(images, token_ids, text_lengths)
        contrastive, logits = self.contrastive(image_tokens, text_tokens)
        itm = self.matching(image_tokens, text_tokens, text_lengths, draws.pairs(logits))
        losses = {"contrastive": contrastive, "itm": itm, **self.masked(images, token_ids, text_lengths, draws)}
        return {**losses, "total": sum(losses.values())}
