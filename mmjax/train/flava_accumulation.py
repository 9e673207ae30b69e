"""FLAVA's objective (`Flava.losses`) over micro-batches, with the full batch's value and gradient.

FLAVA couples the rows of a batch twice: the contrastive loss compares every image with every caption, and the
hard negatives of image–text matching (ITM) are mined from those similarities across the batch. Its masked
losses (MLM, MIM, MMM) are per-row terms, averaged over the whole batch's masked tokens and patches. With
`A = accum_steps` micro-batches (`mmjax.train.accumulation`'s strided rows), as GradCache does for CLIP:

1. the step's draws come from its key over the whole batch (`draw_masks`), so every row draws what it would
   draw in one pass;
2. the clean pass's encoder tokens of every micro-batch, without activations (`lax.map`): `[B, 1 + N, Dv]`
   and `[B, L, Dt]`, one layer's output for the batch;
3. the contrastive loss on the whole batch, and its gradient w.r.t. the tokens and the projections;
4. the 3B ITM pairs mined from its similarities, through the multimodal encoder in `A` chunks of `3B / A`
   pairs (`lax.scan`), each a sum divided by 3B, with its gradient w.r.t. the tokens (and the fusion encoder);
5. each micro-batch's clean pass again, under `jax.vjp`, pulling the tokens' gradients back to the encoders,
   and its masked pass with the whole batch's divisors (`MaskDraws.totals`).

The encoders' and the fusion encoder's activations are alive for one micro-batch (one chunk of pairs) at a time;
the step costs one more clean forward pass than `Flava.losses`. Equal to it up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from mmjax.data.transforms import normalize_images
from mmjax.models import Flava
from mmjax.models.flava import MaskDraws, draw_masks, padded_lengths
from mmjax.train.accumulation import check_accum_steps, merge_micro_batches, micro_batches, split_micro_batches
from mmjax.train.patterns import stop_gradient_where

Batch = dict[str, jax.Array]
LOSSES = ("contrastive", "itm", "mlm", "mim", "mmm")


def flava_accumulated_value_and_grad(model: Flava, image_mean, image_std, seed: int, frozen: Sequence[str],
                                     accum_steps: int, sharding: NamedSharding | None = None) -> Callable:
    """`(params, batch, step) -> ((total, {"logit_scale", "loss_<name>"…}), grads)` of FLAVA's objective on
    `batch` (`image` uint8 `[B, H, W, 3]`, `text` `[B, L]`), the step's key `fold_in(key(seed), step)`, in
    `accum_steps` micro-batches, each split as `sharding` splits a batch."""
    check_accum_steps(accum_steps)
    config = model.config

    def apply(params, *args, method):
        return model.apply({"params": stop_gradient_where(params, frozen)}, *args, method=method)

    def clean_tokens(params, micro: Batch):
        images = normalize_images(micro["image"], image_mean, image_std)
        return apply(params, images, micro["text"], micro["lengths"], method="encode")

    def masked_losses(params, micro: Batch, totals: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
        images = normalize_images(micro["image"], image_mean, image_std)
        draws = MaskDraws(None, None, micro["masked_ids"], micro["weights"], micro["patch_mask"])
        losses = apply(params, images, micro["text"], micro["lengths"], draws, totals, method="masked")
        return sum(losses.values()), losses

    def value_and_grad(params, batch: Batch, step):
        key = jax.random.fold_in(jax.random.key(seed), step)
        lengths = padded_lengths(batch["text"], config.pad_id)
        draws = draw_masks(config, batch["text"], lengths, key)
        rows = {**batch, "lengths": lengths, "masked_ids": draws.masked_ids, "weights": draws.weights,
                "patch_mask": draws.patch_mask}
        micro = micro_batches(rows, accum_steps, sharding)

        tokens = merge_micro_batches(jax.lax.map(lambda m: clean_tokens(params, m), micro))
        if sharding is not None:  # the whole batch's tokens, split as a batch is
            tokens = jax.lax.with_sharding_constraint(tokens, sharding)
        image_tokens, text_tokens = tokens

        def contrastive(params, image_tokens, text_tokens):
            return apply(params, image_tokens, text_tokens, method="contrastive")

        (contrastive_loss, logits), grads_and_cotangents = jax.value_and_grad(
            contrastive, argnums=(0, 1, 2), has_aux=True)(params, image_tokens, text_tokens)
        pairs = split_micro_batches(draws.pairs(logits), accum_steps)
        pair_count = 3 * batch["text"].shape[0]

        def matching_chunk(carry, chunk):
            def matching(params, image_tokens, text_tokens):
                return apply(params, image_tokens, text_tokens, lengths, chunk, pair_count, method="matching")

            value, grads = jax.value_and_grad(matching, argnums=(0, 1, 2))(params, image_tokens, text_tokens)
            return jax.tree.map(jnp.add, carry, (value, grads)), None

        (itm_loss, (grads, d_image_tokens, d_text_tokens)), _ = jax.lax.scan(
            matching_chunk, (jnp.zeros((), jnp.float32), grads_and_cotangents), pairs)
        d_tokens = micro_batches((d_image_tokens, d_text_tokens), accum_steps, sharding)

        totals = draws.totals()

        def pull_back(carry, inputs):
            m, d_tokens_micro = inputs
            _, vjp = jax.vjp(lambda p: clean_tokens(p, m), params)
            (clean_grads,) = vjp(d_tokens_micro)
            (_, masked), masked_grads = jax.value_and_grad(masked_losses, has_aux=True)(params, m, totals)
            return jax.tree.map(jnp.add, carry, (masked, clean_grads, masked_grads)), None

        zeros = ({name: jnp.zeros((), jnp.float32) for name in ("mlm", "mim", "mmm")},
                 jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params))
        (masked, clean_grads, masked_grads), _ = jax.lax.scan(pull_back, zeros, (micro, d_tokens))
        grads = jax.tree.map(lambda *g: sum(g), grads, clean_grads, masked_grads)
        losses = {"contrastive": contrastive_loss, "itm": itm_loss, **masked}
        total = sum(losses[name] for name in LOSSES)
        aux = {"logit_scale": params["logit_scale"], **{f"loss_{name}": losses[name] for name in LOSSES}}
        return (total, aux), grads

    return value_and_grad
