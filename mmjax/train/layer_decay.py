"""Layer-wise learning-rate decay (`config.optim.layer_decay`): in fine-tuning, the lower layers of each tower,
which hold the most general features, move least.

With decay `d`, a tower of `L` transformer layers (`image_encoder`, `text_encoder`, FLAVA's
`multimodal_encoder`) scales the updates of

- its embeddings (patch / token / position embeddings, class and mask tokens, the pre-norm; the multimodal
  encoder's input projections, fusion token and modality embeddings) by `d ** (L + 1)`,
- its layer `i` (0-based) by `d ** (L - i)`: the last layer by `d`,
- whatever follows its last layer (the final norm, SigLIP's attention-pooling head) by 1,

and the parameters outside the towers (output projections, logit scale and bias, FLAVA's heads) by 1. This is
BEiT's convention (FT-CLIP's and EVA-CLIP's fine-tuning too, here with one decay for every tower), each tower
counted by its own depth; timm's `layer_decay` differs only in giving the final norm the last layer's factor.
The update that is scaled is AdamW's whole step, weight decay included, as a PyTorch parameter group's
learning-rate scale does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

# The parameters of a tower that come before its first layer (names of its direct children).
EMBEDDINGS = frozenset({"patch_embed", "token_embed", "pos_embed", "cls", "ln_pre", "mask_token", "fusion_token",
                        "modality_embed", "image_proj", "text_proj"})
_NUMBERED_LAYER = re.compile(r"layers_(\d+)$")


def _layers(tree: Any) -> Mapping | None:
    """The children of a tower's `encoder` when `tree` is a tower (its encoder holds `layers_<i>` or the
    scanned `layers`), else None."""
    encoder = tree.get("encoder") if isinstance(tree, Mapping) else None
    if not isinstance(encoder, Mapping):
        return None
    return encoder if "layers" in encoder or any(_NUMBERED_LAYER.match(k) for k in encoder) else None


def tower_depths(params: Any) -> dict[str, int]:
    """`{tower name: number of layers}` for the top-level modules of `params` that are towers."""
    depths = {}
    for name, tree in params.items():
        layers = _layers(tree)
        if layers is None:
            continue
        if "layers" in layers:  # scanned: every leaf stacks the layers on its first axis
            depths[name] = jax.tree.leaves(layers["layers"])[0].shape[0]
        else:
            depths[name] = sum(1 for k in layers if _NUMBERED_LAYER.match(k))
    return depths


def _scale(path: tuple[str, ...], leaf: Any, depths: dict[str, int], decay: float) -> float | np.ndarray:
    """The multiplier of the update of the parameter at `path` (a float, or `[L, 1, …]` for a scanned leaf)."""
    if path[0] not in depths or len(path) < 2:
        return 1.0
    depth = depths[path[0]]
    if path[1] == "encoder":
        if path[2] == "layers":
            return (decay ** (depth - np.arange(depth, dtype=np.float32))).reshape((depth,) + (1,) * (leaf.ndim - 1))
        numbered = _NUMBERED_LAYER.match(path[2])
        return decay ** (depth - int(numbered.group(1))) if numbered else 1.0
    return decay ** (depth + 1) if path[1] in EMBEDDINGS else 1.0


def layer_scales(params: Any, decay: float) -> Any:
    """A tree like `params` (nested dicts of arrays) with each parameter's update multiplier."""
    depths = tower_depths(params)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _scale(tuple(k.key for k in path), leaf, depths, decay), params)


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
    """Multiplies each update by `layer_scales(updates, decay)`; no state."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, layer_scales(updates, decay)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def describe(params: Any, decay: float) -> str:
    """One line for the run's start: each tower's depth and its smallest multiplier (the embeddings')."""
    towers = ", ".join(f"{name} ({depth} layers, embeddings ×{decay ** (depth + 1):.3g})"
                       for name, depth in tower_depths(params).items())
    return f"layer decay {decay}: {towers}; the last layer ×{decay}, final norms, heads and output projections ×1"
