"""Flamingo: a language model that reads images through a Perceiver resampler and gated cross-attention.

`Flamingo(config).apply(params, images, token_ids)` → next-token logits `[B, L, V]`:

1. The ViT encodes each of a sample's M images to tokens `[T, Dv]`.
2. A `PerceiverResampler` turns each image's tokens into `num_latents` (R) latents: learned queries that attend
   to the image tokens and to themselves, `depth` times.
3. A causal language model runs over the text, with a `GatedCrossAttentionBlock` before every
   `cross_attention_every`-th block. There, each text token attends to the latents of the *last image placed at
   or before it* — the image whose `media_token_id` token is the latest one up to and including its position
   (Flamingo's "only the immediately preceding image"). Tokens before the first image see no image.
4. Each gated block adds `tanh(gate) · cross_attention` and `tanh(gate) · MLP`. The gates start at 0
   (`gate_init`), so an untrained Flamingo *is* its language model.

Flamingo trains the resampler and the gated blocks only (`trainable_mask`); the ViT and the language model
stay as pre-trained. The loss of interleaved text is `mmjax.losses.captioning_loss` with
`ignore_ids=(media_token_id,)`. `mmjax train` (`config.loss="captioning"`) trains a whole model from scratch on
image–caption pairs instead, each caption after its image's token (`mmjax.train.step`).
`options.remat_policy` rematerialises every block; `scan_layers` is refused (the language model's blocks
alternate with gated ones, so they are not one repeated layer). Shapes: B = batch, M = images per sample,
L = text length, R = latents per image, D = language-model width, Dv = vision width.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import axes, layers
from mmjax.models.text import TextConfig, embed_tokens
from mmjax.models.vit import VisionConfig, ViT

TRAINABLE = ("resampler", "gated_xattn_")  # the parameter subtrees Flamingo trains (names start with these)


@dataclasses.dataclass(frozen=True)
class FlamingoConfig:
    """vision: the image encoder (its pooling is not used). text: the causal language model's shape (`causal`
    must be True). media_token_id: the token that marks where an image stands in the text. num_latents,
    resampler_depth: the Perceiver resampler's R and depth (its heads and MLP are the vision tower's).
    cross_attention_every: a gated cross-attention block before blocks 0, k, 2k, … of the language model.
    gate_init: the gates' first value, 0 as Flamingo's (the pretrained language model at first untouched). A model
    trained from scratch needs them open: behind closed gates its vision tower and resampler get no gradient until
    the gates move, and in mmjax's runs they hardly did (flamingo-tiny, 500 steps: one caption for every image).
    The registry's `flamingo-*` models start at 0.5. language_activation, language_norm_eps: what the language
    model's blocks, the gated blocks and `ln_final` compute with when it is not `options`' (None): a pretrained
    language model's own (GPT-2's `gelu_tanh` beside a CLIP tower's `quick_gelu`, `mmjax.convert.hf_gpt2`)."""

    vision: VisionConfig
    text: TextConfig
    media_token_id: int
    num_latents: int = 64
    resampler_depth: int = 2
    cross_attention_every: int = 1
    gate_init: float = 0.0
    options: layers.BlockOptions = layers.BlockOptions()
    language_activation: str | None = None
    language_norm_eps: float | None = None

    @property
    def language_options(self) -> layers.BlockOptions:
        """The `BlockOptions` of the language model, its gated blocks and its final norm."""
        return dataclasses.replace(
            self.options, activation=self.language_activation or self.options.activation,
            norm_eps=self.options.norm_eps if self.language_norm_eps is None else self.language_norm_eps)

    def __post_init__(self):
        if self.language_activation not in (None, *layers.ACTIVATIONS):
            raise ValueError(f"FlamingoConfig: language_activation {self.language_activation!r} is not one of "
                             f"{sorted(layers.ACTIVATIONS)}")
        eps = self.language_norm_eps
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0):
            raise ValueError(f"FlamingoConfig: language_norm_eps {self.language_norm_eps!r} is not a number ≥ 0")
        if not self.text.causal:
            raise ValueError("FlamingoConfig: the language model must be causal (text.causal=True)")
        if not 0 <= self.media_token_id < self.text.vocab_size:
            raise ValueError(f"FlamingoConfig: media_token_id {self.media_token_id} is not in the vocabulary "
                             f"[0, {self.text.vocab_size})")
        if self.options.scan_layers:
            raise ValueError("FlamingoConfig: scan_layers is not supported (the language model's blocks alternate "
                             "with gated cross-attention blocks); use remat_policy to save memory")
        if min(self.num_latents, self.resampler_depth, self.cross_attention_every) < 1:
            raise ValueError(f"FlamingoConfig: num_latents {self.num_latents}, resampler_depth "
                             f"{self.resampler_depth} and cross_attention_every {self.cross_attention_every} "
                             f"must be ≥ 1")


class PerceiverBlock(nn.Module):
    """`latents [B, R, D]`, `media [B, S, D]` → `[B, R, D]`: `latents + attn(ln(latents), [ln(media); ln(latents)])`,
    then `+ mlp(ln(·))`."""

    num_heads: int
    mlp_dim: int
    options: layers.BlockOptions

    @nn.compact
    def __call__(self, latents, media):
        opts = self.options
        dtype = jnp.dtype(opts.dtype)
        queries = layers.layer_norm(opts.norm_eps, dtype, "ln_latents")(latents)
        keys = jnp.concatenate([layers.layer_norm(opts.norm_eps, dtype, "ln_media")(media), queries], axis=1)
        attention = layers.MultiHeadAttention(self.num_heads, dtype, implementation=opts.attention, name="attn")
        latents = latents + attention(queries, keys)
        y = layers.layer_norm(opts.norm_eps, dtype, "ln_mlp")(latents)
        return latents + layers.Mlp(self.mlp_dim, opts.activation, dtype, name="mlp")(y)


class PerceiverResampler(nn.Module):
    """`media [B, S, D]` (one image's tokens) → `[B, num_latents, D]`: learned latents through `depth`
    `PerceiverBlock`s, then a LayerNorm."""

    num_latents: int
    depth: int
    num_heads: int
    mlp_dim: int
    options: layers.BlockOptions = layers.BlockOptions()

    @nn.compact
    def __call__(self, media):
        width, dtype = media.shape[-1], jnp.dtype(self.options.dtype)
        latents = self.param("latents", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, axes.EMBED)),
                             (self.num_latents, width))
        latents = jnp.broadcast_to(latents.astype(dtype), (media.shape[0], self.num_latents, width))
        block = layers.rematerialised(PerceiverBlock, self.options)
        for i in range(self.depth):
            latents = block(self.num_heads, self.mlp_dim, self.options, name=f"layers_{i}")(latents, media)
        return layers.layer_norm(self.options.norm_eps, dtype, "ln_final")(latents)


def media_attention_mask(token_ids: jax.Array, media_token_id: int, num_media: int,
                         num_latents: int) -> tuple[jax.Array, jax.Array]:
    """Which latents each text token sees: `(mask [B, L, M·R], sees_media [B, L])`. Token t sees the R latents of
    image m (0-based) when the m+1-th `media_token_id` is the latest at or before t; `sees_media` is False for
    tokens before the first image (and after an (M+1)-th media token, for which there is no image)."""
    latest = jnp.cumsum(token_ids == media_token_id, axis=1)  # 1-based index of the latest image; 0: none yet
    key_image = jnp.repeat(jnp.arange(1, num_media + 1), num_latents)
    mask = latest[:, :, None] == key_image[None, None, :]
    return mask, (latest >= 1) & (latest <= num_media)


class GatedCrossAttentionBlock(nn.Module):
    """`x [B, L, D]`, `latents [B, M·R, Dv]`, `mask [B, L, M·R]`, `sees_media [B, L]` → `[B, L, D]`:
    `x + tanh(α) · cross_attn(ln(x), latents)` (0 for tokens that see no image), then
    `x + tanh(β) · mlp(ln(x))`; α and β start at `gate_init`. The cross-attention, with its per-token image mask, runs on
    XLA's attention whatever `options.attention` says (cuDNN's with a general mask is untested here)."""

    num_heads: int
    mlp_dim: int
    options: layers.BlockOptions
    gate_init: float = 0.0

    @nn.compact
    def __call__(self, x, latents, mask, sees_media):
        opts = self.options
        dtype = jnp.dtype(opts.dtype)
        gate = lambda name: jnp.tanh(self.param(name, nn.with_logical_partitioning(  # noqa: E731
            nn.initializers.constant(self.gate_init), ()), ())).astype(dtype)
        y = layers.layer_norm(opts.norm_eps, dtype, "ln_cross")(x)
        y = layers.MultiHeadAttention(self.num_heads, dtype, name="cross_attn")(y, latents.astype(dtype), mask=mask)
        x = x + gate("attn_gate") * jnp.where(sees_media[..., None], y, 0)
        y = layers.layer_norm(opts.norm_eps, dtype, "ln_mlp")(x)
        return x + gate("mlp_gate") * layers.Mlp(self.mlp_dim, opts.activation, dtype, name="mlp")(y)


class Flamingo(nn.Module):
    """`images [B, M, H, W, 3]` (normalised floats), `token_ids [B, L]` → next-token logits `[B, L, V]` (float32).

    `token_ids=None` returns the images' latents `[B, M·R, Dv]` instead; passing them back as `latents=` skips
    the vision tower and the resampler (`images` is then not read): what decoding many token sequences against
    the same images does (`mmjax.models.generation`).

    `decode_index` (an int32 scalar, traced): the logits `[B, decode_span, V]` at positions `decode_index …
    decode_index + decode_span − 1` only (`decode_span`: a static int, 1 by default), computed from the language
    model's key-value cache of the positions before them (the `cache` collection: apply with
    `mutable=["cache"]`, starting at 0 without one), which this call writes at those positions. `token_ids` is
    the whole `[B, L]` buffer; only its tokens up to the span's end are read. A span of several positions fills
    the cache with a prompt in one pass (`mmjax.models.generation`). A traced index outside `[0, L − decode_span]`
    is clamped into it; a Python int there is an error."""

    config: FlamingoConfig

    @nn.compact
    def __call__(self, images, token_ids=None, *, latents=None, decode_index=None, decode_span: int = 1):
        cfg, opts = self.config, self.config.options
        dtype = jnp.dtype(opts.dtype)
        if latents is None:
            if images.ndim != 5 or (token_ids is not None and images.shape[0] != token_ids.shape[0]):
                raise ValueError(f"Flamingo expects images [B, M, H, W, 3] and token ids [B, L] with one B, got "
                                 f"{list(images.shape)} and {list(getattr(token_ids, 'shape', []))}")
            batch, num_media = images.shape[:2]
            image_tokens = ViT(cfg.vision, opts, name="vision")(images.reshape(-1, *images.shape[2:]),
                                                                return_tokens=True)
            resampler = PerceiverResampler(cfg.num_latents, cfg.resampler_depth, cfg.vision.num_heads,
                                           cfg.vision.mlp_dim, opts, name="resampler")
            latents = resampler(image_tokens).reshape(batch, num_media * cfg.num_latents, cfg.vision.width)
            if token_ids is None:
                return latents
        elif token_ids is None:
            raise ValueError("Flamingo: latents= are decoded against token_ids; pass them")
        elif (latents.ndim != 3 or latents.shape[1] % cfg.num_latents or latents.shape[2] != cfg.vision.width
              or latents.shape[0] != token_ids.shape[0]):
            raise ValueError(f"Flamingo expects latents [B, M·{cfg.num_latents}, {cfg.vision.width}] for token ids "
                             f"{list(token_ids.shape)}, got {list(latents.shape)}")
        num_media = latents.shape[1] // cfg.num_latents
        mask, sees_media = media_attention_mask(token_ids, cfg.media_token_id, num_media, cfg.num_latents)
        x = embed_tokens(cfg.text, dtype, token_ids)
        decode = None
        context = token_ids.shape[1]
        if decode_span != 1 and (decode_index is None or not 1 <= decode_span <= context):
            raise ValueError(f"decode_span {decode_span} needs a decode_index and must lie in [1, {context}] (the "
                             f"tokens' length)")
        if isinstance(decode_index, int) and not 0 <= decode_index <= context - decode_span:
            raise ValueError(f"decode_index {decode_index} and decode_span {decode_span} do not lie within the "
                             f"{context} tokens")
        if decode_index is not None:  # the span's rows of each (cheap) whole-buffer tensor
            index = jnp.clip(jnp.asarray(decode_index, jnp.int32), 0, context - decode_span)
            decode = layers.DecodeStep(index, context)
            x, mask, sees_media = (jax.lax.dynamic_slice_in_dim(a, decode.index, decode_span, axis=1)
                                   for a in (x, mask, sees_media))
        language = cfg.language_options
        gated = layers.rematerialised(GatedCrossAttentionBlock, language)
        block = layers.rematerialised(layers.TransformerBlock, language)
        for i in range(cfg.text.depth):
            if i % cfg.cross_attention_every == 0:
                x = gated(cfg.text.num_heads, cfg.text.mlp_dim, language, cfg.gate_init, name=f"gated_xattn_{i}")(
                    x, latents, mask, sees_media)
            x = block(cfg.text, language, causal=True, name=f"layers_{i}")(x, None, decode)
        x = layers.layer_norm(language.norm_eps, dtype, "ln_final")(x)
        return layers.dense(cfg.text.vocab_size, (axes.EMBED, axes.VOCAB), name="lm_head")(x.astype(jnp.float32))


def captioning_inputs(text: jax.Array, media_token_id: int) -> jax.Array:
    """The token ids a captioner reads for tokenized captions `text [B, L]`: each caption after its image's token,
    `[media, text[:, :L − 1]]` `[B, L]`; the logits at position t predict `text[:, t]`."""
    return jnp.concatenate([jnp.full_like(text[:, :1], media_token_id), text[:, :-1]], axis=1)


def trainable_mask(params) -> dict:
    """A pytree of bools over Flamingo's `params`: True for the resampler and the gated cross-attention blocks,
    the parameters Flamingo trains. Freeze the rest with
    `optax.multi_transform({True: tx, False: optax.set_to_zero()}, trainable_mask(params))` — not
    `optax.masked`, which passes the other leaves' gradients through as updates."""
    return {name: jax.tree.map(lambda _: name.startswith(TRAINABLE), subtree) for name, subtree in params.items()}
