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

# The synthetic demo benchmark, its report and figure.
from mmjax.eval.figure import figure_size, write_demo_figure  # noqa: E402
from mmjax.eval.report import (  # noqa: E402
    SYNTHETIC_TASK,
    chance_level,
    format_table,
    results_json,
    write_results,
)
from mmjax.eval.synthetic_benchmark import (  # noqa: E402
    RetrievalExample,
    evaluate_synthetic,
    text_to_image_examples,
)

__all__ += [
    "RetrievalExample",
    "SYNTHETIC_TASK",
    "chance_level",
    "evaluate_synthetic",
    "figure_size",
    "format_table",
    "results_json",
    "text_to_image_examples",
    "write_demo_figure",
    "write_results",
]
