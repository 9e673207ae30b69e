"""WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", 2022): the weights of a fine-tuned run
mixed with those of the checkpoint it started from, `(1 − α) · θ_checkpoint + α · θ_fine-tuned`. α = 0 is the
checkpoint, α = 1 the fine-tuned model; in between the paper finds accuracy on the fine-tuning task close to the
fine-tuned model's and robustness to distribution shift close to the zero-shot model's, at no cost.

    mmjax convert runs/ft --to hf --out runs/ft_wise --wise_ft 0.5
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from mmjax.convert.checks import check_shapes, flatten, unflatten
from mmjax.pretrained import Pretrained, load_pretrained
from mmjax.train.finetune import PRETRAINED_FILE, read_start
from mmjax.train.workdir import load_config


def wise_ft(workdir: str, alpha: float) -> Pretrained:
    """The run fine-tuned in `workdir` (its latest checkpoint), its parameters mixed with the checkpoint's it
    started from (loaded again from the source its `pretrained.json` records, with the run's
    `config.pretrained` files and image size)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"WiSE-FT's alpha {alpha} must be in [0, 1] (0: the checkpoint, 1: the fine-tuned model)")
    if not os.path.isfile(os.path.join(workdir, PRETRAINED_FILE)):
        raise ValueError(f"{workdir} is not a run fine-tuned from a pretrained checkpoint (no {PRETRAINED_FILE}): "
                         f"WiSE-FT mixes such a run with the checkpoint it started from")
    config = load_config(workdir)
    start = read_start(workdir, config.model_options)
    files = config.pretrained
    checkpoint = load_pretrained(start.source, weights=files.weights or None, tokenizer=files.tokenizer or None,
                                 allow_pickle=files.allow_pickle, image_size=files.image_size or None)
    fine_tuned = load_pretrained(workdir)
    mixed = _mix(checkpoint.params, fine_tuned.params, alpha, f"{start.source} and {workdir}")
    return dataclasses.replace(fine_tuned, params=mixed, format="mmjax WiSE-FT")


def _mix(start: dict, end: dict, alpha: float, where: str) -> dict:
    """`(1 − alpha) · start + alpha · end`, leaf by leaf (float32); a one-line ValueError naming the first
    parameter the two trees do not share, or share with another shape."""
    first = flatten(start)
    check_shapes(end, {path: np.shape(value) for path, value in first.items()}, where)
    second = flatten(end)
    return unflatten({path: ((1 - alpha) * np.asarray(value, np.float64) + alpha * np.asarray(second[path], np.float64)
                             ).astype(np.float32) for path, value in first.items()})
