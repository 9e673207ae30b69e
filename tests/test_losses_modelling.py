"""Masked language / image modelling and captioning losses against NumPy loops, BERT's masking proportions,
MAE's patch order and normalisation, and the same values with the batch sharded over 8 devices."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.losses.lm import captioning_loss
from mmjax.losses.masking import (mask_tokens, masked_lm_loss, masked_patch_loss, patchify, prediction_positions,
                                  random_patch_mask)
from mmjax.models import layers


def np_log_softmax(x):
    x = x.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_mask_tokens_follows_berts_proportions_and_leaves_the_rest_alone():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, size=(400, 64)).astype(np.int32)
    maskable = np.ones(ids.shape, bool)
    maskable[:, 0], maskable[:, 50:] = False, False  # start of text and padding
    inputs, weights = map(np.asarray, mask_tokens(jnp.asarray(ids), jax.random.key(0), mask_id=3, vocab_size=1000,
                                                  mask_prob=0.15, maskable=jnp.asarray(maskable)))
    chosen = weights == 1
    assert set(np.unique(weights)) == {0.0, 1.0} and not chosen[~maskable].any()
    n = maskable.sum()
    assert abs(chosen.sum() / n - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    np.testing.assert_array_equal(inputs[~chosen], ids[~chosen])
    picked = chosen.sum()
    as_mask = (inputs[chosen] == 3).mean()
    kept = (inputs[chosen] == ids[chosen]).mean()  # 10 %, plus the random ids that drew the original (0.1 %)
    for got, want in ((as_mask, 0.8), (kept, 0.1 + 0.1 / 1000), (1 - as_mask - kept, 0.1 - 0.1 / 1000)):
        assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / picked), (got, want)
    replaced = inputs[chosen & (inputs != 3) & (inputs != ids)]  # uniform over the whole vocabulary
    assert 0 <= replaced.min() < 50 and 950 <= replaced.max() < 1000
    again = mask_tokens(jnp.asarray(ids), jax.random.key(0), mask_id=3, vocab_size=1000, maskable=jnp.asarray(maskable))
    np.testing.assert_array_equal(again[0], inputs)


def test_max_predictions_keeps_a_uniform_subset_of_the_chosen_positions_and_they_can_be_gathered():
    rng = np.random.default_rng(3)
    ids = jnp.asarray(rng.integers(5, 1000, size=(2000, 12)).astype(np.int32))
    args = dict(mask_id=3, vocab_size=1000, mask_prob=0.5)
    free_inputs, free = map(np.asarray, mask_tokens(ids, jax.random.key(4), **args))
    capped_inputs, capped = map(np.asarray, mask_tokens(ids, jax.random.key(4), max_predictions=3, **args))
    uncapped_again = mask_tokens(ids, jax.random.key(4), max_predictions=12, **args)[1]
    np.testing.assert_array_equal(uncapped_again, free)  # a cap of L changes nothing
    assert capped.sum(axis=1).max() == 3 and not (capped > free).any()  # a subset, at most 3 a row
    few = free.sum(axis=1) <= 3
    np.testing.assert_array_equal(capped[few], free[few])  # rows within the cap keep every chosen position
    np.testing.assert_array_equal(capped_inputs[capped == 1], free_inputs[capped == 1])  # the same corruption
    np.testing.assert_array_equal(capped_inputs[capped == 0], np.asarray(ids)[capped == 0])
    kept_at = capped[~few & (free == 1).any(axis=1)]  # where rows over the cap keep positions: uniform over L
    share = kept_at.sum(axis=0) / kept_at.sum()
    assert np.abs(share - 1 / 12).max() < 4 * math.sqrt((1 / 12) * (11 / 12) / kept_at.sum()), share
    weights = np.array([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(prediction_positions(jnp.asarray(weights), 2), [[1, 3], [0, 1], [0, 1]])


def test_masked_lm_loss_is_the_weighted_mean_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(3, 5))
    weights = (rng.random((3, 5)) < 0.4).astype(np.float32)
    log_probs = np_log_softmax(logits)
    want = sum(-log_probs[b, t, targets[b, t]] for b in range(3) for t in range(5) if weights[b, t]) / weights.sum()
    np.testing.assert_allclose(masked_lm_loss(logits, targets, weights), want, rtol=1e-5)
    np.testing.assert_allclose(masked_lm_loss(logits, targets, weights / 4), want, rtol=1e-5)  # a weighted mean
    assert float(masked_lm_loss(logits, targets, np.zeros_like(weights))) == 0.0


def test_random_patch_mask_masks_exactly_the_ratio_of_each_row_uniformly():
    mask = np.asarray(random_patch_mask(jax.random.key(0), 4000, 16, 0.75))
    assert (mask.sum(axis=1) == 12).all()
    np.testing.assert_allclose(mask.mean(axis=0), 0.75, atol=4 * math.sqrt(0.75 * 0.25 / 4000))
    assert len({row.tobytes() for row in mask}) > 1000


def test_patchify_gives_the_patch_embedding_order_and_maes_pixel_order():
    """MAE's `patchify` (`nchpwq -> nhwpqc`) written as loops; and a patch embedding is `patchify @ kernel`."""
    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, 13, 12, 3)).astype(np.float32)  # 13 rows: the last one is not a whole patch
    got = np.asarray(patchify(images, 4))
    want = np.stack([np.stack([images[b, 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(-1)
                               for i in range(3) for j in range(3)]) for b in range(2)])
    np.testing.assert_array_equal(got, want)
    embed = layers.PatchEmbed(4, 8)
    params = nn.unbox(jax.jit(embed.init)(jax.random.key(0), images))
    kernel = params["params"]["conv"]["kernel"]  # [p, p, C, D]
    np.testing.assert_allclose(embed.apply(params, images), got @ np.asarray(kernel).reshape(-1, 8), atol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_masked_patch_loss_matches_maes_formula(normalize):
    rng = np.random.default_rng(3)
    predictions, targets = (rng.normal(size=(2, 6, 12)).astype(np.float32) for _ in range(2))
    targets = targets * 5 + 2
    mask = rng.random((2, 6)) < 0.5
    total, count = 0.0, 0
    for b in range(2):
        for n in range(6):
            if mask[b, n]:
                target = targets[b, n].astype(np.float64)
                if normalize:
                    target = (target - target.mean()) / math.sqrt(target.var(ddof=1) + 1e-6)
                total += ((predictions[b, n] - target) ** 2).mean()
                count += 1
    np.testing.assert_allclose(masked_patch_loss(predictions, targets, mask, normalize), total / count, rtol=1e-5)


@pytest.mark.parametrize("smoothing, ignored", [(0.0, ()), (0.1, ()), (0.0, (4, 7))])
def test_captioning_loss_is_the_next_token_cross_entropy_inside_each_caption(smoothing, ignored):
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 6, 9)).astype(np.float32) * 2
    ids = rng.integers(0, 9, size=(3, 6))
    ids[0, 2], ids[2, 1] = 4, 7  # targets the third case leaves out
    lengths = np.array([6, 2, 4])
    log_probs = np_log_softmax(logits)
    terms = []
    for b in range(3):
        for t in range(lengths[b] - 1):  # logits at t predict token t + 1, which lies inside the caption
            if ids[b, t + 1] in ignored:
                continue
            target = np.full(9, smoothing / 9)
            target[ids[b, t + 1]] += 1 - smoothing
            terms.append(-(target * log_probs[b, t]).sum())
    np.testing.assert_allclose(captioning_loss(logits, ids, lengths, smoothing, ignored), np.mean(terms), rtol=1e-5)


def test_token_losses_of_8_shards_divided_by_the_whole_batchs_count_add_up_to_its_loss():
    """Each device's share of a sharded (or micro-batched) token loss, divided by the whole batch's count of
    positions (`total`), adds up to the whole batch's loss: one sum over all positions divided by one count (a mean
    of per-shard means would weigh a shard's positions by how few it has). Reference: NumPy, in float64."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(16, 6, 9)).astype(np.float32)
    ids = rng.integers(0, 9, size=(16, 6))
    weights = (rng.random((16, 6)) < np.linspace(0.05, 0.9, 16)[:, None]).astype(np.float32)  # uneven per row
    log_probs = np_log_softmax(logits)
    picked = np.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]
    want_lm = -(picked * weights).sum() / weights.sum()
    predictions, targets = rng.normal(size=(16, 4, 12)).astype(np.float32), rng.normal(size=(16, 4, 12)) * 3 + 1
    mask = rng.random((16, 4)) < np.linspace(0.1, 0.9, 16)[:, None]
    normalized = (targets - targets.mean(-1, keepdims=True)) / np.sqrt(targets.var(-1, ddof=1, keepdims=True) + 1e-6)
    want_patch = (((predictions - normalized) ** 2).mean(-1) * mask).sum() / mask.sum()
    shards = [slice(2 * i, 2 * i + 2) for i in range(8)]
    got_lm = sum(masked_lm_loss(logits[s], ids[s], weights[s], total=weights.sum()) for s in shards)
    got_patch = sum(masked_patch_loss(predictions[s], targets[s].astype(np.float32), mask[s], total=mask.sum())
                    for s in shards)
    np.testing.assert_allclose(got_lm, want_lm, rtol=1e-5)
    np.testing.assert_allclose(got_patch, want_patch, rtol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda: mask_tokens(jnp.ones((2, 3), jnp.int32), jax.random.key(0), mask_id=1, vocab_size=5, mask_prob=1.5),
     r"mask_prob 1.5 must lie in \[0, 1\]"),
    (lambda: masked_lm_loss(jnp.ones((2, 3, 4)), jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4))),
     r"masked_lm_loss needs logits \[B, L, V\], targets \[B, L\] and weights \[B, L\], got \[2, 3, 4\], \[2, 4\]"),
    (lambda: captioning_loss(jnp.ones((2, 3, 4)), jnp.ones((2, 3), jnp.int32), jnp.ones((3,), jnp.int32)),
     r"captioning_loss needs logits \[B, L, V\], token_ids \[B, L\] and lengths \[B\], got \[2, 3, 4\], \[2, 3\] "
     r"and \[3\]"),
    (lambda: masked_patch_loss(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4)), jnp.ones((2, 4))),
     r"masked_patch_loss needs predictions and targets \[B, N, P\] and mask \[B, N\]"),
])
def test_wrong_shapes_are_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
