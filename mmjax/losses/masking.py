"""Masked modelling: BERT-style masked language modelling (MLM) and MAE-style masked image modelling (MIM).

MLM (`mask_tokens` → encoder → `masked_lm_loss`): each eligible token is chosen with probability `mask_prob`;
a chosen token becomes `mask_id` (80 %), a uniformly random id (10 %) or stays itself (10 %), and the loss is the
cross-entropy of the encoder's logits against the original ids at the chosen positions only — BERT's recipe,
as FLAVA's text and multimodal MLM use it (Hugging Face's `DataCollatorForLanguageModeling`).

MIM (`random_patch_mask` → encoder/decoder → `masked_patch_loss`): exactly `round(mask_ratio · N)` of the N
patches of each image are masked, chosen uniformly (MAE's shuffle); the loss is the mean squared error between
the predicted and the true pixels of the masked patches, each true patch normalised by its own mean and variance
(MAE's `norm_pix_loss`). `patchify` flattens images into patches in the order `layers.PatchEmbed` gives tokens.

Shapes: B = batch, L = text length, V = vocabulary, N = patches, P = pixels per patch (`p · p · C`).
Every reduction is a sum over the batch divided by a count over the batch, so a batch sharded over devices
gives the same value under `jit` (XLA adds the partial sums across devices).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.losses.cross_entropy import negative_log_likelihood, weighted_mean


def mask_tokens(token_ids: jax.Array, key: jax.Array, *, mask_id: int, vocab_size: int, mask_prob: float = 0.15,
                maskable: jax.Array | None = None,
                max_predictions: int | None = None) -> tuple[jax.Array, jax.Array]:
    """`(inputs [B, L], weights [B, L] float32)`: the ids with BERT's corruption, and 1 at the chosen positions
    (the loss's targets are the original `token_ids` there). `maskable` bool `[B, L]` (optional): the positions
    that may be chosen — not padding, not start/end-of-text (default: all). `max_predictions` (optional): at most
    this many chosen positions per row, a uniformly random subset of those drawn (BERT's
    `max_predictions_per_seq`), so that the heads can run on `prediction_positions` alone."""
    if not 0 <= mask_prob <= 1:
        raise ValueError(f"mask_prob {mask_prob} must lie in [0, 1]")
    if maskable is not None and maskable.shape != token_ids.shape:
        raise ValueError(f"maskable {list(maskable.shape)} must have the shape of token_ids {list(token_ids.shape)}")
    choose, kind, random_ids = jax.random.split(key, 3)
    draw = jax.random.uniform(choose, token_ids.shape)
    chosen = draw < mask_prob
    if maskable is not None:
        chosen = chosen & maskable
    if max_predictions is not None:  # keep the chosen positions of the smallest draws: a uniform subset
        rank = jnp.argsort(jnp.argsort(jnp.where(chosen, draw, 2.0), axis=1), axis=1)
        chosen = chosen & (rank < max_predictions)
    action = jax.random.uniform(kind, token_ids.shape)  # [0, .8): mask, [.8, .9): random id, [.9, 1): keep
    replacement = jnp.where(action < 0.8, mask_id,
                            jax.random.randint(random_ids, token_ids.shape, 0, vocab_size, token_ids.dtype))
    inputs = jnp.where(chosen & (action < 0.9), replacement.astype(token_ids.dtype), token_ids)
    return inputs, chosen.astype(jnp.float32)


def prediction_positions(weights: jax.Array, count: int) -> jax.Array:
    """int32 `[B, count]`: each row's positions of weight 1 in `weights [B, L]` (from `mask_tokens`, at most
    `count` of them per row: its `max_predictions`), in order, then positions of weight 0. Gathered with
    `jnp.take_along_axis`, the logits, targets and weights there give the `masked_lm_loss` of all L positions."""
    return jnp.argsort(-weights, axis=1, stable=True)[:, :count].astype(jnp.int32)


def masked_lm_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                   total: jax.Array | None = None) -> jax.Array:
    """Cross-entropy of `logits [B, L, V]` against `targets [B, L]`, averaged over the positions with weight
    `weights [B, L]` (0 where nothing was chosen: the loss is then 0), in float32. `total`: divide by it instead
    of `Σ weights` (`weighted_mean`: a micro-batch's share of a larger batch's loss)."""
    if logits.shape[:-1] != targets.shape or weights.shape != targets.shape:
        raise ValueError(f"masked_lm_loss needs logits [B, L, V], targets [B, L] and weights [B, L], got "
                         f"{list(logits.shape)}, {list(targets.shape)} and {list(weights.shape)}")
    return weighted_mean(negative_log_likelihood(logits, targets), weights, total)


def random_patch_mask(key: jax.Array, batch: int, num_patches: int, mask_ratio: float) -> jax.Array:
    """bool `[batch, num_patches]`: True for the `round(mask_ratio · num_patches)` masked patches of each row,
    a uniformly random subset per row."""
    if not 0 <= mask_ratio <= 1:
        raise ValueError(f"mask_ratio {mask_ratio} must lie in [0, 1]")
    masked = round(mask_ratio * num_patches)
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch, num_patches)), axis=-1), axis=-1)
    return rank < masked


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """`images [B, H, W, C]` → `[B, (H/p)·(W/p), p·p·C]`: row-major patches (the token order of
    `layers.PatchEmbed`), each flattened row by row, pixel by pixel. Pixels past the last whole patch are
    dropped, as the ViT drops them."""
    b, h, w, c = images.shape
    p = patch_size
    gh, gw = h // p, w // p
    x = images[:, :gh * p, :gw * p].reshape(b, gh, p, gw, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c)


def masked_patch_loss(predictions: jax.Array, targets: jax.Array, mask: jax.Array,
                      normalize_targets: bool = True, total: jax.Array | None = None) -> jax.Array:
    """Mean squared error of `predictions [B, N, P]` against `targets [B, N, P]` (`patchify` of the images),
    per patch averaged over its P values, then over the patches `mask [B, N]` marks (0 when none is). With
    `normalize_targets` each target patch is first standardised by its own mean and unbiased variance (MAE's
    `norm_pix_loss`, eps 1e-6). `total`: divide by it instead of the number of masked patches
    (`weighted_mean`)."""
    if predictions.shape != targets.shape or mask.shape != targets.shape[:2]:
        raise ValueError(f"masked_patch_loss needs predictions and targets [B, N, P] and mask [B, N], got "
                         f"{list(predictions.shape)}, {list(targets.shape)} and {list(mask.shape)}")
    targets = targets.astype(jnp.float32)
    if normalize_targets:
        mean = targets.mean(axis=-1, keepdims=True)
        variance = targets.var(axis=-1, ddof=1, keepdims=True)  # unbiased, as MAE's `torch.var`
        targets = (targets - mean) * jax.lax.rsqrt(variance + 1e-6)
    return weighted_mean(jnp.mean((predictions.astype(jnp.float32) - targets) ** 2, axis=-1), mask, total)
