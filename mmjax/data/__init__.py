"""Data: tokenizers, the synthetic image–caption world and grain pipelines.

The names below are imported on first use, so that a module of this package (a `data convert` worker
process, say) does not pay for grain and JAX when it needs neither.
"""
import importlib

_HOMES = {
    "RenderAndTokenize": "pipeline", "eval_dataset": "pipeline", "train_dataset": "pipeline",
    "CLASSNAMES": "synthetic", "PROMPT_TEMPLATES": "synthetic", "SyntheticSource": "synthetic",
    "class_id": "synthetic", "heldout_shapes": "synthetic", "render_image": "synthetic",
    "render_images": "synthetic",
    "Tokenizer": "tokenizers",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'mmjax.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mmjax.data.{_HOMES[name]}"), name)
