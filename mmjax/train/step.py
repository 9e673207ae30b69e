"""The pure training step: `train_step(state, batch) -> (state, metrics)`.

Shardings and buffer donation are attached where it is jitted (`jit_train_step`). The two-tower losses run
under `shard_map` over the batch axes of the mesh; FLAVA's objective (`Flava.losses`) is one jitted program that
the compiler partitions, its random masks and hard negatives drawn from `fold_in(key(seed), step)`; so is
Flamingo's captioning loss (`mmjax.models.flamingo.captioning_inputs`).
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mmjax.data.transforms import normalize_images
from mmjax.losses import CLIP_MAX_SCALE, clip_scale, sharded_clip_loss, sharded_sigmoid_loss
from mmjax.losses.cross_entropy import negative_log_likelihood
from mmjax.models import Flamingo, Flava, TwoTower
from mmjax.models.flamingo import captioning_inputs
from mmjax.parallel import batch_sharding, replicated
from mmjax.train.accumulation import check_accum_steps, make_summed_value_and_grad, make_value_and_grad
from mmjax.train.flava_accumulation import flava_accumulated_value_and_grad
from mmjax.train.patterns import stop_gradient_where
from mmjax.train.state import TrainState

Batch = dict[str, jax.Array]


def make_train_step(model: TwoTower | Flava | Flamingo, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    mesh: Mesh, *, loss: str, multi_positive: bool, image_mean, image_std, accum_steps: int = 1,
                    seed: int = 0, frozen: Sequence[str] = (), eot_id: int | None = None) -> Callable:
    """A step for `loss`: "clip" or "sigmoid" (a `TwoTower`), "flava" (a `Flava`; `seed` picks its masks and
    negatives) or "captioning" (a `Flamingo`; `eot_id`: the tokenizer's end of text, where each caption ends);
    the last two with `multi_positive=False`.

    batch: `image` uint8 `[B, H, W, 3]`, `text` int32 `[B, L]` and, when
    `multi_positive`, `image_labels` / `text_labels` int32 `[B, K]`. With `accum_steps > 1` the towers (FLAVA's
    encoders, the captioner) run on `accum_steps` micro-batches and the gradient still equals the full-batch one
    (`mmjax.train.accumulation`, `mmjax.train.flava_accumulation`). With the CLIP and FLAVA losses the
    `logit_scale` parameter is clamped to [0, log 100] after each update, as OpenCLIP does. Metrics: `loss`,
    `grad_norm`, `learning_rate`, `scale` (not for captioning), and `logit_bias` (SigLIP) or each FLAVA loss as
    `loss_<name>`. `frozen`: path patterns of parameters whose gradients are stopped (`grad_norm` is then the
    trained parameters'); the optimizer leaves them as they are (`make_optimizer`, `optim.frozen`).
    """
    if loss in ("flava", "captioning") and multi_positive:
        raise ValueError(f"loss={loss!r} takes multi_positive=False")
    if loss == "captioning" and eot_id is None:
        raise ValueError("loss='captioning' needs eot_id, the tokenizer's end-of-text id")
    check_accum_steps(accum_steps)
    if loss == "flava" and accum_steps > 1:
        value_and_grad = flava_accumulated_value_and_grad(model, image_mean, image_std, seed, frozen, accum_steps,
                                                          batch_sharding(mesh))
    elif loss == "flava":
        value_and_grad = _flava_value_and_grad(model, image_mean, image_std, seed, frozen)
    elif loss == "captioning":
        value_and_grad = _captioning_value_and_grad(model, mesh, image_mean, image_std, accum_steps, frozen, eot_id)
    else:
        value_and_grad = _contrastive_value_and_grad(model, mesh, loss, multi_positive, image_mean, image_std,
                                                     accum_steps, frozen)

    # a frozen logit_scale stays as it is, even where it lies past the clamp (OpenAI's 4.6052 > log 100)
    clamp_scale = loss in ("clip", "flava") and not any(re.search(pattern, "logit_scale") for pattern in frozen)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        (value, aux), grads = value_and_grad(state.params, batch, state.step)
        with jax.named_scope("optimizer"):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        if clamp_scale:  # as OpenCLIP: the parameter stays in [0, log 100], so it can come back below the clamp
            params = {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, math.log(CLIP_MAX_SCALE))}
        # scale: what the loss multiplies the cosine similarities by (1 / temperature), clamped as the loss clamps it
        aux = dict(aux)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
        if "logit_scale" in aux:  # not the captioner's
            logit_scale = aux.pop("logit_scale")
            metrics["scale"] = jnp.exp(logit_scale) if loss == "sigmoid" else clip_scale(logit_scale)
        metrics |= aux
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def _contrastive_value_and_grad(model: TwoTower, mesh: Mesh, loss: str, multi_positive: bool, image_mean, image_std,
                                accum_steps: int, frozen: Sequence[str]) -> Callable:
    """`(params, batch, step) -> ((loss, {"logit_scale"[, "logit_bias"]}), grads)` of the sharded two-tower loss."""

    def embed_fn(params, batch: Batch):
        images = normalize_images(batch["image"], image_mean, image_std)
        return model.apply({"params": stop_gradient_where(params, frozen)}, image=images, text=batch["text"])

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
    return lambda params, batch, step: value_and_grad(params, batch)


def _flava_value_and_grad(model: Flava, image_mean, image_std, seed: int, frozen: Sequence[str]) -> Callable:
    """`(params, batch, step) -> ((total, {"logit_scale", "loss_<name>"…}), grads)` of `Flava.losses`, the caption
    lengths read from the padding."""

    @jax.named_scope("loss")
    def loss_fn(params, batch: Batch, step):
        images = normalize_images(batch["image"], image_mean, image_std)
        key = jax.random.fold_in(jax.random.key(seed), step)
        losses = model.apply({"params": stop_gradient_where(params, frozen)}, images, batch["text"], None, key,
                             method="losses")
        total = losses.pop("total")
        return total, {"logit_scale": params["logit_scale"], **{f"loss_{name}": v for name, v in losses.items()}}

    return jax.value_and_grad(loss_fn, has_aux=True)


def caption_tokens(text: jax.Array, eot_id: int) -> jax.Array:
    """bool `[B, L]`: the tokens of each caption in `text [B, L]`, up to and including its first `eot_id` (what
    follows is padding, whatever id pads it: OpenCLIP's BPE pads with id 0, the token "!")."""
    ends = jnp.cumsum(text == eot_id, axis=1)
    return (ends == 0) | ((ends == 1) & (text == eot_id))


def _captioning_value_and_grad(model: Flamingo, mesh: Mesh, image_mean, image_std, accum_steps: int,
                               frozen: Sequence[str], eot_id: int) -> Callable:
    """`(params, batch, step) -> ((loss, {}), grads)`: the mean next-token cross-entropy of every caption token
    (`caption_tokens`) read after its image's token (`captioning_inputs`): the sum over the batch's caption tokens
    divided by their count, summed over `accum_steps` micro-batches (`make_summed_value_and_grad`)."""
    media = model.config.media_token_id

    @jax.named_scope("loss")
    def summed_loss(params, batch: Batch, token_count):
        images = normalize_images(batch["image"], image_mean, image_std)[:, None]  # one image per caption
        text = batch["text"]
        logits = model.apply({"params": stop_gradient_where(params, frozen)}, images, captioning_inputs(text, media))
        counted = caption_tokens(text, eot_id).astype(jnp.float32)
        return jnp.sum(negative_log_likelihood(logits, text) * counted) / token_count

    def value_and_grad(params, batch: Batch, step):
        token_count = jnp.maximum(jnp.sum(caption_tokens(batch["text"], eot_id)), 1).astype(jnp.float32)
        value, grads = make_summed_value_and_grad(lambda p, micro: summed_loss(p, micro, token_count), accum_steps,
                                                  batch_sharding(mesh))(params, batch)
        return (value, {}), grads

    return value_and_grad


def jit_train_step(train_step: Callable, state_sharding: TrainState, mesh: Mesh) -> Callable:
    """Jit with the state's shardings in and out, the batch split over `data × fsdp`,
    replicated metrics, and the old state's buffers donated."""
    return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding(mesh)),
                   out_shardings=(state_sharding, replicated(mesh)), donate_argnums=0)
