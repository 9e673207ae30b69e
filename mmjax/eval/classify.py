"""Free-label zero-shot classification: image embeddings × label-text embeddings → probabilities.

- CLIP (no ``logit_bias``): ``softmax(min(exp(logit_scale), 100) * cos)`` over the
  labels — the labels compete, each row sums to 1.
- SigLIP (``logit_bias`` given): ``sigmoid(exp(logit_scale) * cos + logit_bias)`` per
  label — independent yes/no probabilities, rows need not sum to 1.

``cos`` is the cosine similarity of the L2-normalised embeddings; the scale and
bias are the model's learned parameters (``logit_scale`` is the log of the inverse
temperature, as in training, see ``mmjax.losses.contrastive``).
"""
from __future__ import annotations

import numpy as np

from mmjax.eval.zeroshot import l2_normalize
from mmjax.losses.contrastive import CLIP_MAX_SCALE



def label_probabilities(image_emb: np.ndarray, label_emb: np.ndarray, logit_scale: float,
                        logit_bias: float | None = None) -> np.ndarray:
    """Probabilities ``[N_images, N_labels]`` (float64); see the module docstring."""
    cos = l2_normalize(image_emb).astype(np.float64) @ l2_normalize(label_emb).astype(np.float64).T
    logit_scale = float(np.asarray(logit_scale))
    if logit_bias is None:
        logits = min(np.exp(logit_scale), CLIP_MAX_SCALE) * cos
        logits = logits - logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)
    logits = np.exp(logit_scale) * cos + float(np.asarray(logit_bias))
    # Stable sigmoid: exp of a non-positive number only.
    e = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def model_label_probabilities(params, image_emb: np.ndarray, label_emb: np.ndarray) -> np.ndarray:
    """:func:`label_probabilities` with a two-tower model's ``logit_scale`` (and ``logit_bias``, SigLIP)."""
    bias = np.asarray(params["logit_bias"]) if "logit_bias" in params else None
    return label_probabilities(image_emb, label_emb, np.asarray(params["logit_scale"]), bias)
