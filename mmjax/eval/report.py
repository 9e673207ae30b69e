"""Evaluation results as clip_benchmark JSON and as a small text table.

clip_benchmark's ``cli.py`` (commit 48de38c1) writes one JSON object per run with
the top-level keys ``dataset``, ``model``, ``pretrained``, ``task``, ``metrics``
and ``language``; :func:`results_json` builds the same object.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from mmjax.files import write_text_atomically

SYNTHETIC_TASK = "zeroshot_classification+zeroshot_retrieval"


def results_json(
    dataset: str,
    model: str,
    metrics: Mapping[str, float],
    extra: Mapping[str, Any] | None = None,
    *,
    task: str = SYNTHETIC_TASK,
    pretrained: str | None = None,
    language: str = "en",
) -> dict[str, Any]:
    """clip_benchmark's result object, plus the top-level entries of ``extra``.

    Args:
      dataset: data set name, e.g. ``"synthetic_shapes"``.
      model: model name, e.g. ``"clip_tiny"``.
      metrics: flat name -> value dict (e.g. from ``evaluate_synthetic``).
      extra: more top-level entries (seed, steps, classnames …); they may not
        replace the clip_benchmark keys.
      task: clip_benchmark's task name; the default is the combined synthetic one.
      pretrained: the checkpoint, as clip_benchmark's ``pretrained``.
      language: clip_benchmark's ``language``.
    """
    results = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task,
               "metrics": dict(metrics), "language": language}
    clashes = sorted(set(results) & set(extra or {}))
    if clashes:
        raise ValueError(f"extra may not replace the clip_benchmark keys {clashes}")
    return results | dict(extra or {})


def benchmark_label(benchmark: str | None) -> str:
    """A short name for a benchmark, for file names and metric tags: ``synthetic`` for the synthetic
    benchmark (None), the TFDS name, or ``wds_<name>`` for ``wds:DIR`` with DIR's directory name
    however DIR is written (relative, absolute, with a trailing slash), so that ``wds:…/cifar10`` and
    ``cifar10`` differ."""
    if benchmark is None:
        return "synthetic"
    from mmjax.eval.benchmarks import WDS_PREFIX

    if not benchmark.startswith(WDS_PREFIX):
        return benchmark
    return "wds_" + os.path.basename(os.path.abspath(benchmark.removeprefix(WDS_PREFIX)))


def results_file_name(benchmark: str | None) -> str:
    """``eval.json`` for the synthetic benchmark (None), ``eval_<label>.json`` for the others
    (:func:`benchmark_label`)."""
    return "eval.json" if benchmark is None else f"eval_{benchmark_label(benchmark)}.json"


def finite_or_none(value: Any) -> Any:
    """NaN / inf floats -> None, recursively through dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def write_results(path: str | os.PathLike, results: Mapping[str, Any]) -> None:
    """Writes ``results`` as strict JSON (NaN, e.g. ``acc5`` with < 5 classes, becomes null), whole or not at all
    (``write_text_atomically``: a full disk leaves the old file, and the error names ``path``). A symbolic link
    is written through; a path that is not a file (``/dev/stdout``, a pipe) is written to as it is."""
    path, text = os.fspath(path), json.dumps(finite_or_none(results), indent=2, allow_nan=False) + "\n"
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "w") as f:
            f.write(text)
        return
    write_text_atomically(os.path.realpath(path), text)


def chance_level(name: str, metrics: Mapping[str, float]) -> float | None:
    """The value of metric ``name`` for an encoder that ranks at random, where known.

    An explicit ``chance_<name>`` entry wins; otherwise ``acc<k>`` is ``k / num_classes``,
    ``mean_per_class_recall`` is ``1 / num_classes`` and ``*_recall@<k>`` is
    ``k / num_retrieval_pairs`` (one match per query), each capped at 1. Benchmark retrieval
    writes its ``chance_*`` entries (:func:`~mmjax.eval.retrieval.retrieval_chance`), since
    images with several captions need the caption counts.
    """
    if f"chance_{name}" in metrics:
        return float(metrics[f"chance_{name}"])
    num_classes = metrics.get("num_classes")
    num_pairs = metrics.get("num_retrieval_pairs")
    top_k = re.fullmatch(r"acc(\d+)", name)
    recall = re.fullmatch(r".*_recall@(\d+)", name)
    if num_classes and top_k:
        return min(int(top_k.group(1)) / num_classes, 1.0)
    if num_classes and name == "mean_per_class_recall":
        return 1 / num_classes
    if num_pairs and recall:
        return min(int(recall.group(1)) / num_pairs, 1.0)
    return None


FRACTION_METRIC = re.compile(r"acc\d+|mean_per_class_recall|.*recall@\d+|.*_named|.*_accuracy")
CAPTION_SCORE = re.compile(r"bleu_\d+|cider")


def format_table(metrics: Mapping[str, float]) -> str:
    """An aligned text table: one row per metric, fractions in %, chance level where known.

    Fractions are the accuracies and recalls (``acc<k>``, ``mean_per_class_recall``, ``*recall@<k>``) and a
    captioner's ``*_named`` / ``*_accuracy``.
    Integer entries (counts) are printed as they are, caption scores (``bleu_<n>``, ``cider``) with four
    decimals as pycocoevalcap prints them (papers quote them times 100), other floats (``images_per_s``) with two
    decimals; ``chance_*`` entries fill the chance column of the metrics they belong to instead of
    getting rows of their own.
    """
    rows = [("metric", "value", "chance")]
    for name, value in metrics.items():
        if name.startswith("chance_"):
            continue
        if isinstance(value, int):
            rows.append((name, str(value), ""))
            continue
        if not FRACTION_METRIC.fullmatch(name):
            rows.append((name, f"{value:.{4 if CAPTION_SCORE.fullmatch(name) else 2}f}", ""))
            continue
        if math.isnan(value):  # undefined (acc5 of fewer than 5 classes): no value, no chance level
            rows.append((name, "n/a", ""))
            continue
        chance = chance_level(name, metrics)
        rows.append((name, f"{100 * value:.2f} %",
                     "" if chance is None else f"{100 * chance:.2f} %"))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"{name:<{widths[0]}}  {value:>{widths[1]}}  {chance:>{widths[2]}}".rstrip()
             for name, value, chance in rows]
    return "\n".join(lines)
