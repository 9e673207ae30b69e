"""Fusion blocks: joint image–text representations from the towers' outputs.

Each block takes what the encoders give (token sequences or pooled features) and returns a fused
representation; a `MatchingHead` on top scores image–text matching (ITM, `mmjax.losses.matching`).

- `LateFusion` combines *pooled* features `[B, Di]`, `[B, Dt]` → `[B, width]` (concatenation, sum or
  product, then an MLP): the cheapest, and what a two-tower model's embeddings allow.
- `EarlyFusion` is single-stream (ViLT): image and text tokens, each projected to the fusion width and marked
  with a learned modality embedding, are concatenated after a learned fusion token and run through one
  bidirectional `Transformer`.
- `CrossModalFusion` is the multimodal encoder of ALBEF, BLIP and FLAVA: text tokens run through blocks
  that add cross-attention to the image tokens between self-attention and the MLP (`CrossAttentionBlock`).

Shapes: B = batch, Ti / Tt = image / text tokens, Di / Dt = their widths, D = the fusion width. Text padding
is given as `text_lengths` int `[B]`, each caption's token count (its end-of-text token included): tokens from
there on are masked out of every attention, so padding changes no output a valid token has.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import axes, layers

COMBINATIONS = ("concat", "sum", "product")


class LateFusion(nn.Module):
    """Pooled `image [B, Di]`, `text [B, Dt]` → `[B, width]`: each projected to `width`, combined
    (`"concat"` → `[B, 2·width]`, `"sum"`, `"product"`), then `fc2(act(fc1(·)))` with hidden size `mlp_dim`."""

    width: int
    mlp_dim: int
    combine: str = "concat"
    options: layers.BlockOptions = layers.BlockOptions()

    @nn.compact
    def __call__(self, image: jax.Array, text: jax.Array) -> jax.Array:
        if self.combine not in COMBINATIONS:
            raise ValueError(f"LateFusion: combine {self.combine!r} is not one of {list(COMBINATIONS)}")
        if image.ndim != 2 or text.ndim != 2 or image.shape[0] != text.shape[0]:
            raise ValueError(f"LateFusion expects pooled image [B, Di] and text [B, Dt] features, got "
                             f"{list(image.shape)} and {list(text.shape)}")
        dtype = jnp.dtype(self.options.dtype)
        image = layers.dense(self.width, (axes.EMBED, axes.PROJ), dtype=dtype, name="image_proj")(image)
        text = layers.dense(self.width, (axes.EMBED, axes.PROJ), dtype=dtype, name="text_proj")(text)
        combined = {"concat": lambda: jnp.concatenate([image, text], axis=-1),
                    "sum": lambda: image + text, "product": lambda: image * text}[self.combine]()
        hidden = layers.dense(self.mlp_dim, (axes.PROJ, axes.MLP), dtype=dtype, name="fc1")(combined)
        hidden = layers.ACTIVATIONS[self.options.activation](hidden)
        return layers.dense(self.width, (axes.MLP, axes.PROJ), dtype=dtype, name="fc2")(hidden)


def _check_tokens(block: str, text_lengths, **sequences: jax.Array) -> jax.Array | None:
    """Checks the token sequences' shapes; `text_lengths` as an int array `[B]` (or None)."""
    shapes = {name: tuple(x.shape) for name, x in sequences.items()}
    if any(len(shape) != 3 for shape in shapes.values()) or len({shape[0] for shape in shapes.values()}) != 1:
        raise ValueError(f"{block} expects token sequences [B, T, D] with one batch size, got "
                         + ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items()))
    if text_lengths is None:
        return None
    text_lengths = jnp.asarray(text_lengths)
    batch = next(iter(shapes.values()))[0]
    if text_lengths.shape != (batch,) or not jnp.issubdtype(text_lengths.dtype, jnp.integer):
        raise ValueError(f"{block} expects text_lengths int [{batch}] (each caption's token count), got "
                         f"{text_lengths.dtype} {list(text_lengths.shape)}")
    return text_lengths


class EarlyFusion(nn.Module):
    """Single-stream fusion. `image_tokens [B, Ti, Di]`, `text_tokens [B, Tt, Dt]`, optional `text_lengths [B]`
    → `(pooled [B, D], tokens [B, 1 + Ti + Tt, D])`: the sequence `[fusion token, image…, text…]` after
    `spec.depth` bidirectional blocks and a final LayerNorm; `pooled` is the fusion token."""

    spec: layers.TransformerSpec
    options: layers.BlockOptions = layers.BlockOptions()

    @nn.compact
    def __call__(self, image_tokens: jax.Array, text_tokens: jax.Array,
                 text_lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        text_lengths = _check_tokens("EarlyFusion", text_lengths, image_tokens=image_tokens, text_tokens=text_tokens)
        width, dtype = self.spec.width, jnp.dtype(self.options.dtype)
        modality = self.param("modality_embed", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, axes.EMBED)), (2, width))
        image = layers.dense(width, (None, axes.EMBED), dtype=dtype, name="image_proj")(image_tokens)
        text = layers.dense(width, (None, axes.EMBED), dtype=dtype, name="text_proj")(text_tokens)
        x = jnp.concatenate([image + modality[0].astype(image.dtype), text + modality[1].astype(text.dtype)], axis=1)
        x = layers.ClassToken(name="fusion_token")(x)
        lengths = None if text_lengths is None else 1 + image_tokens.shape[1] + text_lengths
        x = layers.Transformer(self.spec, self.options, name="encoder")(x, lengths)
        x = layers.layer_norm(self.options.norm_eps, dtype, "ln_final")(x)
        return x[:, 0], x


class CrossAttentionBlock(nn.Module):
    """Pre-LN block with cross-attention: `x + self_attn(ln(x))`, `x + cross_attn(ln(x), context)`,
    `x + mlp(ln(x))`. `x [B, T, D]`, `context [B, S, Dc]` → `[B, T, D]`; `x_lengths` / `context_lengths` int
    `[B]` (optional) mask each example's padding out of the self- and the cross-attention."""

    spec: layers.TransformerSpec
    options: layers.BlockOptions

    @nn.compact
    def __call__(self, x, context, x_lengths=None, context_lengths=None):
        spec, opts = self.spec, self.options
        dtype = jnp.dtype(opts.dtype)
        x = layers.constrain_tokens(x)
        attention = lambda name: layers.MultiHeadAttention(spec.num_heads, dtype,  # noqa: E731
                                                           implementation=opts.attention, name=name)
        x = x + attention("self_attn")(layers.layer_norm(opts.norm_eps, dtype, "ln_1")(x), kv_lengths=x_lengths)
        y = layers.layer_norm(opts.norm_eps, dtype, "ln_cross")(x)
        x = x + attention("cross_attn")(y, context.astype(dtype), kv_lengths=context_lengths)
        y = layers.layer_norm(opts.norm_eps, dtype, "ln_2")(x)
        return x + layers.Mlp(spec.mlp_dim, opts.activation, dtype, name="mlp")(y)


class CrossModalFusion(nn.Module):
    """Text attends to the image (ALBEF / BLIP / FLAVA's multimodal encoder). `text_tokens [B, Tt, Dt]`,
    `image_tokens [B, Ti, Di]`, optional `text_lengths [B]` → `(pooled [B, D], tokens [B, Tt, D])`: the text
    projected to `spec.width` (when `Dt` differs), `spec.depth` `CrossAttentionBlock`s, a final LayerNorm;
    `pooled` is the first text token (CLIP's start-of-text, BERT's [CLS]). The layers are unrolled;
    `options.remat_policy` rematerialises each."""

    spec: layers.TransformerSpec
    options: layers.BlockOptions = layers.BlockOptions()

    @nn.compact
    def __call__(self, text_tokens: jax.Array, image_tokens: jax.Array,
                 text_lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        text_lengths = _check_tokens("CrossModalFusion", text_lengths, text_tokens=text_tokens,
                                     image_tokens=image_tokens)
        spec, opts = self.spec, self.options
        dtype = jnp.dtype(opts.dtype)
        x = text_tokens.astype(dtype)
        if x.shape[-1] != spec.width:
            x = layers.dense(spec.width, (None, axes.EMBED), dtype=dtype, name="text_proj")(x)
        block = layers.rematerialised(CrossAttentionBlock, opts)
        for i in range(spec.depth):
            x = block(spec, opts, name=f"layers_{i}")(x, image_tokens, text_lengths)
        x = layers.layer_norm(opts.norm_eps, dtype, "ln_final")(x)
        return x[:, 0], x


class MatchingHead(nn.Module):
    """Image–text matching: fused `pooled [B, D]` → logits `[B, 2]` (float32; index 1: the pair matches)."""

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        return layers.dense(2, (axes.EMBED, None), name="itm")(pooled.astype(jnp.float32))
