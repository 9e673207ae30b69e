"""Image–text matching (ITM) with hard negatives, as ALBEF, BLIP and FLAVA train their fusion encoders.

A batch of B aligned pairs gives 3B fusion inputs: the B pairs themselves (label 1), each image with a hard
negative caption and each caption with a hard negative image (label 0). A hard negative is a *similar* wrong
partner: drawn from the batch with probability `softmax(logits)` over the non-positive columns of the
contrastive logits (ALBEF's sampling), or the most similar one. The fusion encoder and a
`mmjax.models.fusion.MatchingHead` score the 3B pairs, and `itm_loss` is their mean cross-entropy.

    negative_text = hard_negatives(logits, key_text)          # logits = scale · image_emb @ text_emb.T
    negative_image = hard_negatives(logits.T, key_image)
    image_index, text_index, labels = matching_pairs(negative_text, negative_image)
    pooled, _ = fusion.apply(p, text_tokens[text_index], image_tokens[image_index], text_lengths[text_index])
    loss = itm_loss(head.apply(q, pooled), labels)

Sharded batches: mine on the local rows against the gathered columns, `logits [b, B]` with `offset` the
global index of the first local row (ALBEF gathers the embeddings, not the B×B matrix); the negatives are
then global indices into the gathered tokens. Memory: `b × B` logits per device. Each row draws with the key
folded with its global index, so every device may pass the same key: the sharded draws are the draws one
device makes for the whole batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.losses.cross_entropy import negative_log_likelihood


def hard_negatives(logits: jax.Array, key: jax.Array | None, *, offset: int | jax.Array = 0,
                   positives: jax.Array | None = None) -> jax.Array:
    """For each row of `logits [b, B]` (row `i`'s positive is column `offset + i`), a column that is not a
    positive: int32 `[b]`.

    `key`: a PRNG key to sample column `j` with probability `softmax(logits[i])` renormalised over the
    non-positive columns (row `i` draws with `fold_in(key, offset + i)`); `None` takes the most similar
    non-positive column. `positives` bool `[b, B]`
    (optional) marks further columns that are not negatives (duplicate captions, images of one class); the
    diagonal `offset + i` is always one. Every row needs a non-positive column: `B ≥ 2`, and a row that
    `positives` marks entirely gets an arbitrary column (check `positives` when that can happen).
    """
    logits = jnp.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"hard_negatives needs logits [b, B] with B ≥ 2 columns to choose from, got "
                         f"{list(logits.shape)}")
    positives = None if positives is None else jnp.asarray(positives)
    if positives is not None and positives.shape != logits.shape:
        raise ValueError(f"positives {list(positives.shape)} must have the shape of logits {list(logits.shape)}")
    rows, columns = logits.shape
    global_rows = offset + jnp.arange(rows)
    excluded = jnp.arange(columns)[None, :] == global_rows[:, None]
    if positives is not None:
        excluded = excluded | positives
    masked = jnp.where(excluded, -jnp.inf, logits.astype(jnp.float32))
    if key is None:
        return jnp.argmax(masked, axis=-1).astype(jnp.int32)
    draw = lambda row, row_logits: jax.random.categorical(jax.random.fold_in(key, row), row_logits)  # noqa: E731
    return jax.vmap(draw)(global_rows, masked).astype(jnp.int32)


def matching_pairs(negative_text: jax.Array, negative_image: jax.Array, offset: int | jax.Array = 0,
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The 3b fusion inputs of b local pairs: `(image_index [3b], text_index [3b], labels [3b])`, int32 indices
    into the (gathered) batch and labels 1 for the b aligned pairs `(offset + i, offset + i)`, 0 for
    `(offset + i, negative_text[i])` and `(negative_image[i], offset + i)`."""
    negative_text, negative_image = jnp.asarray(negative_text), jnp.asarray(negative_image)
    if negative_text.shape != negative_image.shape or negative_text.ndim != 1:
        raise ValueError(f"negative_text {list(negative_text.shape)} and negative_image "
                         f"{list(negative_image.shape)} must both be [b]")
    own = offset + jnp.arange(negative_text.shape[0], dtype=jnp.int32)
    image_index = jnp.concatenate([own, own, negative_image.astype(jnp.int32)])
    text_index = jnp.concatenate([own, negative_text.astype(jnp.int32), own])
    labels = jnp.concatenate([jnp.ones_like(own), jnp.zeros_like(own), jnp.zeros_like(own)])
    return image_index, text_index, labels


def itm_loss(match_logits: jax.Array, labels: jax.Array, total: int | None = None) -> jax.Array:
    """Mean cross-entropy of `match_logits [N, 2]` (index 1: the pair matches) against `labels [N]` (1 or 0),
    in float32; `total`: the sum divided by it instead of N (a chunk's share of a larger set of pairs). Labels
    other than 0 and 1 are refused when they are a NumPy array or a list; inside `jit` they cannot be seen
    (`matching_pairs` gives only 0 and 1)."""
    if isinstance(labels, (list, tuple, np.ndarray)):
        labels = np.asarray(labels)
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ValueError(f"itm_loss labels must be 0 or 1, got {sorted(set(labels.ravel().tolist()))}")
    match_logits, labels = jnp.asarray(match_logits), jnp.asarray(labels)
    if match_logits.ndim != 2 or match_logits.shape[-1] != 2 or labels.shape != match_logits.shape[:1]:
        raise ValueError(f"itm_loss needs match_logits [N, 2] and labels [N], got {list(match_logits.shape)} and "
                         f"{list(labels.shape)}")
    nll = negative_log_likelihood(match_logits, labels)
    return jnp.mean(nll) if total is None else jnp.sum(nll) / total
