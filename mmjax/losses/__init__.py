"""Training losses: contrastive (CLIP / SigLIP) and their sharded forms, computed in tiles of the
logit matrix (`blocked`: online log-sum-exp, custom VJPs that recompute tiles; `ring`: the SigLIP
device ring); image–text matching with hard negatives (`matching`), masked language / image modelling
(`masking`) and captioning (`lm`)."""

from mmjax.losses.blocked import DEFAULT_BLOCK_SIZE
from mmjax.losses.contrastive import (
    CLIP_MAX_SCALE,
    clip_loss,
    clip_scale,
    pair_positives,
    sharded_clip_loss,
    sharded_sigmoid_loss,
    sigmoid_loss,
)
from mmjax.losses.lm import captioning_loss
from mmjax.losses.masking import (mask_tokens, masked_lm_loss, masked_patch_loss, patchify, prediction_positions,
                                  random_patch_mask)
from mmjax.losses.matching import hard_negatives, itm_loss, matching_pairs

__all__ = [
    "CLIP_MAX_SCALE",
    "DEFAULT_BLOCK_SIZE",
    "captioning_loss",
    "clip_loss",
    "clip_scale",
    "hard_negatives",
    "itm_loss",
    "mask_tokens",
    "masked_lm_loss",
    "masked_patch_loss",
    "matching_pairs",
    "pair_positives",
    "patchify",
    "prediction_positions",
    "random_patch_mask",
    "sharded_clip_loss",
    "sharded_sigmoid_loss",
    "sigmoid_loss",
]
