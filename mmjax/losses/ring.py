"""The SigLIP loss of one device's images against every device's captions, over a `ppermute` ring.

Runs inside `shard_map`. Forward: the device scores its `[b, D]` images against the `[b, D]`
caption block it holds (its own first, blocked by `sigmoid_sum_forward`), then passes the
block and its labels to the next device; after `n` blocks every image has met every caption.

Backward (a custom VJP, so autodiff does not keep the `n` caption blocks of the forward
scan): the ring runs again. The gradient w.r.t. a caption block travels round the ring with
the block: every device adds its images' contribution to it before passing both on, and one
last shift brings the finished gradient home to the device that owns the block. The same
`n - 1` block transfers as the forward pass plus `n` of the gradient; memory per device is
one caption block, its gradient and one `[r, c]` tile of logits.
"""

from __future__ import annotations

import jax

from mmjax.losses.blocked import sigmoid_sum_backward, sigmoid_sum_forward, vary_like


def ring_sigmoid_sum(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, bias: jax.Array,
                     image_labels: jax.Array, text_labels: jax.Array, *, axes: tuple[str, ...], num_devices: int,
                     block_size: int) -> jax.Array:
    """This device's share of the SigLIP loss sum, inside `shard_map` over the mesh axes `axes`.

    Args:
      image_emb, text_emb: float `[b, D]`, this device's rows.
      scale, bias: float32 scalars (`exp(logit_scale)`, `logit_bias`).
      image_labels, text_labels: int `[b, K]`, this device's labels.
      axes: the mesh axes of the batch; `num_devices` their total size.
      block_size: rows / columns per block of the local `[b, b]` logits.

    Returns:
      float32 scalar, device-varying: `-sum log_sigmoid(z * logits)` over this device's images
      and all captions. `psum` it for the loss sum.
    """
    ring = [(i, (i + 1) % num_devices) for i in range(num_devices)]

    def shift(tree):
        return jax.lax.ppermute(tree, axes, ring)

    def forward(image_emb, text_emb, scale, bias, image_labels, text_labels):
        def block_sum(text_block, text_block_labels):
            return sigmoid_sum_forward(image_emb, text_block, scale, bias, image_labels, text_block_labels, block_size)

        def shift_and_score(carry, _):
            text_block, text_block_labels, total = carry
            text_block, text_block_labels = shift((text_block, text_block_labels))
            return (text_block, text_block_labels, total + block_sum(text_block, text_block_labels)), None

        own = block_sum(text_emb, text_labels)
        (_, _, total), _ = jax.lax.scan(shift_and_score, (text_emb, text_labels, own), length=num_devices - 1)
        return total

    def backward(residuals, cotangent):
        image_emb, text_emb, scale, bias, image_labels, text_labels = residuals

        def block_grads(text_block, text_block_labels):
            return sigmoid_sum_backward(image_emb, text_block, scale, bias, image_labels, text_block_labels,
                                        cotangent, block_size)

        def shift_and_grad(carry, _):
            text_block, text_block_labels, d_text_block, grads = carry
            text_block, text_block_labels, d_text_block = shift((text_block, text_block_labels, d_text_block))
            d_image, d_text, d_scale, d_bias = block_grads(text_block, text_block_labels)
            grads = (grads[0] + d_image, grads[1] + d_scale, grads[2] + d_bias)
            return (text_block, text_block_labels, d_text_block + d_text, grads), None

        d_image, d_text, d_scale, d_bias = block_grads(text_emb, text_labels)
        carry = (text_emb, text_labels, d_text, (d_image, d_scale, d_bias))
        (_, _, d_text, (d_image, d_scale, d_bias)), _ = jax.lax.scan(shift_and_grad, carry, length=num_devices - 1)
        d_text = shift(d_text)  # the block held last belongs to the next device
        return (d_image.astype(image_emb.dtype), d_text.astype(text_emb.dtype), d_scale.astype(scale.dtype),
                d_bias.astype(bias.dtype), None, None)

    ring_sum = jax.custom_vjp(forward)
    ring_sum.defvjp(lambda *args: (forward(*args), args), backward)
    scale, bias = vary_like(scale, image_emb), vary_like(bias, image_emb)
    return ring_sum(image_emb, text_emb, scale, bias, image_labels, text_labels)
