"""Model-agnostic evaluators: they take embedding functions or embeddings, never a model.

Metrics follow LAION-AI/CLIP_benchmark (see each module's docstring).
"""
from mmjax.eval.retrieval import blocked_top_k, retrieval_metrics
from mmjax.eval.zeroshot import (
    build_classifier,
    class_prompts,
    classify,
    l2_normalize,
    label_rank,
    mean_per_class_recall,
    topk_accuracy,
    zero_shot_metrics,
)

__all__ = [
    "blocked_top_k",
    "build_classifier",
    "class_prompts",
    "classify",
    "l2_normalize",
    "label_rank",
    "mean_per_class_recall",
    "retrieval_metrics",
    "topk_accuracy",
    "zero_shot_metrics",
]
