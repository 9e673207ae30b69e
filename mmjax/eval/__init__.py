"""Model-agnostic evaluators: they take embedding functions or embeddings, never a model.

Metrics follow LAION-AI/CLIP_benchmark (see each module's docstring).
"""
from mmjax.eval.figure import figure_size, write_demo_figure
from mmjax.eval.report import (SYNTHETIC_TASK, chance_level, format_table, results_file_name, results_json,
                               write_results)
from mmjax.eval.retrieval import blocked_top_k, retrieval_chance, retrieval_metrics
from mmjax.eval.synthetic_benchmark import RetrievalExample, evaluate_synthetic, text_to_image_examples
from mmjax.eval.zeroshot import (build_classifier, class_prompts, classify, l2_normalize, label_rank,
                                 mean_per_class_recall, topk_accuracy, zero_shot_metrics)

__all__ = [
    "RetrievalExample", "SYNTHETIC_TASK", "blocked_top_k", "build_classifier", "chance_level", "class_prompts",
    "classify", "evaluate_synthetic", "figure_size", "format_table", "l2_normalize", "label_rank",
    "mean_per_class_recall", "results_file_name", "results_json", "retrieval_chance", "retrieval_metrics",
    "text_to_image_examples", "topk_accuracy",
    "write_demo_figure", "write_results", "zero_shot_metrics",
]
