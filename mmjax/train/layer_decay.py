"""Layer-wise learning-rate decay (`config.optim.layer_decay`): in fine-tuning, the lower layers of each tower,
which hold the most general features, move least.

With decay `d`, a tower of `L` transformer layers (`image_encoder`, `text_encoder`, FLAVA's
`multimodal_encoder`, Flamingo's `vision`) scales the updates of

- its embeddings (patch / token / position embeddings, class and mask tokens, the pre-norm; the multimodal
  encoder's input projections, fusion token and modality embeddings) by `d ** (L + 1)`,
- its layer `i` (0-based) by `d ** (L - i)`: the last layer by `d`,
- whatever follows its last layer (the final norm, SigLIP's attention-pooling head) by 1,

and the parameters outside the towers (output projections, logit scale and bias, FLAVA's heads, Flamingo's
resampler, gated blocks and language model) by 1. This is
BEiT's convention (FT-CLIP's and EVA-CLIP's fine-tuning too), each tower counted by its own depth; timm's
`layer_decay` differs only in giving the final norm the last layer's factor. `config.optim.image_layer_decay` and
`text_layer_decay`, when set, give the image and text towers their own `d` (EVA-CLIP's `visual_ld` / `text_ld`;
Flamingo's vision tower is an image tower); every other tower (FLAVA's multimodal encoder) and an unset one take
`layer_decay`.
The update that is scaled is AdamW's whole step, weight decay included, as a PyTorch parameter group's
learning-rate scale does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import ml_collections

import jax
import numpy as np
import optax

# The parameters of a tower that come before its first layer (names of its direct children).
EMBEDDINGS = frozenset({"patch_embed", "token_embed", "pos_embed", "cls", "ln_pre", "mask_token", "fusion_token",
                        "modality_embed", "image_proj", "text_proj"})
_NUMBERED_LAYER = re.compile(r"layers_(\d+)$")
# The towers with a decay of their own, and the `config.optim` key that sets it.
TOWER_DECAY_KEYS = {"image_encoder": "image_layer_decay", "vision": "image_layer_decay",
                    "text_encoder": "text_layer_decay"}


def configured_decays(optim: ml_collections.ConfigDict) -> tuple[float, dict[str, float]]:
    """`(decay, per_tower)`: `optim.layer_decay` and the towers whose own key (`TOWER_DECAY_KEYS`) is set. Configs
    written before these keys existed have neither: 1.0 and none."""
    per_tower = {tower: optim[key] for tower, key in TOWER_DECAY_KEYS.items() if optim.get(key) is not None}
    return optim.get("layer_decay", 1.0), per_tower


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


def layer_scales(params: Any, decay: float, per_tower: Mapping[str, float] | None = None) -> Any:
    """A tree like `params` (nested dicts of arrays) with each parameter's update multiplier: tower `t` decays
    by `per_tower[t]` where given, else by `decay`."""
    depths, per_tower = tower_depths(params), per_tower or {}
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _scale(tuple(k.key for k in path), leaf, depths, per_tower.get(path[0].key, decay)),
        params)


def scale_by_layer_decay(decay: float, per_tower: Mapping[str, float] | None = None) -> optax.GradientTransformation:
    """Multiplies each update by `layer_scales(updates, decay, per_tower)`; no state."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, layer_scales(updates, decay, per_tower)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def describe(params: Any, decay: float, per_tower: Mapping[str, float] | None = None) -> str:
    """One line for the run's start: each tower's decay, depth and smallest multiplier (the embeddings')."""
    per_tower = per_tower or {}
    towers = ", ".join(f"{name} {per_tower.get(name, decay)} ({depth} layers, embeddings "
                       f"×{per_tower.get(name, decay) ** (depth + 1):.3g})"
                       for name, depth in tower_depths(params).items())
    return f"layer decay: {towers}; final norms, heads, output projections and the rest ×1"
