"""Text transformer encoder."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import axes, layers


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig(layers.TransformerSpec):
    """Shape of a text transformer.

    causal: causal self-attention (CLIP) or bidirectional (SigLIP).
    pool: `"eot"` (token at the largest id, CLIP's end-of-text), `"first_eot"` (the
    first position holding `eot_id`, transformers' CLIP), `"last"` (last position,
    SigLIP), `"map"` or `"mean"`.
    """

    vocab_size: int
    context_length: int
    causal: bool = True
    pool: str = "eot"
    eot_id: int | None = None


def embed_tokens(config: TextConfig, dtype: jnp.dtype, token_ids) -> jax.Array:
    """`token_ids [B, context_length]` → token + learned position embeddings `[B, L, width]`, after checking
    the shape (and, for a NumPy array, the id range). Call it inside a compact method: the parameters are the
    caller's `token_embed` and `pos_embed`."""
    if token_ids.ndim != 2 or token_ids.shape[1] != config.context_length:
        raise ValueError(f"text encoder expects token ids [B, {config.context_length}], got {list(token_ids.shape)}")
    if isinstance(token_ids, np.ndarray) and token_ids.size and not (
            0 <= token_ids.min() and token_ids.max() < config.vocab_size):
        raise ValueError(f"token ids must lie in [0, {config.vocab_size}), got {token_ids.min()}..{token_ids.max()}")
    embed = nn.Embed(
        config.vocab_size, config.width, dtype=dtype, name="token_embed",
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), (axes.VOCAB, axes.EMBED)),
    )
    return layers.AddPositionEmbedding("learned", 0.01, name="pos_embed")(embed(token_ids))


class TextTransformer(nn.Module):
    """`token_ids [B, L] int -> pooled features [B, width]`, or with `return_tokens` the token sequence before
    pooling, `[B, L, width]` (the input of a fusion block). `lengths` int `[B]` (optional): each caption's
    token count; the padding after it is masked out of the attention (bidirectional encoders: FLAVA, BERT).

    Ids must lie in `[0, vocab_size)`; one that is not is refused when `token_ids` is a NumPy array, but inside
    `jit` it cannot be seen: `nn.Embed` then reads NaN (ids past the table) or wraps (negative ids). mmjax's
    tokenizers, and training, which checks the tokenizer against the model, only give valid ids."""

    config: TextConfig
    options: layers.BlockOptions

    @nn.compact
    def __call__(self, token_ids, return_tokens: bool = False, lengths=None):
        cfg, opts = self.config, self.options
        dtype = jnp.dtype(opts.dtype)
        token_ids = token_ids if hasattr(token_ids, "ndim") else np.asarray(token_ids)
        x = embed_tokens(cfg, dtype, token_ids)
        x = layers.Transformer(cfg, opts, cfg.causal, name="encoder")(x, lengths)
        x = layers.layer_norm(opts.norm_eps, dtype, "ln_final")(x)
        if return_tokens:
            return x
        if cfg.pool == "map":
            return layers.MapHead(cfg.num_heads, cfg.mlp_dim, opts.activation, opts.norm_eps, dtype, name="map_head")(x)
        return layers.pool_tokens(x, cfg.pool, token_ids, cfg.eot_id)
