"""The pure training step: `train_step(state, batch) -> (state, metrics)`.

Shardings and buffer donation are attached where it is jitted (`jit_train_step`);
the contrastive loss runs under `shard_map` over the batch axes of the mesh.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mmjax.data.transforms import normalize_images
from mmjax.losses import CLIP_MAX_SCALE, clip_scale, sharded_clip_loss, sharded_sigmoid_loss
from mmjax.models import TwoTower
from mmjax.parallel import batch_sharding, replicated
from mmjax.train.accumulation import make_value_and_grad
from mmjax.train.state import TrainState

Batch = dict[str, jax.Array]


def make_train_step(model: TwoTower, tx: optax.GradientTransformation, schedule: optax.Schedule, mesh: Mesh, *,
                    loss: str, multi_positive: bool, image_mean, image_std, accum_steps: int = 1) -> Callable:
    """A step for `loss` ("clip" or "sigmoid").

    batch: `image` uint8 `[B, H, W, 3]`, `text` int32 `[B, L]` and, when
    `multi_positive`, `image_labels` / `text_labels` int32 `[B, K]`. With `accum_steps > 1`
    the towers run on `accum_steps` micro-batches and the gradient still equals the
    full-batch one (`mmjax.train.accumulation`). With the CLIP loss the `logit_scale` parameter is clamped
    to [0, log 100] after each update, as OpenCLIP does.
    """

    def embed_fn(params, batch: Batch):
        images = normalize_images(batch["image"], image_mean, image_std)
        return model.apply({"params": params}, image=images, text=batch["text"])

    @jax.named_scope("loss")  # names the loss's ops in profiles (`mmjax bench train-step --profile`)
    def loss_fn(image_emb, text_emb, aux, batch: Batch):
        labels = (batch["image_labels"], batch["text_labels"]) if multi_positive else (None, None)
        if loss == "clip":
            value = sharded_clip_loss(image_emb, text_emb, aux["logit_scale"], *labels, mesh=mesh)
        else:
            value = sharded_sigmoid_loss(image_emb, text_emb, aux["logit_scale"], aux["logit_bias"], *labels,
                                         mesh=mesh)
        return value

    value_and_grad = make_value_and_grad(embed_fn, loss_fn, accum_steps, batch_sharding(mesh))

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        (value, aux), grads = value_and_grad(state.params, batch)
        with jax.named_scope("optimizer"):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        if loss == "clip":  # as OpenCLIP: the parameter stays in [0, log 100], so it can come back below the clamp
            params = {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, math.log(CLIP_MAX_SCALE))}
        # scale: what the loss multiplies the cosine similarities by (1 / temperature), clamped as the loss clamps it
        scale = clip_scale(aux["logit_scale"]) if loss == "clip" else jnp.exp(aux["logit_scale"])
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step),
                   "scale": scale}
        if "logit_bias" in aux:
            metrics["logit_bias"] = aux["logit_bias"]
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def jit_train_step(train_step: Callable, state_sharding: TrainState, mesh: Mesh) -> Callable:
    """Jit with the state's shardings in and out, the batch split over `data × fsdp`,
    replicated metrics, and the old state's buffers donated."""
    return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding(mesh)),
                   out_shardings=(state_sharding, replicated(mesh)), donate_argnums=0)
