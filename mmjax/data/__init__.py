"""Data: tokenizers, the synthetic image–caption world and grain pipelines."""
from mmjax.data.pipeline import RenderAndTokenize, eval_dataset, train_dataset
from mmjax.data.synthetic import (CLASSNAMES, PROMPT_TEMPLATES, SyntheticSource, class_id,
                                  heldout_shapes, render_image)
from mmjax.data.tokenizers import Tokenizer

__all__ = ["CLASSNAMES", "PROMPT_TEMPLATES", "RenderAndTokenize", "SyntheticSource",
           "Tokenizer", "class_id", "eval_dataset", "heldout_shapes", "render_image",
           "train_dataset"]
