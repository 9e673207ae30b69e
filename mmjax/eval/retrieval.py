"""Image-text retrieval recall@k, computed in blocks.

Definitions follow LAION-AI/CLIP_benchmark,
``clip_benchmark/metrics/zeroshot_retrieval.py`` (read at commit 48de38c1):
``scores = texts_emb @ images_emb.T`` on L2-normalised embeddings, a boolean
``positive_pairs[text, texts_image_index[text]]``, and per query
``recall_at_k(...) > 0`` (at least one positive among ``torch.topk(scores, k)``)
averaged over queries:

- ``image_retrieval_recall@k``: queries are texts, candidates images; a text is a
  hit when its own image is among its top-k images.
- ``text_retrieval_recall@k``: queries are images, candidates texts; an image is a
  hit when at least one of its captions is among its top-k texts. An image with no
  caption counts as a miss (clip_benchmark: ``0/0 = NaN``, and ``NaN > 0`` is False).

Differences, all documented choices: ``k`` larger than the number of candidates
counts as all candidates (torch.topk would raise), and ties are ranked by a fixed
rule: among equal scores the lower candidate index ranks first (``-0.0 == 0.0``).

No ``N_txt x N_img`` matrix is built: for a block of queries, scores against one
block of candidates at a time are merged into a running top-k (``jax.lax.top_k``,
which puts the lower position first among equal values; the running list always
precedes the newer, higher-indexed block, so the tie rule holds across blocks and
a single block — the dense computation — follows the same rule).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.eval.zeroshot import l2_normalize, require_finite


@functools.partial(jax.jit, static_argnames="k")
def _query_block_top_k(
    queries: jax.Array, candidate_blocks: jax.Array, num_candidates: jax.Array, k: int
) -> jax.Array:
    """Top-``k`` candidate indices ``[Bq, k]`` for queries ``[Bq, D]``.

    ``candidate_blocks`` is ``[num_blocks, Bc, D]``; rows at index ``>= num_candidates``
    are padding and score ``-inf``. Memory is ``O(Bq * (Bc + k))``.
    """
    num_queries, block_size = queries.shape[0], candidate_blocks.shape[1]

    def merge(carry, block_and_offset):
        best_scores, best_indices = carry
        block, offset = block_and_offset
        scores = jnp.matmul(queries, block.T, precision=jax.lax.Precision.HIGHEST)
        # lax.top_k orders -0.0 below 0.0; make them one value so they tie.
        scores = jnp.where(scores == 0, 0.0, scores)
        indices = offset + jnp.arange(block_size)
        scores = jnp.where(indices < num_candidates, scores, -jnp.inf)
        all_scores = jnp.concatenate([best_scores, scores], axis=1)
        all_indices = jnp.concatenate(
            [best_indices, jnp.broadcast_to(indices, scores.shape)], axis=1
        )
        best_scores, positions = jax.lax.top_k(all_scores, k)
        return (best_scores, jnp.take_along_axis(all_indices, positions, axis=1)), None

    offsets = jnp.arange(candidate_blocks.shape[0]) * block_size
    init = (
        jnp.full((num_queries, k), -jnp.inf, queries.dtype),
        jnp.full((num_queries, k), -1, jnp.int32),
    )
    (_, best_indices), _ = jax.lax.scan(merge, init, (candidate_blocks, offsets))
    return best_indices


def _pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad ``[N, D]`` to ``[ceil(N / multiple) * multiple, D]``."""
    return np.pad(x, ((0, -len(x) % multiple), (0, 0)))


def blocked_top_k(
    queries: np.ndarray, candidates: np.ndarray, k: int, block_size: int = 1024
) -> np.ndarray:
    """Indices ``[N_q, min(k, N_c)]`` of the highest dot-product candidates per query.

    Ordered by score, descending; among equal scores the lower candidate index
    first. At most ``block_size x (block_size + k)`` scores exist at a time.

    Args:
      queries: ``[N_q, D]``; candidates: ``[N_c, D]`` (finite values).
      k: how many candidates to keep per query.
      block_size: queries per block (fewer when there are fewer queries) and candidates per block.
    """
    queries = np.asarray(queries, np.float32)
    candidates = np.asarray(candidates, np.float32)
    k = min(k, len(candidates))
    candidate_blocks = _pad_rows(candidates, block_size).reshape(
        -1, block_size, candidates.shape[1]
    )
    query_block = max(1, min(block_size, len(queries)))  # one query (a search) is not padded to a block
    padded_queries = _pad_rows(queries, query_block)
    num_candidates = jnp.int32(len(candidates))
    top = [
        np.asarray(
            _query_block_top_k(
                padded_queries[start : start + query_block], candidate_blocks, num_candidates, k
            )
        )
        for start in range(0, len(queries), query_block)
    ]
    return np.concatenate(top)[: len(queries)] if top else np.zeros((0, k), np.int32)


def retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    block_size: int = 1024,
) -> dict[str, float]:
    """clip_benchmark's retrieval recall@k in both directions (cosine similarity).

    Args:
      image_emb: ``[N_img, D]``; text_emb: ``[N_txt, D]`` (normalised here).
      text_to_image: ``[N_txt]`` int, the image each caption describes (several
        captions may share an image).
      ks: the k's to report.
      block_size: query / candidate block size; bounds memory. The result is the same for any block size except
        where scores are equal or within float32 rounding of each other: the rounding of the dot products depends
        on the block's shape, and so can the order of such candidates.

    Returns:
      ``{"image_retrieval_recall@k": ..., "text_retrieval_recall@k": ...}`` for each k,
      in clip_benchmark's key order.
    """
    if any(k < 1 for k in ks):
        raise ValueError(f"recall@k needs every k ≥ 1, got {tuple(ks)}")
    require_finite(image_emb, "the image embeddings")
    require_finite(text_emb, "the text embeddings")
    images = l2_normalize(image_emb)
    texts = l2_normalize(text_emb)
    text_to_image = np.asarray(text_to_image)
    k_max = max(ks)
    images_per_text = blocked_top_k(texts, images, k_max, block_size)
    image_hits = images_per_text == text_to_image[:, None]
    texts_per_image = blocked_top_k(images, texts, k_max, block_size)
    text_hits = text_to_image[texts_per_image] == np.arange(len(images))[:, None]
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float(image_hits[:, :k].any(axis=1).mean())
        metrics[f"text_retrieval_recall@{k}"] = float(text_hits[:, :k].any(axis=1).mean())
    return metrics


def retrieval_chance(captions_per_image: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """The recall@k of an encoder that ranks candidates in a uniformly random order.

    Text -> image: one of ``N_img`` images is right, so ``min(k / N_img, 1)``. Image -> text:
    image ``i`` has ``m_i`` of the ``N_txt`` captions; none of them is in a random top-k with
    probability ``C(N_txt - m_i, k) / C(N_txt, k) = prod_{j < m_i} (N_txt - k - j) / (N_txt - j)``
    (0 once ``k > N_txt - m_i``), and the chance is the mean over images of one minus that.

    Args:
      captions_per_image: ``[N_img]`` int, how many captions each image has.
      ks: the k's to report.

    Returns:
      ``{"chance_image_retrieval_recall@k": ..., "chance_text_retrieval_recall@k": ...}``.
    """
    counts = np.asarray(captions_per_image, np.int64)
    num_images, num_texts = len(counts), int(counts.sum())
    if not num_images:
        raise ValueError("retrieval chance needs at least one image")
    caption_counts, images_with = np.unique(counts, return_counts=True)
    chance = {}
    for k in ks:
        top = min(k, num_texts)
        # Exact fractions, so that a chance of 1/1000 prints as 0.001 and not 0.0010000000000000009.
        hits = sum(int(images) * (1 - math.prod(Fraction(max(num_texts - top - j, 0), num_texts - j) for j in range(m)))
                   for m, images in zip(caption_counts.tolist(), images_with))
        chance[f"chance_image_retrieval_recall@{k}"] = min(k / num_images, 1.0)
        chance[f"chance_text_retrieval_recall@{k}"] = float(Fraction(hits) / num_images)
    return chance
