"""Blocked contrastive-loss kernels: the `[R, C]` logit matrix one `[r, c]` block at a time.

Inf-CL style (Cheng et al. 2024, arXiv:2410.17243). The forward pass sweeps the blocks
(rows outer, columns inner) and keeps only running statistics: for CLIP an online
log-sum-exp, the number of positives and the sum of positive logits per row and per column
(`[R]` and `[C]` vectors); for SigLIP a running sum. The custom VJP sweeps the blocks again,
recomputes each block's logits from the embeddings and the saved per-row / per-column
statistics, and accumulates the embedding gradients block by block. Neither pass holds more
than one block of logits: memory is `O((R + C) D + r c)`, not `O(R C)`.

Rows are images and columns captions (positives are `pair_positives(image labels, caption
labels)` of each block's rows and columns). The sharded losses call these kernels on their
local rows against gathered or ring-passed columns. Row and column counts that are not a
multiple of the block are zero-padded and masked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mmjax.losses.positives import pair_positives

DEFAULT_BLOCK_SIZE = 4096
IMAGE_TO_TEXT, TEXT_TO_IMAGE = "image_to_text", "text_to_image"
_MASKED = -1e30  # a finite -inf: exp(_MASKED - m) == 0 and never inf - inf


def _varying_axes(x: jax.Array) -> frozenset[str]:
    aval = jax.typeof(x)
    return aval.mat.varying if hasattr(aval, "mat") else aval.vma  # `vma` before jax 0.10


def vary_like(value: jax.Array, *refs: jax.Array) -> jax.Array:
    """`value`, made device-varying over every manual mesh axis that one of `refs` varies over.

    A no-op outside `shard_map`. Inside, scan carries and cotangents must have the same
    varying axes as the values they are combined with.
    """
    varying = frozenset().union(*(_varying_axes(ref) for ref in refs)) - _varying_axes(value)
    return jax.lax.pcast(value, tuple(sorted(varying)), to="varying") if varying else value


class Tiles(NamedTuple):
    """`n` rows (or columns) in `[n_blocks, block]` tiles; padding rows are zero and not `valid`."""

    emb: jax.Array  # [n_blocks, block, D]
    labels: jax.Array  # [n_blocks, block, K]
    valid: jax.Array  # bool [n_blocks, block]


def _pad_to_blocks(x: jax.Array, block: int) -> jax.Array:
    """`[n, ...] -> [ceil(n / block), block, ...]`, zero-padded."""
    num_blocks = -(-x.shape[0] // block)
    x = jnp.pad(x, [(0, num_blocks * block - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(num_blocks, block, *x.shape[1:])


def tile(emb: jax.Array, labels: jax.Array, block_size: int) -> Tiles:
    """`emb [n, D]`, `labels [n, K]` in blocks of `min(n, block_size)` rows."""
    block = min(emb.shape[0], block_size)
    valid = vary_like(jnp.ones(emb.shape[0], bool), emb)
    return Tiles(_pad_to_blocks(emb, block), _pad_to_blocks(labels, block), _pad_to_blocks(valid, block))


def untile(x: jax.Array, n: int) -> jax.Array:
    """`[n_blocks, block, ...] -> [n, ...]`, padding dropped."""
    return x.reshape(-1, *x.shape[2:])[:n]


def sweep(block_fn: Callable, rows: Any, cols: Any, row_states: Any, col_states: Any) -> tuple[Any, Any]:
    """Visit every (row block, column block) pair, rows outer, columns inner.

    `block_fn(row, row_state, col, col_state) -> (row_state, col_state)` sees one row block and
    one column block (pytree leaves without their leading block axis). `rows` / `row_states` are
    pytrees with a leading `[n_row_blocks]` axis, `cols` / `col_states` with `[n_col_blocks]`.
    Returns the final `(row_states, col_states)`.
    """

    def over_rows(col_states, row_and_state):
        row, row_state = row_and_state

        def over_cols(row_state, col_and_state):
            col, col_state = col_and_state
            return block_fn(row, row_state, col, col_state)

        row_state, col_states = jax.lax.scan(over_cols, row_state, (cols, col_states))
        return col_states, row_state

    col_states, row_states = jax.lax.scan(over_rows, col_states, (rows, row_states))
    return row_states, col_states


def _block_similarities(row: Tiles, col: Tiles) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(similarities, valid, positives)`, each `[r, c]` (float32, bool, bool)."""
    similarities = jnp.einsum("rd,cd->rc", row.emb, col.emb, preferred_element_type=jnp.float32)
    valid = row.valid[:, None] & col.valid[None, :]
    return similarities, valid, pair_positives(row.labels, col.labels) & valid


def _embedding_grads(scale, d_logits, row: Tiles, col: Tiles) -> tuple[jax.Array, jax.Array]:
    """`d/d row.emb [r, D]` and `d/d col.emb [c, D]` (float32) of `logits = scale * row.emb @ col.emb.T`."""
    d_row = scale * jnp.dot(d_logits, col.emb.astype(jnp.float32))
    d_col = scale * jnp.dot(d_logits.T, row.emb.astype(jnp.float32))
    return d_row, d_col


def _zeros(shape, *refs) -> jax.Array:
    return vary_like(jnp.zeros(shape, jnp.float32), *refs)


# ---------------------------------------------------------------------------------------
# CLIP: soft-target cross-entropy along rows (image→text) and columns (text→image).


class Stats(NamedTuple):
    """Online statistics of rows (or columns) of the logit matrix, each float32 `[n_blocks, block]`."""

    running_max: jax.Array
    sum_exp: jax.Array  # sum of exp(logit - running_max)
    num_positives: jax.Array
    positive_logits: jax.Array  # sum of the logits of the positives


def _stats_init(shape, *refs) -> Stats:
    return Stats(vary_like(jnp.full(shape, _MASKED, jnp.float32), *refs), *(_zeros(shape, *refs) for _ in range(3)))


def _stats_update(stats: Stats, logits: jax.Array, positives: jax.Array, axis: int) -> Stats:
    """Fold one block into the statistics of its rows (`axis=1`) or columns (`axis=0`)."""
    running_max = jnp.maximum(stats.running_max, logits.max(axis))
    sum_exp = stats.sum_exp * jnp.exp(stats.running_max - running_max)
    sum_exp += jnp.exp(logits - jnp.expand_dims(running_max, axis)).sum(axis)
    return Stats(running_max, sum_exp, stats.num_positives + positives.sum(axis, dtype=jnp.float32),
                 stats.positive_logits + jnp.where(positives, logits, 0.0).sum(axis))


def _cross_entropy_sum(stats: Stats, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum over rows of `CE(softmax(logits[row]), uniform over the row's positives)`
    (0 for a row without positives) and the rows' log-sum-exp `[n_blocks, block]`."""
    log_sum_exp = stats.running_max + jnp.log(stats.sum_exp)
    has_positive = valid & (stats.num_positives > 0)
    mean_positive = stats.positive_logits / jnp.maximum(stats.num_positives, 1.0)
    return jnp.sum(jnp.where(has_positive, log_sum_exp - mean_positive, 0.0)), log_sum_exp


def _cross_entropy_grad(logits, positives, log_sum_exp, num_positives, axis: int) -> jax.Array:
    """`d CE / d logits [r, c]` along `axis`: `softmax - targets` for rows with a positive, else 0."""
    log_sum_exp, num_positives = jnp.expand_dims(log_sum_exp, axis), jnp.expand_dims(num_positives, axis)
    softmax = jnp.where(num_positives > 0, jnp.exp(logits - log_sum_exp), 0.0)
    return softmax - positives / jnp.maximum(num_positives, 1.0)


def _clip_forward(image_emb, text_emb, scale, image_labels, text_labels, directions, block_size):
    rows, cols = tile(image_emb, image_labels, block_size), tile(text_emb, text_labels, block_size)
    refs = (image_emb, text_emb, scale)
    row_init = _stats_init(rows.valid.shape, *refs) if IMAGE_TO_TEXT in directions else ()
    col_init = _stats_init(cols.valid.shape, *refs) if TEXT_TO_IMAGE in directions else ()

    def block_fn(row, row_stats, col, col_stats):
        similarities, valid, positives = _block_similarities(row, col)
        logits = jnp.where(valid, scale * similarities, _MASKED)
        if IMAGE_TO_TEXT in directions:
            row_stats = _stats_update(row_stats, logits, positives, axis=1)
        if TEXT_TO_IMAGE in directions:
            col_stats = _stats_update(col_stats, logits, positives, axis=0)
        return row_stats, col_stats

    row_stats, col_stats = sweep(block_fn, rows, cols, row_init, col_init)
    sums, summaries = [], []
    for direction, stats, tiles in ((IMAGE_TO_TEXT, row_stats, rows), (TEXT_TO_IMAGE, col_stats, cols)):
        if direction in directions:
            total, log_sum_exp = _cross_entropy_sum(stats, tiles.valid)
            sums.append(total)
            summaries.append((log_sum_exp, stats.num_positives))
        else:
            sums.append(_zeros((), *refs))
            summaries.append(())
    return tuple(sums), (image_emb, text_emb, scale, image_labels, text_labels, *summaries)


def _clip_backward(directions, block_size, residuals, cotangents):
    image_emb, text_emb, scale, image_labels, text_labels, row_summary, col_summary = residuals
    d_image_to_text, d_text_to_image = cotangents
    rows, cols = tile(image_emb, image_labels, block_size), tile(text_emb, text_labels, block_size)
    refs = (image_emb, text_emb, scale)

    def block_fn(row_and_summary, row_grads, col_and_summary, d_col):
        (row, row_summary), (col, col_summary) = row_and_summary, col_and_summary
        similarities, valid, positives = _block_similarities(row, col)
        logits = jnp.where(valid, scale * similarities, _MASKED)
        d_logits = jnp.zeros_like(logits)
        if IMAGE_TO_TEXT in directions:
            d_logits += d_image_to_text * _cross_entropy_grad(logits, positives, *row_summary, axis=1)
        if TEXT_TO_IMAGE in directions:
            d_logits += d_text_to_image * _cross_entropy_grad(logits, positives, *col_summary, axis=0)
        d_logits = jnp.where(valid, d_logits, 0.0)
        d_row, d_col_block = _embedding_grads(scale, d_logits, row, col)
        d_row_emb, d_scale = row_grads
        return (d_row_emb + d_row, d_scale + jnp.sum(d_logits * similarities)), d_col + d_col_block

    row_init = (_zeros(rows.emb.shape, *refs), _zeros(rows.valid.shape[:1], *refs))
    (d_rows, d_scale), d_cols = sweep(block_fn, (rows, row_summary), (cols, col_summary), row_init,
                                      _zeros(cols.emb.shape, *refs))
    return (untile(d_rows, image_emb.shape[0]).astype(image_emb.dtype),
            untile(d_cols, text_emb.shape[0]).astype(text_emb.dtype),
            jnp.sum(d_scale).astype(scale.dtype), None, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def clip_sums(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, image_labels: jax.Array,
              text_labels: jax.Array, directions: tuple[str, ...], block_size: int) -> tuple[jax.Array, jax.Array]:
    """Summed soft-target cross-entropies of `logits = scale * image_emb @ text_emb.T`, blocked.

    Args:
      image_emb: float `[R, D]` (rows).
      text_emb: float `[C, D]` (columns).
      scale: float32 scalar multiplying the similarities (already clamped).
      image_labels, text_labels: int `[R, K]`, `[C, K]`; positives are `pair_positives` of them.
      directions: which of `IMAGE_TO_TEXT` (softmax over each row) and `TEXT_TO_IMAGE` (over
        each column) to compute; a direction left out is returned as 0 and costs nothing.
      block_size: rows and columns per block.

    Returns:
      `(image_to_text, text_to_image)`, float32 scalars: the sums over rows (columns) of the
      cross-entropy against the uniform distribution over that row's (column's) positives;
      rows (columns) without a positive contribute 0.
    """
    return _clip_forward(image_emb, text_emb, scale, image_labels, text_labels, directions, block_size)[0]


clip_sums.defvjp(_clip_forward, _clip_backward)


# ---------------------------------------------------------------------------------------
# SigLIP: an independent binary cross-entropy for every pair.


def _sigmoid_block(scale, bias, row: Tiles, col: Tiles):
    """`(similarities, valid, signs, logits)`, `[r, c]`: `logits = scale * similarities + bias`,
    `signs` +1 on positives and -1 elsewhere."""
    similarities, valid, positives = _block_similarities(row, col)
    return similarities, valid, jnp.where(positives, 1.0, -1.0), scale * similarities + bias


def sigmoid_sum_forward(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, bias: jax.Array,
                        image_labels: jax.Array, text_labels: jax.Array, block_size: int) -> jax.Array:
    """`-sum_ij log_sigmoid(z_ij (scale * image_emb[i] . text_emb[j] + bias))`, `z = ±1` on positives / others.

    Shapes as in `clip_sums`; returns a float32 scalar.
    """
    rows, cols = tile(image_emb, image_labels, block_size), tile(text_emb, text_labels, block_size)

    def block_fn(row, total, col, col_state):
        _, valid, signs, logits = _sigmoid_block(scale, bias, row, col)
        return total - jnp.sum(jnp.where(valid, jax.nn.log_sigmoid(signs * logits), 0.0)), col_state

    totals, _ = sweep(block_fn, rows, cols, _zeros(rows.valid.shape[:1], image_emb, text_emb, scale, bias), ())
    return jnp.sum(totals)


def sigmoid_sum_backward(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, bias: jax.Array,
                         image_labels: jax.Array, text_labels: jax.Array, cotangent: jax.Array,
                         block_size: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """`cotangent ×` the gradients of `sigmoid_sum_forward` w.r.t. `(image_emb, text_emb, scale, bias)`,
    float32 `[R, D]`, `[C, D]`, `[]`, `[]`, recomputing the logits block by block."""
    rows, cols = tile(image_emb, image_labels, block_size), tile(text_emb, text_labels, block_size)
    refs = (image_emb, text_emb, scale, bias, cotangent)

    def block_fn(row, row_grads, col, d_col):
        similarities, valid, signs, logits = _sigmoid_block(scale, bias, row, col)
        # d/dl [-log_sigmoid(z l)] = -z sigmoid(-z l)
        d_logits = jnp.where(valid, -cotangent * signs * jax.nn.sigmoid(-signs * logits), 0.0)
        d_row, d_col_block = _embedding_grads(scale, d_logits, row, col)
        d_row_emb, d_scale, d_bias = row_grads
        row_grads = (d_row_emb + d_row, d_scale + jnp.sum(d_logits * similarities), d_bias + jnp.sum(d_logits))
        return row_grads, d_col + d_col_block

    row_init = (_zeros(rows.emb.shape, *refs), _zeros(rows.valid.shape[:1], *refs),
                _zeros(rows.valid.shape[:1], *refs))
    (d_rows, d_scale, d_bias), d_cols = sweep(block_fn, rows, cols, row_init, _zeros(cols.emb.shape, *refs))
    return untile(d_rows, image_emb.shape[0]), untile(d_cols, text_emb.shape[0]), jnp.sum(d_scale), jnp.sum(d_bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def sigmoid_sum(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, bias: jax.Array,
                image_labels: jax.Array, text_labels: jax.Array, block_size: int) -> jax.Array:
    """`sigmoid_sum_forward` with a VJP that recomputes the logits block by block."""
    return sigmoid_sum_forward(image_emb, text_emb, scale, bias, image_labels, text_labels, block_size)


def _sigmoid_fwd(image_emb, text_emb, scale, bias, image_labels, text_labels, block_size):
    total = sigmoid_sum_forward(image_emb, text_emb, scale, bias, image_labels, text_labels, block_size)
    return total, (image_emb, text_emb, scale, bias, image_labels, text_labels)


def _sigmoid_bwd(block_size, residuals, cotangent):
    image_emb, text_emb, scale, bias = residuals[:4]
    d_image, d_text, d_scale, d_bias = sigmoid_sum_backward(*residuals, cotangent, block_size)
    return (d_image.astype(image_emb.dtype), d_text.astype(text_emb.dtype), d_scale.astype(scale.dtype),
            d_bias.astype(bias.dtype), None, None)


sigmoid_sum.defvjp(_sigmoid_fwd, _sigmoid_bwd)
