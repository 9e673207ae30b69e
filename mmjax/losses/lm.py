"""Captioning: the next-token loss of a text decoder (CoCa's captioner, Flamingo's language model).

The decoder reads `token_ids [B, L]` causally; its logits at position t predict the token at t + 1. Only
targets inside the caption count: positions 1 … `lengths[b] − 1` (the end-of-text token included, the padding
after it not). The loss is a sum over the batch divided by the number of counted targets in the batch, so a
batch sharded over devices gives the same value under `jit`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mmjax.losses.cross_entropy import negative_log_likelihood, weighted_mean


def captioning_loss(logits: jax.Array, token_ids: jax.Array, lengths: jax.Array,
                    label_smoothing: float = 0.0, ignore_ids: Sequence[int] = ()) -> jax.Array:
    """Mean next-token cross-entropy, float32. `logits [B, L, V]` (position t predicts token t + 1),
    `token_ids [B, L]`, `lengths [B]` (each caption's tokens, start and end of text included).
    `label_smoothing` ε: the target is `1 − ε` on the true token and `ε / V` spread over all V.
    `ignore_ids`: targets that are not counted (Flamingo's `<image>` token: where the next image goes is not the
    model's to predict, as OpenFlamingo's training leaves it out)."""
    if logits.shape[:-1] != token_ids.shape or lengths.shape != token_ids.shape[:1]:
        raise ValueError(f"captioning_loss needs logits [B, L, V], token_ids [B, L] and lengths [B], got "
                         f"{list(logits.shape)}, {list(token_ids.shape)} and {list(lengths.shape)}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing {label_smoothing} must lie in [0, 1)")
    predicting = logits[:, :-1]
    nll = negative_log_likelihood(predicting, token_ids[:, 1:])
    if label_smoothing:  # the uniform part: the mean over the vocabulary of −log p
        uniform = -jax.nn.log_softmax(predicting.astype(jnp.float32), axis=-1).mean(axis=-1)
        nll = (1 - label_smoothing) * nll + label_smoothing * uniform
    counted = jnp.arange(1, token_ids.shape[1])[None, :] < lengths[:, None]
    for ignored in ignore_ids:
        counted = counted & (token_ids[:, 1:] != ignored)
    return weighted_mean(nll, counted)
