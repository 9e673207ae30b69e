"""Zero-shot classification and retrieval on real benchmarks (TFDS or clip_benchmark webdataset).

``run_benchmark("cifar10", encode_images, encode_texts, image_size=224)`` reads the benchmark
(:mod:`mmjax.eval.sources`), embeds it batch by batch with the caller's encoders and returns
clip_benchmark's task name and metrics:

- classification: the prompt-ensemble classifier of the shipped class names and templates
  (``mmjax/eval/data/*.json``, from LAION-AI/CLIP_benchmark, MIT) or of the webdataset's
  ``classnames.txt`` / ``zeroshot_classification_templates.txt``
  (:func:`~mmjax.eval.zeroshot.build_classifier`), then ``acc1``, ``acc5``,
  ``mean_per_class_recall`` exactly as :func:`~mmjax.eval.zeroshot.zero_shot_metrics`
  (computed from per-batch ranks and predictions, so no ``[N, C]`` logits are kept);
- retrieval: every caption of every image is a text query;
  :func:`~mmjax.eval.retrieval.retrieval_metrics` (blocked) with recall@1/5/10.

Besides the metrics: ``images_per_s`` (images over the wall time of the image phase:
reading, decoding, resizing and ``encode_images``; with ``num_workers`` the first three run in
grain worker processes, whose start-up is counted), ``num_images`` and ``num_classes`` or
``num_texts``.
"""
from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import numpy as np

from mmjax.eval import sources
from mmjax.eval.retrieval import retrieval_metrics
from mmjax.eval.zeroshot import (
    build_classifier,
    classify,
    label_rank,
    mean_per_class_recall,
)

ImageEncoder = Callable[[np.ndarray], np.ndarray]  # uint8 [N, S, S, 3] -> [N, D]
TextEncoder = Callable[[list[str]], np.ndarray]  # N strings -> [N, D]

WDS_PREFIX = "wds:"


@functools.cache
def shipped_classnames() -> dict[str, list[str]]:
    """Class names per key (``cifar10``, ``cifar100``, ``imagenet1k``, ``food101``, ``pets``)."""
    return _load_json_data("classnames.json")["classnames"]


@functools.cache
def shipped_templates() -> dict[str, list[str]]:
    """clip_benchmark's prompt templates (``{c}`` placeholder) per key, as :func:`shipped_classnames`."""
    return _load_json_data("templates.json")["templates"]


def benchmark_names() -> list[str]:
    """The TFDS benchmark names :func:`run_benchmark` accepts (besides ``wds:PATH``)."""
    return sorted(sources.TFDS_BENCHMARKS)


def _open(name_or_path: str, data_dir: str | None, max_examples: int | None, image_size: int,
          batch_size: int, num_workers: int
          ) -> tuple[str, Iterator[tuple[np.ndarray, Any]], list[str] | None, list[str] | None]:
    """``(task, batches, classnames, templates)`` of a benchmark (names None for retrieval)."""
    if name_or_path.startswith(WDS_PREFIX):
        directory = name_or_path[len(WDS_PREFIX):]
        task = sources.wds_task(directory)
        classnames = templates = None
        if task == sources.CLASSIFICATION:
            classnames = sources.wds_classnames(directory)
            templates = sources.wds_templates(directory)
        batches = sources.wds_batches(directory, task, image_size, batch_size,
                                      len(classnames) if classnames else None, max_examples,
                                      num_workers)
        return task, batches, classnames, templates
    if name_or_path not in sources.TFDS_BENCHMARKS:
        raise ValueError(f"unknown benchmark {name_or_path!r}: use one of {benchmark_names()} "
                         f"or {WDS_PREFIX}DIR for a webdataset directory")
    benchmark = sources.TFDS_BENCHMARKS[name_or_path]
    source = sources.open_tfds(name_or_path, data_dir)
    classnames = templates = None
    if benchmark.task == sources.CLASSIFICATION:
        classnames = shipped_classnames()[benchmark.classnames]
        templates = shipped_templates()[benchmark.classnames]
        declared = sources.tfds_classnames_count(source, benchmark)
        if declared is not None and declared != len(classnames):
            raise ValueError(f"{benchmark.tfds_name} has {declared} classes but the shipped "
                             f"class names for {benchmark.classnames} are {len(classnames)}")
    batches = sources.tfds_batches(source, benchmark, image_size, batch_size, max_examples,
                                   num_workers)
    return benchmark.task, batches, classnames, templates


def run_benchmark(
    name_or_path: str,
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    *,
    image_size: int,
    data_dir: str | None = None,
    batch_size: int = 256,
    max_examples: int | None = None,
    num_workers: int = 0,
) -> tuple[str, dict[str, float]]:
    """Zero-shot evaluation of one benchmark.

    Args:
      name_or_path: a TFDS benchmark (:func:`benchmark_names`) or ``wds:DIR``.
      encode_images: uint8 ``[b, image_size, image_size, 3]`` -> embeddings ``[b, D]``.
      encode_texts: ``n`` strings -> embeddings ``[n, D]``.
      image_size: side of the square model input (resize shorter side + centre crop).
      data_dir: TFDS data directory (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      batch_size: images (and texts) per encoder call.
      max_examples: evaluate only the first images.
      num_workers: read, decode, resize and batch the images in this many grain worker
        processes (0: in this process). The batches, hence the metrics, do not depend on it.

    Returns:
      ``(task, metrics)``: task is ``"zeroshot_classification"`` or ``"zeroshot_retrieval"``.

    Raises:
      FileNotFoundError: a TFDS data set that is not prepared, a missing webdataset file.
      ValueError: bad data (empty shard, undecodable image, class names not fitting labels).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    task, batches, classnames, templates = _open(name_or_path, data_dir, max_examples,
                                                 image_size, batch_size, num_workers)
    if task == sources.CLASSIFICATION:
        return task, _classification(batches, classnames, templates, encode_images,
                                     encode_texts, batch_size)
    return task, _retrieval(batches, encode_images, encode_texts, batch_size)


def _classification(batches, classnames, templates, encode_images, encode_texts,
                    batch_size) -> dict[str, float]:
    classifier = build_classifier(encode_texts, classnames, templates, batch_size)
    ranks, predictions, labels = [], [], []
    num_images, start = 0, time.perf_counter()
    for images, batch_labels in batches:
        logits = classify(np.asarray(encode_images(images), np.float32), classifier)
        ranks.append(label_rank(logits, batch_labels))
        predictions.append(logits.argmax(axis=1))
        labels.append(batch_labels)
        num_images += len(images)
    seconds = time.perf_counter() - start
    if not num_images:
        raise ValueError("the benchmark has no examples")
    ranks, predictions, labels = map(np.concatenate, (ranks, predictions, labels))
    return {
        "acc1": float(np.mean(ranks < 1)),
        "acc5": float(np.mean(ranks < 5)) if len(classnames) >= 5 else float("nan"),
        "mean_per_class_recall": mean_per_class_recall(predictions, labels),
        "images_per_s": num_images / seconds,
        "num_images": num_images,
        "num_classes": len(classnames),
    }


def _retrieval(batches, encode_images, encode_texts, batch_size) -> dict[str, float]:
    image_embeddings, captions, text_to_image = [], [], []
    num_images, start = 0, time.perf_counter()
    for images, batch_captions in batches:
        image_embeddings.append(np.asarray(encode_images(images), np.float32))
        for offset, image_captions in enumerate(batch_captions):
            captions.extend(image_captions)
            text_to_image.extend([num_images + offset] * len(image_captions))
        num_images += len(images)
    seconds = time.perf_counter() - start
    if not num_images:
        raise ValueError("the benchmark has no examples")
    text_embeddings = np.concatenate([
        np.asarray(encode_texts(captions[i:i + batch_size]), np.float32)
        for i in range(0, len(captions), batch_size)])
    metrics = retrieval_metrics(np.concatenate(image_embeddings), text_embeddings,
                                np.asarray(text_to_image))
    return metrics | {"images_per_s": num_images / seconds, "num_images": num_images,
                      "num_texts": len(captions)}


def _load_json_data(file_name: str) -> dict[str, Any]:
    """A JSON file shipped in ``mmjax/eval/data``."""
    return json.loads(resources.files("mmjax.eval").joinpath("data", file_name).read_text("utf-8"))
