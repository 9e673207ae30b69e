"""Gradient accumulation that equals the full-batch gradient: of a contrastive loss (GradCache), of a summed loss.

A contrastive loss couples every image with every caption of the batch, so summing the
gradients of per-micro-batch losses optimises a different (smaller-batch) objective.
GradCache (Gao et al. 2021, arXiv:2101.06983; OpenCLIP's `--accum-freq`) keeps the
full-batch objective in two passes over `accum_steps` micro-batches:

1. embed every micro-batch without keeping activations (`lax.map`), giving the full-batch
   embeddings `[B, E]` (`B × E` floats per tower, small);
2. evaluate the loss on the full batch, with its gradient w.r.t. all embeddings and the
   loss's own parameters (`aux`: logit scale / bias);
3. embed each micro-batch again under `jax.vjp` and pull its cached embedding gradients
   back to the parameters, summing over the micro-batches (`lax.scan`).

The towers' activations are alive for one micro-batch at a time (pass 3 is one forward
and one backward per micro-batch, so the step costs one extra forward pass). The result
equals the full-batch gradient up to float rounding.

A loss that is a sum of per-example terms (the captioner's next-token loss, its sum divided by
the whole batch's token count) needs no cache: `make_summed_value_and_grad` adds each
micro-batch's value and gradient.

Micro-batch `k` takes rows `k, k + A, k + 2A, …` of the batch (`A = accum_steps`): with the
batch split over devices in contiguous slices, every micro-batch keeps `B / (A n)` rows
on each of the `n` devices, so no rows move between devices.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

Batch = dict[str, jax.Array]
# embed_fn(params, batch) -> (image_emb [b, E], text_emb [b, E], aux {name: scalar})
EmbedFn = Callable[[Any, Batch], tuple[jax.Array, jax.Array, dict[str, jax.Array]]]
# loss_fn(image_emb [B, E], text_emb [B, E], aux, batch) -> scalar
LossFn = Callable[[jax.Array, jax.Array, dict[str, jax.Array], Batch], jax.Array]


def split_micro_batches(tree: Any, accum_steps: int) -> Any:
    """Every leaf `[B, ...] -> [A, B / A, ...]`; micro-batch `k` holds rows `k, k + A, …`."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1),
                        tree)


def merge_micro_batches(tree: Any) -> Any:
    """The inverse of `split_micro_batches`: every leaf `[A, B / A, ...] -> [B, ...]`."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


def _batch_devices(sharding: NamedSharding | None) -> int:
    """How many devices the leading dim of `sharding` is split over."""
    if sharding is None or not sharding.spec or sharding.spec[0] is None:
        return 1
    axes = (sharding.spec[0],) if isinstance(sharding.spec[0], str) else sharding.spec[0]
    return math.prod(sharding.mesh.shape[axis] for axis in axes)


def _constrain(tree: Any, sharding: NamedSharding | None) -> Any:
    """Every `[A, B / A, ...]` leaf of `tree` with its micro-batch dim split as `sharding` splits a batch."""
    if sharding is None:
        return tree
    micro_batch_sharding = NamedSharding(sharding.mesh, P(None, *sharding.spec))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, micro_batch_sharding), tree)


def micro_batches(batch: Batch, accum_steps: int, sharding: NamedSharding | None = None) -> Batch:
    """`batch` as `accum_steps` micro-batches (`split_micro_batches`), each split over the batch devices."""
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    devices = _batch_devices(sharding)
    if batch_size % (accum_steps * devices):
        raise ValueError(f"batch size {batch_size} must be a multiple of accum_steps={accum_steps} × "
                         f"{devices} devices (each micro-batch is split over the batch devices)")
    return _constrain(split_micro_batches(batch, accum_steps), sharding)


def check_accum_steps(accum_steps: int) -> None:
    """A one-line ValueError unless `accum_steps` is a positive int."""
    if not isinstance(accum_steps, int) or accum_steps < 1:
        raise ValueError(f"accum_steps={accum_steps!r} must be a positive int")


def make_value_and_grad(embed_fn: EmbedFn, loss_fn: LossFn, accum_steps: int = 1,
                        micro_batch_sharding: NamedSharding | None = None) -> Callable:
    """`(params, batch) -> ((loss, aux), grads)`, the full-batch value and gradient of
    `loss_fn(*embed_fn(params, batch), batch)` w.r.t. `params`.

    Args:
      embed_fn: `(params, batch) -> (image_emb, text_emb, aux)`; `aux` holds the loss's
        parameters (scalars that do not depend on the batch).
      loss_fn: `(image_emb, text_emb, aux, batch) -> scalar` on the full batch.
      accum_steps: micro-batches per step (`1`: plain `jax.value_and_grad`). The batch size
        must be a multiple of it.
      micro_batch_sharding: optional sharding of one micro-batch's leading dim (e.g. the
        batch sharding of the mesh), applied to the `[A, B / A, ...]` micro-batches as
        `P(None, *spec)`.

    Returns:
      A function of `(params, batch)`, for use inside `jax.jit`.
    """
    check_accum_steps(accum_steps)

    def full_batch(params, batch: Batch):
        def objective(params):
            image_emb, text_emb, aux = embed_fn(params, batch)
            return loss_fn(image_emb, text_emb, aux, batch), aux

        return jax.value_and_grad(objective, has_aux=True)(params)

    if accum_steps == 1:
        return full_batch

    constrain = functools.partial(_constrain, sharding=micro_batch_sharding)

    def accumulated(params, batch: Batch):
        micro_batched = micro_batches(batch, accum_steps, micro_batch_sharding)

        # Pass 1: embeddings of every micro-batch, no activations kept.
        image_emb, text_emb, aux = jax.lax.map(lambda micro: embed_fn(params, micro), micro_batched)
        image_emb, text_emb = merge_micro_batches(constrain((image_emb, text_emb)))
        aux = jax.tree.map(lambda x: x[0], aux)

        # Pass 2: the full-batch loss and its gradient w.r.t. the embeddings and aux.
        value, (d_image, d_text, d_aux) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(
            image_emb, text_emb, aux, batch)
        d_image, d_text = constrain(split_micro_batches((d_image, d_text), accum_steps))

        # Pass 3: pull the cached gradients back through each micro-batch's towers. aux's
        # gradient enters once (with micro-batch 0): aux does not depend on the batch.
        def pull_back(grads, inputs):
            index, micro, d_image_micro, d_text_micro = inputs
            _, vjp = jax.vjp(lambda p: embed_fn(p, micro), params)
            d_aux_micro = jax.tree.map(lambda g: jnp.where(index == 0, g, jnp.zeros_like(g)), d_aux)
            (micro_grads,) = vjp((d_image_micro, d_text_micro, d_aux_micro))
            return jax.tree.map(jnp.add, grads, micro_grads), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, _ = jax.lax.scan(pull_back, zeros, (jnp.arange(accum_steps), micro_batched, d_image, d_text))
        return (value, aux), grads

    return accumulated


def make_summed_value_and_grad(term_fn: Callable[[Any, Batch], jax.Array], accum_steps: int = 1,
                               micro_batch_sharding: NamedSharding | None = None) -> Callable:
    """`(params, batch) -> (value, grads)` of a loss that is a sum of per-example terms, `term_fn(params, batch)`
    (a scalar; e.g. a token-level loss's sum divided by the whole batch's token count, which the caller computes
    first): the sum of `term_fn` over the `accum_steps` micro-batches of `batch` and its gradient, one micro-batch's
    activations alive at a time (`lax.scan`). Unlike a contrastive loss, nothing couples the examples, so this is
    the full-batch value and gradient, up to float rounding, without GradCache's extra forward pass.
    `micro_batch_sharding` as in `make_value_and_grad`."""
    check_accum_steps(accum_steps)
    value_and_grad = jax.value_and_grad(term_fn)
    if accum_steps == 1:
        return value_and_grad

    def accumulated(params, batch: Batch):
        def add_micro_batch(carry, micro):
            value, grads = value_and_grad(params, micro)
            return jax.tree.map(jnp.add, carry, (value, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (value, grads), _ = jax.lax.scan(add_micro_batch, zeros,
                                         micro_batches(batch, accum_steps, micro_batch_sharding))
        return value, grads

    return accumulated
