"""Training losses: contrastive (CLIP / SigLIP) and their sharded forms, computed in tiles of the
logit matrix (`blocked`: online log-sum-exp, custom VJPs that recompute tiles; `ring`: the SigLIP
device ring); image–text matching with hard negatives (`matching`)."""

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
from mmjax.losses.matching import hard_negatives, itm_loss, matching_pairs

__all__ = [
    "CLIP_MAX_SCALE",
    "DEFAULT_BLOCK_SIZE",
    "clip_loss",
    "clip_scale",
    "hard_negatives",
    "itm_loss",
    "matching_pairs",
    "pair_positives",
    "sharded_clip_loss",
    "sharded_sigmoid_loss",
    "sigmoid_loss",
]
