"""Optimizer: global-norm clipping → AdamW (masked weight decay), warmup + cosine schedule, frozen parameters,
layer-wise learning-rate decay."""

from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections
import optax

from mmjax.train.layer_decay import configured_decays, scale_by_layer_decay
from mmjax.train.patterns import decay_mask, path_matches


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then cosine decay to
    `learning_rate * final_lr_ratio` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.learning_rate, warmup_steps=optim.warmup_steps,
        decay_steps=total_steps, end_value=optim.learning_rate * optim.final_lr_ratio)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """`clip_by_global_norm(clip_norm)` then AdamW; no decay on paths matching `optim.no_decay`. Paths matching
    `optim.frozen` (e.g. `^image_encoder/` and `^image_proj/`: LiT's locked image tower) are not updated and have
    no optimizer state; the norm that is clipped is the trained parameters' (the step stops the frozen ones'
    gradients, `stop_gradient_where`). `optim.layer_decay` (or a tower's own `image_layer_decay` /
    `text_layer_decay`) < 1 scales each tower's lower layers' steps down (`mmjax.train.layer_decay`)."""
    mask = lambda params: decay_mask(nn.unbox(params), optim.no_decay)
    adamw = optax.chain(
        optax.clip_by_global_norm(optim.clip_norm),
        optax.adamw(learning_rate_schedule(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                    weight_decay=optim.weight_decay, mask=mask),
    )
    frozen = tuple(optim.get("frozen", ()))
    tx = adamw
    if frozen:  # the state of a run without frozen parameters keeps its layout
        labels = lambda params: jax.tree.map(lambda matched: "frozen" if matched else "trained",
                                             path_matches(nn.unbox(params), frozen))
        tx = optax.multi_transform({"trained": adamw, "frozen": optax.set_to_zero()}, labels)
    decay, per_tower = configured_decays(optim)
    if decay == 1.0 and all(value == 1.0 for value in per_tower.values()):
        return tx
    return optax.chain(tx, scale_by_layer_decay(decay, per_tower))
