"""Contrastive image–text losses: CLIP (InfoNCE) and SigLIP (sigmoid), plain and sharded.

All functions are pure. Embeddings are L2-normalised `[B, D]` arrays; row `i` of the
image batch is paired with row `i` of the text batch.

Positives. By default the only positive of image `i` is caption `i` (the diagonal).
With attribute labels (int `[B, K]`, one column per attribute) caption `j` is a
positive of image `i` whenever every attribute the caption names matches the
image; a negative text label is a wildcard ("the caption does not name this
attribute"), see `pair_positives`. Without labels the global row index is used as
the single label, so the diagonal case runs the same code.

Memory. Every loss is computed in `[block_size, block_size]` tiles of the logit matrix
by the kernels of `mmjax.losses.blocked`: an online log-sum-exp forward and a custom VJP
that recomputes each tile in the backward pass (Inf-CL), so neither pass holds more than
one tile of logits. `block_size=None` picks `DEFAULT_BLOCK_SIZE` (4096): the whole matrix
in one tile up to B = 4096.

Sharded forms run inside a jitted step whose batch is sharded over the mesh axes
`batch_axes`; they never build the global `[B, B]` logit matrix on one device:
- `sharded_clip_loss` all-gathers the other tower (and its labels) and computes the
  local `[b, B]` rows of both directions, one tile at a time;
- `sharded_sigmoid_loss` passes text blocks (with their labels) round a
  `lax.ppermute` ring, one `[b, b]` block (in tiles) at a time, and runs the ring
  again in the backward pass (`mmjax.losses.ring`). Because the labels travel with
  their block, positives (including the diagonal) are found by comparing labels,
  not by tracking which device's block is held.
"""

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from mmjax.losses.blocked import DEFAULT_BLOCK_SIZE, IMAGE_TO_TEXT, TEXT_TO_IMAGE, clip_sums, sigmoid_sum, vary_like
from mmjax.losses.positives import default_labels, pair_positives
from mmjax.losses.ring import ring_sigmoid_sum

__all__ = ["CLIP_MAX_SCALE", "clip_loss", "clip_scale", "pair_positives", "sharded_clip_loss", "sharded_sigmoid_loss",
           "sigmoid_loss"]

CLIP_MAX_SCALE = 100.0


def clip_scale(logit_scale: jax.Array) -> jax.Array:
    """The CLIP loss's similarity multiplier (inverse temperature): `exp(logit_scale)`, with the exponent clamped
    at `log 100`. Above the clamp the gradient is 0; at it (where training clamps the parameter, as OpenCLIP
    does) it is `exp(log 100)`, so the scale can still come down. The exponent is clamped before `exp`, so that
    a `logit_scale` past float32's `exp` range (≈ 88.7) gives that 0 too and not `0 × inf = NaN`."""
    limit = math.log(CLIP_MAX_SCALE)
    return jnp.exp(jnp.where(logit_scale > limit, limit, logit_scale))  # a NaN stays NaN


def _float32_scalars(**values) -> list[jax.Array]:
    """`logit_scale` / `logit_bias` as float32 scalars, the dtype of the loss kernels' carries (a float64 one,
    under `jax_enable_x64`, failed inside `lax.scan`; its gradient comes back as float64). A one-line
    ValueError for one that is not a scalar (a `[1]` array would pass the forward pass and fail in the
    gradient, deep inside JAX)."""
    for name, value in values.items():
        if jnp.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    return [jnp.asarray(value).astype(jnp.float32) for value in values.values()]


def _block_size(block_size: int | None) -> int:
    if block_size is None:
        return DEFAULT_BLOCK_SIZE
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} must be a positive int or None")
    return int(block_size)


def _axis_tuple(batch_axes: str | Sequence[str], mesh: Mesh) -> tuple[str, ...]:
    """`batch_axes` as a tuple; a one-line ValueError when the mesh lacks one of them."""
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    missing = [axis for axis in axes if axis not in mesh.shape]
    if missing:
        raise ValueError(f"batch_axes {axes} name {missing[0]!r}, which is not an axis of the mesh "
                         f"{dict(mesh.shape)}")
    return axes


def _batch_devices(batch_axes: tuple[str, ...], mesh: Mesh, image_emb: jax.Array, text_emb: jax.Array) -> int:
    """The number of devices the batch is split over; a one-line ValueError when a tower's rows do not split
    evenly over them (shard_map's own error names its internal arguments)."""
    num_devices = math.prod(mesh.shape[axis] for axis in batch_axes)
    for tower, emb in (("images", image_emb), ("captions", text_emb)):
        if jnp.ndim(emb) >= 1 and emb.shape[0] % num_devices:
            raise ValueError(f"a batch of {emb.shape[0]} {tower} does not split evenly over the {num_devices} "
                             f"devices of the mesh axes {batch_axes}: use a multiple of {num_devices}")
    return num_devices


def clip_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    image_labels: jax.Array | None = None,
    text_labels: jax.Array | None = None,
    *,
    block_size: int | None = None,
) -> jax.Array:
    """CLIP (InfoNCE) loss, mean of the image→text and text→image cross-entropies.

    `logits = min(exp(logit_scale), 100) * image_emb @ text_emb.T`. Image→text: row `i`
    of `softmax(logits)` against the uniform distribution over the captions that are
    positives of image `i`; text→image: column `j` against the images that caption `j`
    is a positive of. Without labels this is the usual diagonal loss. An image (caption)
    without any positive adds 0 to its direction's sum but still counts in its `B`.

    Args:
      image_emb: float `[B, D]`, L2-normalised.
      text_emb: float `[B, D]`, L2-normalised.
      logit_scale: float scalar, log of the inverse temperature.
      image_labels: optional int `[B, K]` attributes of each image.
      text_labels: optional int `[B, K]` attributes named by each caption, `< 0` for
        "not named" (see `pair_positives`). Give both label arrays or neither.
      block_size: rows and columns per tile of the logit matrix (None: `DEFAULT_BLOCK_SIZE`).

    Returns:
      float32 scalar.
    """
    logit_scale, = _float32_scalars(logit_scale=logit_scale)
    image_labels, text_labels = default_labels(image_emb, text_emb, image_labels, text_labels)
    image_to_text, text_to_image = clip_sums(image_emb, text_emb, clip_scale(logit_scale), image_labels,
                                             text_labels, (IMAGE_TO_TEXT, TEXT_TO_IMAGE), _block_size(block_size))
    return (image_to_text / image_emb.shape[0] + text_to_image / text_emb.shape[0]) / 2


def sigmoid_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    logit_bias: jax.Array,
    image_labels: jax.Array | None = None,
    text_labels: jax.Array | None = None,
    *,
    block_size: int | None = None,
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
      block_size: rows and columns per tile of the logit matrix (None: `DEFAULT_BLOCK_SIZE`).

    Returns:
      float32 scalar.
    """
    logit_scale, logit_bias = _float32_scalars(logit_scale=logit_scale, logit_bias=logit_bias)
    image_labels, text_labels = default_labels(image_emb, text_emb, image_labels, text_labels)
    total = sigmoid_sum(image_emb, text_emb, jnp.exp(logit_scale), logit_bias, image_labels, text_labels,
                        _block_size(block_size))
    return total / image_emb.shape[0]


def sharded_clip_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    image_labels: jax.Array | None = None,
    text_labels: jax.Array | None = None,
    *,
    mesh: Mesh,
    batch_axes: str | Sequence[str] = ("data", "fsdp"),
    block_size: int | None = None,
) -> jax.Array:
    """`clip_loss` with the batch sharded over the mesh axes `batch_axes`.

    Each device all-gathers the other tower's embeddings and labels, computes its
    `[b, B]` image→text rows and its `[b, B]` text→image rows (`b = B / n_devices`)
    tile by tile with `clip_sums`, and the per-device sums are `psum`-ed. Memory per
    device: `[B, D]` gathered embeddings and one `[min(b, block), min(B, block)]` tile of
    logits, never `[B, B]`. The gradient w.r.t. the gathered embeddings returns to their
    devices through the transpose of `all_gather` (a reduce-scatter). Values and gradients
    equal `clip_loss` on the same global arrays.

    Args:
      image_emb, text_emb: float `[B, D]`, batch dim sharded over `batch_axes`.
      logit_scale: float scalar, replicated.
      image_labels, text_labels: optional int `[B, K]`, as in `clip_loss`.
      mesh: the device mesh.
      batch_axes: mesh axis name(s) the batch dim is sharded over, major to minor, as
        in `PartitionSpec(batch_axes)`.
      block_size: rows and columns per tile (None: `DEFAULT_BLOCK_SIZE`).

    Returns:
      float32 scalar, replicated.
    """
    batch_axes = _axis_tuple(batch_axes, mesh)
    block_size = _block_size(block_size)
    _batch_devices(batch_axes, mesh, image_emb, text_emb)
    logit_scale, = _float32_scalars(logit_scale=logit_scale)
    image_labels, text_labels = default_labels(image_emb, text_emb, image_labels, text_labels)

    def local_loss_sums(image_emb, text_emb, logit_scale, image_labels, text_labels):
        def gather(x):
            return vary_like(jax.lax.all_gather(x, batch_axes, tiled=True), image_emb)

        scale = vary_like(clip_scale(logit_scale), image_emb)
        image_to_text, _ = clip_sums(image_emb, gather(text_emb), scale, image_labels, gather(text_labels),
                                     (IMAGE_TO_TEXT,), block_size)
        _, text_to_image = clip_sums(gather(image_emb), text_emb, scale, gather(image_labels), text_labels,
                                     (TEXT_TO_IMAGE,), block_size)
        return jax.lax.psum((image_to_text, text_to_image), batch_axes)

    batch = P(batch_axes)
    image_to_text, text_to_image = jax.shard_map(
        local_loss_sums,
        mesh=mesh,
        in_specs=(batch, batch, P(), batch, batch),
        out_specs=(P(), P()),
    )(image_emb, text_emb, logit_scale, image_labels, text_labels)
    return (image_to_text / image_emb.shape[0] + text_to_image / text_emb.shape[0]) / 2


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
    block_size: int | None = None,
) -> jax.Array:
    """`sigmoid_loss` with the batch sharded over the mesh axes `batch_axes`.

    A ring over the `n` devices of `batch_axes` (`mmjax.losses.ring`): each device
    scores its `[b, D]` images against the `[b, D]` text block it holds (its own
    first, in tiles of `block_size`), then `lax.ppermute`s that block and its labels to
    the next device; after `n` blocks (a `lax.scan` of `n - 1` shifts, so compile time
    does not grow with `n`) every image has met every caption. Positives are found
    from the labels that travel with each block, so the diagonal needs no
    bookkeeping. The backward pass runs the ring again with a custom VJP: the
    gradient w.r.t. each text block travels round the ring with the block and a last
    shift brings it home, so no device keeps the `n` blocks of the forward pass.
    Values and gradients equal `sigmoid_loss` on the same global arrays.

    Args:
      image_emb, text_emb: float `[B, D]`, batch dim sharded over `batch_axes`.
      logit_scale, logit_bias: float scalars, replicated.
      image_labels, text_labels: optional int `[B, K]`, as in `clip_loss`.
      mesh: the device mesh.
      batch_axes: mesh axis name(s) the batch dim is sharded over, as in
        `sharded_clip_loss`.
      block_size: rows and columns per tile (None: `DEFAULT_BLOCK_SIZE`).

    Returns:
      float32 scalar, replicated.
    """
    batch_axes = _axis_tuple(batch_axes, mesh)
    block_size = _block_size(block_size)
    num_devices = _batch_devices(batch_axes, mesh, image_emb, text_emb)
    logit_scale, logit_bias = _float32_scalars(logit_scale=logit_scale, logit_bias=logit_bias)
    image_labels, text_labels = default_labels(image_emb, text_emb, image_labels, text_labels)

    def local_loss_sum(image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels):
        total = ring_sigmoid_sum(image_emb, text_emb, jnp.exp(logit_scale), logit_bias, image_labels, text_labels,
                                 axes=batch_axes, num_devices=num_devices, block_size=block_size)
        return jax.lax.psum(total, batch_axes)

    batch = P(batch_axes)
    loss_sum = jax.shard_map(
        local_loss_sum,
        mesh=mesh,
        in_specs=(batch, batch, P(), P(), batch, batch),
        out_specs=P(),
    )(image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels)
    return loss_sum / image_emb.shape[0]

