"""Training losses: contrastive (CLIP / SigLIP) and their sharded forms."""

from mmjax.losses.contrastive import (
    clip_loss,
    pair_positives,
    sharded_clip_loss,
    sharded_sigmoid_loss,
    sigmoid_loss,
)

__all__ = [
    "clip_loss",
    "pair_positives",
    "sharded_clip_loss",
    "sharded_sigmoid_loss",
    "sigmoid_loss",
]
