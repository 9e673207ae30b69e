"""Which captions are positives of which images: attribute labels with wildcards."""

import jax
import jax.numpy as jnp


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


def default_labels(
    image_emb: jax.Array,
    text_emb: jax.Array,
    image_labels: jax.Array | None,
    text_labels: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
    """The given labels, or the global row index `[B, 1]` for both towers (the diagonal)."""
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"embeddings must be [B, D] of one width D, got image_emb {list(image_emb.shape)} and "
                         f"text_emb {list(text_emb.shape)}")
    if image_emb.shape[0] == 0 or text_emb.shape[0] == 0:
        raise ValueError(f"a contrastive loss needs at least one image and one caption, got {image_emb.shape[0]} "
                         f"images and {text_emb.shape[0]} captions")
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
    shapes_ok = (image_labels.ndim == 2 and text_labels.ndim == 2 and image_labels.shape[1] == text_labels.shape[1]
                 and image_labels.shape[0] == image_emb.shape[0] and text_labels.shape[0] == text_emb.shape[0])
    if not shapes_ok:
        raise ValueError(
            f"labels must be [B, K] for both towers: image_labels {image_labels.shape} for {image_emb.shape[0]} "
            f"images, text_labels {text_labels.shape} for {text_emb.shape[0]} captions"
        )
    return image_labels, text_labels
