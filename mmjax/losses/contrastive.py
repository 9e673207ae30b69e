"""Contrastive image–text losses: CLIP (InfoNCE) and SigLIP (sigmoid), plain and sharded.

All functions are pure. Embeddings are L2-normalised `[B, D]` arrays; row `i` of the
image batch is paired with row `i` of the text batch.

Positives. By default the only positive of image `i` is caption `i` (the diagonal).
With attribute labels (int `[B, K]`, one column per attribute) caption `j` is a
positive of image `i` whenever every attribute the caption names matches the
image; a negative text label is a wildcard ("the caption does not name this
attribute"), see `pair_positives`. Without labels the global row index is used as
the single label, so the diagonal case runs the same code.

Sharded forms run inside a jitted step whose batch is sharded over the mesh axes
`batch_axes`; they never build the global `[B, B]` logit matrix on one device:
- `sharded_clip_loss` all-gathers the other tower (and its labels) and computes the
  local `[b, B]` rows of both directions;
- `sharded_sigmoid_loss` passes text blocks (with their labels) round a
  `lax.ppermute` ring, one `[b, b]` block at a time. Because the labels travel with
  their block, positives (including the diagonal) are found by comparing labels,
  not by tracking which device's block is held.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

CLIP_MAX_SCALE = 100.0


def pair_positives(image_labels: jax.Array, text_labels: jax.Array) -> jax.Array:
    """Which captions describe which images.

    Args:
      image_labels: int `[B_img, K]`, the attributes of each image.
      text_labels: int `[B_txt, K]`, the attributes each caption names; a negative
        value is a wildcard (the caption does not name that attribute).

    Returns:
      bool `[B_img, B_txt]`: entry `[i, j]` is True when, for every `k`,
      `text_labels[j, k] < 0` or `text_labels[j, k] == image_labels[i, k]`.
    """
    image_labels = image_labels[:, None, :]
    text_labels = text_labels[None, :, :]
    return jnp.all((text_labels < 0) | (text_labels == image_labels), axis=-1)


def _similarities(queries: jax.Array, keys: jax.Array) -> jax.Array:
    """`[n, D] x [m, D] -> [n, m]` dot products, accumulated in float32."""
    return jnp.einsum("nd,md->nm", queries, keys, preferred_element_type=jnp.float32)


def _soft_cross_entropy_sum(logits: jax.Array, positives: jax.Array) -> jax.Array:
    """Sum over rows of the cross-entropy of `softmax(logits[r])` against the uniform
    distribution over that row's positives.

    Args:
      logits: float `[R, C]`.
      positives: bool `[R, C]`. A row with no positive contributes 0.

    Returns:
      float scalar.
    """
    positives = positives.astype(logits.dtype)
    targets = positives / jnp.maximum(positives.sum(axis=-1, keepdims=True), 1.0)
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1))


def _sigmoid_loss_sum(logits: jax.Array, positives: jax.Array) -> jax.Array:
    """`-sum log_sigmoid(z * logits)` with `z = +1` on positives and `-1` elsewhere."""
    signs = jnp.where(positives, 1.0, -1.0).astype(logits.dtype)
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits))


def _clip_scale(logit_scale: jax.Array) -> jax.Array:
    """`min(exp(logit_scale), 100)`; the gradient is 0 above the clamp."""
    return jnp.minimum(jnp.exp(logit_scale), CLIP_MAX_SCALE)


def _default_labels(
    image_emb: jax.Array,
    text_emb: jax.Array,
    image_labels: jax.Array | None,
    text_labels: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
    """The given labels, or the global row index `[B, 1]` for both towers (the diagonal)."""
    if (image_labels is None) != (text_labels is None):
        raise ValueError("give both image_labels and text_labels, or neither")
    if image_labels is None:
        if image_emb.shape[0] != text_emb.shape[0]:
            raise ValueError(
                f"without labels the batches must pair up: {image_emb.shape[0]} images, "
                f"{text_emb.shape[0]} captions"
            )
        row_index = jnp.arange(image_emb.shape[0], dtype=jnp.int32)[:, None]
        return row_index, row_index
    return image_labels, text_labels


def _axis_tuple(batch_axes: str | Sequence[str]) -> tuple[str, ...]:
    return (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)


def clip_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    image_labels: jax.Array | None = None,
    text_labels: jax.Array | None = None,
) -> jax.Array:
    """CLIP (InfoNCE) loss, mean of the image→text and text→image cross-entropies.

    `logits = min(exp(logit_scale), 100) * image_emb @ text_emb.T`. Image→text: row `i`
    of `softmax(logits)` against the uniform distribution over the captions that are
    positives of image `i`; text→image: column `j` against the images that caption `j`
    is a positive of. Without labels this is the usual diagonal loss.

    Args:
      image_emb: float `[B, D]`, L2-normalised.
      text_emb: float `[B, D]`, L2-normalised.
      logit_scale: float scalar, log of the inverse temperature.
      image_labels: optional int `[B, K]` attributes of each image.
      text_labels: optional int `[B, K]` attributes named by each caption, `< 0` for
        "not named" (see `pair_positives`). Give both label arrays or neither.

    Returns:
      float32 scalar.
    """
    image_labels, text_labels = _default_labels(image_emb, text_emb, image_labels, text_labels)
    logits = _clip_scale(logit_scale) * _similarities(image_emb, text_emb)
    positives = pair_positives(image_labels, text_labels)
    image_to_text = _soft_cross_entropy_sum(logits, positives) / image_emb.shape[0]
    text_to_image = _soft_cross_entropy_sum(logits.T, positives.T) / text_emb.shape[0]
    return (image_to_text + text_to_image) / 2


def sigmoid_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    logit_bias: jax.Array,
    image_labels: jax.Array | None = None,
    text_labels: jax.Array | None = None,
) -> jax.Array:
    """SigLIP loss: an independent binary classification for every image–caption pair.

    `logits = exp(logit_scale) * image_emb @ text_emb.T + logit_bias`;
    `loss = -sum_ij log_sigmoid(z_ij * logits_ij) / B` with `z_ij = +1` when caption `j`
    is a positive of image `i` (the diagonal without labels) and `-1` otherwise.

    Args:
      image_emb: float `[B, D]`, L2-normalised.
      text_emb: float `[B, D]`, L2-normalised.
      logit_scale: float scalar (SigLIP initialises it to `log 10`).
      logit_bias: float scalar (SigLIP initialises it to `-10`).
      image_labels, text_labels: optional int `[B, K]`, as in `clip_loss`.

    Returns:
      float32 scalar.
    """
    image_labels, text_labels = _default_labels(image_emb, text_emb, image_labels, text_labels)
    logits = jnp.exp(logit_scale) * _similarities(image_emb, text_emb) + logit_bias
    positives = pair_positives(image_labels, text_labels)
    return _sigmoid_loss_sum(logits, positives) / image_emb.shape[0]


def sharded_clip_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    image_labels: jax.Array | None = None,
    text_labels: jax.Array | None = None,
    *,
    mesh: Mesh,
    batch_axes: str | Sequence[str] = ("data", "fsdp"),
) -> jax.Array:
    """`clip_loss` with the batch sharded over the mesh axes `batch_axes`.

    Each device all-gathers the other tower's embeddings and labels, computes its
    `[b, B]` image→text rows and its `[b, B]` text→image rows (`b = B / n_devices`),
    and the per-device sums are `psum`-ed. Memory per device: `[B, D]` gathered
    embeddings and `[b, B]` logits, never `[B, B]`. Values and gradients equal
    `clip_loss` on the same global arrays.

    Args:
      image_emb, text_emb: float `[B, D]`, batch dim sharded over `batch_axes`.
      logit_scale: float scalar, replicated.
      image_labels, text_labels: optional int `[B, K]`, as in `clip_loss`.
      mesh: the device mesh.
      batch_axes: mesh axis name(s) the batch dim is sharded over, major to minor, as
        in `PartitionSpec(batch_axes)`.

    Returns:
      float32 scalar, replicated.
    """
    batch_axes = _axis_tuple(batch_axes)
    image_labels, text_labels = _default_labels(image_emb, text_emb, image_labels, text_labels)

    def local_loss_sum(image_emb, text_emb, logit_scale, image_labels, text_labels):
        all_image_emb = jax.lax.all_gather(image_emb, batch_axes, tiled=True)
        all_text_emb = jax.lax.all_gather(text_emb, batch_axes, tiled=True)
        all_image_labels = jax.lax.all_gather(image_labels, batch_axes, tiled=True)
        all_text_labels = jax.lax.all_gather(text_labels, batch_axes, tiled=True)
        scale = _clip_scale(logit_scale)
        image_to_text = _soft_cross_entropy_sum(
            scale * _similarities(image_emb, all_text_emb),
            pair_positives(image_labels, all_text_labels),
        )
        text_to_image = _soft_cross_entropy_sum(
            scale * _similarities(text_emb, all_image_emb),
            pair_positives(all_image_labels, text_labels).T,
        )
        return jax.lax.psum(image_to_text + text_to_image, batch_axes)

    batch = P(batch_axes)
    loss_sum = jax.shard_map(
        local_loss_sum,
        mesh=mesh,
        in_specs=(batch, batch, P(), batch, batch),
        out_specs=P(),
    )(image_emb, text_emb, logit_scale, image_labels, text_labels)
    return loss_sum / (2 * image_emb.shape[0])


def sharded_sigmoid_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    logit_bias: jax.Array,
    image_labels: jax.Array | None = None,
    text_labels: jax.Array | None = None,
    *,
    mesh: Mesh,
    batch_axes: str | Sequence[str] = ("data", "fsdp"),
) -> jax.Array:
    """`sigmoid_loss` with the batch sharded over the mesh axes `batch_axes`.

    A ring over the `n` devices of `batch_axes`: each device scores its `[b, D]`
    images against the `[b, D]` text block it holds (its own first), then
    `lax.ppermute`s that block and its labels to the next device; after `n` blocks
    (a `lax.scan` of `n - 1` shifts, so compile time does not grow with `n`) every
    image has met every caption. Positives are found from the labels that travel with
    each block, so the diagonal needs no bookkeeping. The backward pass is the
    reverse ring (the transpose of `ppermute`). Values and gradients equal
    `sigmoid_loss` on the same global arrays.

    Args:
      image_emb, text_emb: float `[B, D]`, batch dim sharded over `batch_axes`.
      logit_scale, logit_bias: float scalars, replicated.
      image_labels, text_labels: optional int `[B, K]`, as in `clip_loss`.
      mesh: the device mesh.
      batch_axes: mesh axis name(s) the batch dim is sharded over, as in
        `sharded_clip_loss`.

    Returns:
      float32 scalar, replicated.
    """
    batch_axes = _axis_tuple(batch_axes)
    num_devices = 1
    for axis in batch_axes:
        num_devices *= mesh.shape[axis]
    ring = [(i, (i + 1) % num_devices) for i in range(num_devices)]
    image_labels, text_labels = _default_labels(image_emb, text_emb, image_labels, text_labels)

    def local_loss_sum(image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels):
        scale = jnp.exp(logit_scale)

        def block_loss(text_block, text_block_labels):
            logits = scale * _similarities(image_emb, text_block) + logit_bias
            return _sigmoid_loss_sum(logits, pair_positives(image_labels, text_block_labels))

        def shift_and_score(carry, _):
            text_block, text_block_labels, total = carry
            text_block, text_block_labels = jax.lax.ppermute(
                (text_block, text_block_labels), batch_axes, ring
            )
            total = total + block_loss(text_block, text_block_labels)
            return (text_block, text_block_labels, total), None

        own = block_loss(text_emb, text_labels)
        (_, _, total), _ = jax.lax.scan(
            shift_and_score, (text_emb, text_labels, own), length=num_devices - 1
        )
        return jax.lax.psum(total, batch_axes)

    batch = P(batch_axes)
    loss_sum = jax.shard_map(
        local_loss_sum,
        mesh=mesh,
        in_specs=(batch, batch, P(), P(), batch, batch),
        out_specs=P(),
    )(image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels)
    return loss_sum / image_emb.shape[0]

