"""The two pieces every token-level loss shares: the negative log-likelihood of class targets, and a mean
over the batch's counted positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def negative_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """`-log softmax(logits)[target]` in float32: `logits [..., V]`, int `targets [...]` → `[...]`."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def weighted_mean(values: jax.Array, weights: jax.Array, total: jax.Array | None = None) -> jax.Array:
    """`Σ values · weights / Σ weights` over every axis, 0 when no weight is set. One sum over the whole batch
    divided by another: a batch sharded over devices gives the same value under `jit`. `total`: the divisor
    instead of `Σ weights` (a larger batch's, of which these values are one micro-batch: the micro-batches' terms
    then add up to that batch's mean)."""
    weights = weights.astype(jnp.float32)
    total = jnp.sum(weights) if total is None else jnp.asarray(total, jnp.float32)
    return jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0)
