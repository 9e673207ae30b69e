"""Parameter-path patterns: one language for weight-decay masks and frozen parameters.

A path is the parameter's keys joined by "/", e.g.
`image_encoder/encoder/layers_0/attn/query/kernel`; a pattern is a regular
expression searched in it.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax
import jax


def path_matches(params: Any, patterns: Sequence[str]) -> Any:
    """A tree like `params` with True where the path matches any pattern."""
    compiled = [re.compile(p) for p in patterns]
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    return flax.traverse_util.unflatten_dict(
        {path: any(p.search(path) for p in compiled) for path in flat}, sep="/")


def decay_mask(params: Any, no_decay: Sequence[str]) -> Any:
    """True for parameters that get weight decay: those matching none of `no_decay`."""
    return flax.traverse_util.unflatten_dict(
        {k: not v for k, v in flax.traverse_util.flatten_dict(path_matches(params, no_decay)).items()})


def stop_gradient_where(params: Any, patterns: Sequence[str]) -> Any:
    """`params` with `jax.lax.stop_gradient` on those whose path matches any of `patterns` (frozen): their
    gradients are zeros, and the backward pass that only they needed is left out of the compiled step."""
    if not patterns:
        return params
    return jax.tree.map(lambda frozen, x: jax.lax.stop_gradient(x) if frozen else x, path_matches(params, patterns),
                        params)
