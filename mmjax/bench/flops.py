"""Analytic FLOP count of a two-tower training step (matrix multiplications only).

A multiply-add is 2 FLOPs. The backward pass of a matmul costs twice its forward
(the gradients of both operands), except where one operand is data that needs no
gradient (the patch embedding of the input images): there it costs once. Gathers
(token embeddings), element-wise work (norms, activations, softmax) and the
optimizer update are not counted; they are a few per cent of XLA's count.
"""

from __future__ import annotations

from mmjax.models.layers import TransformerSpec
from mmjax.models.two_tower import TwoTowerConfig


def transformer_forward_flops(spec: TransformerSpec, batch: int, length: int) -> dict[str, int]:
    """Forward FLOPs of `spec.depth` blocks on `[batch, length, width]` tokens, by part.

    attention_projections: q, k, v and out `[D, D]` each; attention_scores: `QKᵀ` and
    `softmax·V`, `[T, T]` per head; mlp: `[D, M]` and `[M, D]`.
    """
    tokens, width = batch * length, spec.width
    per_layer = {
        "attention_projections": 2 * tokens * width * width * 4,
        "attention_scores": 2 * 2 * batch * length * length * width,
        "mlp": 2 * 2 * tokens * width * spec.mlp_dim,
    }
    return {name: value * spec.depth for name, value in per_layer.items()}


def map_head_forward_flops(spec: TransformerSpec, batch: int, length: int) -> int:
    """Forward FLOPs of a MAP head (`layers.MapHead`) on `[batch, length, width]`: one probe token's query,
    the tokens' keys and values, its attention over `length` tokens, the output projection and an MLP."""
    width = spec.width
    return (2 * batch * width * width * 2  # the probe's query and the output projection
            + 2 * batch * length * width * width * 2  # keys and values of every token
            + 2 * 2 * batch * length * width  # scores and the weighted sum, for one query
            + 2 * 2 * batch * width * spec.mlp_dim)


def forward_flops(config: TwoTowerConfig, batch: int) -> dict[str, int]:
    """Forward FLOPs of the model and the loss's `[B, B]` logits on `batch` pairs, by part."""
    vision, text = config.vision, config.text
    image_tokens = vision.num_patches + (1 if vision.pool == "cls" else 0)
    parts = {"patch_embed": 2 * batch * vision.num_patches * vision.patch_size ** 2 * 3 * vision.width}
    for tower, spec, length in (("image", vision, image_tokens), ("text", text, text.context_length)):
        for name, value in transformer_forward_flops(spec, batch, length).items():
            parts[f"{tower}_{name}"] = value
    for tower, spec, length in (("image", vision, image_tokens), ("text", text, text.context_length)):
        if spec.pool == "map":
            parts[f"{tower}_map_head"] = map_head_forward_flops(spec, batch, length)
    parts["projections"] = 2 * batch * (vision.width * config.embed_dim * config.image_projection
                                        + text.width * config.embed_dim)
    parts["logits"] = 2 * batch * batch * config.embed_dim
    return parts


def train_step_flops(config: TwoTowerConfig, batch: int) -> dict[str, int]:
    """FLOPs of one training step (forward + backward) by part, and their `total`."""
    parts = {name: value * (2 if name == "patch_embed" else 3) for name, value in forward_flops(config, batch).items()}
    parts["total"] = sum(parts.values())
    return parts
