"""Zero-shot classification: prompt-ensemble classifier, logits and metrics.

Definitions follow LAION-AI/CLIP_benchmark,
``clip_benchmark/metrics/zeroshot_classification.py`` (read at commit 48de38c1):

- ``zero_shot_classifier``: per class, ``F.normalize(encode_text(prompts)).mean(0)``
  then divided by its norm -> :func:`build_classifier`.
- ``run_classification``: ``logits = 100 * normalize(image) @ classifier``
  -> :func:`classify` (the scale is an argument here).
- ``accuracy(output, target, topk)``: a sample is correct at k when its label is
  among ``output.topk(k)`` -> :func:`topk_accuracy`.
- ``evaluate``: ``acc1``, ``acc5`` (NaN when there are fewer than 5 classes) and
  ``mean_per_class_recall = sklearn.metrics.balanced_accuracy_score(target,
  logits.argmax(1))`` -> :func:`zero_shot_metrics`.

Tie rule (clip_benchmark inherits whatever ``torch.topk`` does; here it is fixed):
classes are ranked by logit, descending, and among equal logits the lower class
index ranks first. ``-0.0 == 0.0``. The same rule makes ``argmax`` (first maximum)
agree with rank 0. Logits must be finite.
"""
from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tqdm

# torch.nn.functional.normalize's default eps, which clip_benchmark relies on.
NORM_EPS = 1e-12

Templates = Sequence[str] | Mapping[str, Sequence[str]]


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x / max(||x||, 1e-12)`` along ``axis`` (as ``F.normalize``), in float32."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, NORM_EPS)


def require_finite(values: np.ndarray, what: str) -> None:
    """A one-line `ValueError` when `values` hold NaN or infinities: every comparison with a NaN is false, so a
    NaN logit would rank first and a model with NaN weights would score 100 %."""
    bad = ~np.isfinite(np.asarray(values))
    if bad.any():
        bad = bad.reshape(len(bad), -1)
        raise ValueError(f"{what} hold NaN or inf ({int(bad.any(axis=1).sum())} of {len(bad)} rows): the model "
                         f"computes non-finite values (a diverged checkpoint?)")


def class_prompts(classname: str, templates: Templates) -> list[str]:
    """The prompts for one class.

    ``templates`` is either a list of strings with a ``{}`` (OpenAI / OpenCLIP style)
    or ``{c}`` (clip_benchmark style) placeholder, or a mapping class name -> its
    own prompts (clip_benchmark's class-specific, CuPL-style prompts).
    """
    if isinstance(templates, Mapping):
        return list(templates[classname])
    prompts = []
    for template in templates:
        problem = None
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
            other = [field for field in fields if field not in ("", "0", "c")]  # {c.upper}, {c[0]}, {size}
            if not fields:
                problem = "it has none: every class would get the same prompt"
            elif other:
                problem = f"it has {{{other[0]}}}"
            else:
                prompts.append(template.format(classname, c=classname))
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as error:  # a field in a format spec
            problem = f"{type(error).__name__}: {error}"
        if problem:
            raise ValueError(f"prompt template {template!r} needs one {{c}} or {{}} placeholder and no other "
                             f"({problem})")
    return prompts


def build_classifier(
    encode_text: Callable[[list[str]], np.ndarray],
    classnames: Sequence[str],
    templates: Templates,
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Zero-shot class prototypes: the normalised mean of normalised prompt embeddings.

    Args:
      encode_text: list of ``n`` strings -> text embeddings ``[n, D]``.
      classnames: ``C`` class names.
      templates: see :func:`class_prompts`.
      batch_size: most strings given to ``encode_text`` at once (prompts of several
        classes share a call).
      progress: a progress bar over the prompts.

    Returns:
      ``[C, D]`` float32, unit rows (clip_benchmark returns the transpose ``[D, C]``).
    """
    prompts_per_class = [class_prompts(name, templates) for name in classnames]
    counts = np.array([len(prompts) for prompts in prompts_per_class])
    if counts.size == 0 or counts.min() == 0:
        raise ValueError("every class needs at least one prompt")
    prompts = [prompt for class_list in prompts_per_class for prompt in class_list]
    embeddings = np.concatenate(
        [
            np.asarray(encode_text(prompts[start : start + batch_size]), np.float32)
            for start in tqdm.tqdm(range(0, len(prompts), batch_size), desc="class prompts", unit="batch",
                                   disable=not progress)
        ]
    )
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    class_means = np.add.reduceat(l2_normalize(embeddings), starts, axis=0) / counts[:, None]
    return l2_normalize(class_means)


def classify(
    image_emb: np.ndarray, classifier: np.ndarray, logit_scale: float | None = None
) -> np.ndarray:
    """Zero-shot logits ``[N, C]`` from image embeddings ``[N, D]`` and a classifier ``[C, D]``.

    Images are L2-normalised; the classifier is used as given (unit rows from
    :func:`build_classifier`). ``logit_scale`` multiplies the cosine similarities
    (clip_benchmark uses 100); it does not change any metric here.
    """
    logits = l2_normalize(image_emb) @ np.asarray(classifier, np.float32).T
    return logits if logit_scale is None else logits * np.float32(logit_scale)


def label_rank(logits: np.ndarray, labels: np.ndarray, block_size: int = 4096) -> np.ndarray:
    """Rank ``[N]`` of each sample's true class among the ``C`` classes (0 = predicted).

    rank = #classes with a larger logit + #classes with an equal logit and a lower
    index (the module's tie rule). Computed ``block_size`` rows at a time, so ranks
    can also be accumulated batch by batch without keeping all logits.

    Args:
      logits: ``[N, C]``. labels: ``[N]`` int class indices.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    require_finite(logits, "the logits")
    if labels.size and not (0 <= labels.min() and labels.max() < logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}) (the classes), got {labels.min()}..{labels.max()}")
    class_index = np.arange(logits.shape[1])
    ranks = np.empty(len(labels), np.int64)
    for start in range(0, len(labels), block_size):
        block = logits[start : start + block_size]
        block_labels = labels[start : start + block_size]
        label_logit = np.take_along_axis(block, block_labels[:, None], axis=1)
        ahead = (block > label_logit) | (
            (block == label_logit) & (class_index < block_labels[:, None])
        )
        ranks[start : start + block_size] = ahead.sum(axis=1)
    return ranks


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the top-``k`` classes.

    clip_benchmark's ``accuracy`` for one k. ``k > C`` counts as ``k = C`` (always 1.0);
    torch.topk would raise instead. logits ``[N, C]``, labels ``[N]``.
    """
    if k < 1:
        raise ValueError(f"top-k accuracy needs k ≥ 1, got {k}")
    return float(np.mean(label_rank(logits, labels) < k))


def mean_per_class_recall(logits_or_preds: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes present in ``labels`` of the recall of that class.

    Equals ``sklearn.metrics.balanced_accuracy_score(labels, preds)`` (adjusted=False,
    no sample weights), as clip_benchmark computes it: sklearn's per-class recall
    ``diag(confusion) / row_sum`` is NaN for a class that is predicted but never a
    label, and those are dropped. Classes that are neither labels nor predictions
    never enter.

    Args:
      logits_or_preds: logits ``[N, C]`` (prediction = first argmax) or predicted
        class indices ``[N]``.
      labels: ``[N]`` int class indices.
    """
    preds = np.asarray(logits_or_preds)
    if preds.ndim == 2:
        preds = preds.argmax(axis=1)
    labels = np.asarray(labels)
    num_classes = int(max(labels.max(), preds.max())) + 1
    support = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[preds == labels], minlength=num_classes)
    present = support > 0
    return float(np.mean(correct[present] / support[present]))


def zero_shot_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """clip_benchmark's single-label metrics: ``acc1``, ``acc5``, ``mean_per_class_recall``.

    As in clip_benchmark's ``evaluate``, ``acc5`` is NaN when there are fewer than 5
    classes. logits ``[N, C]``, labels ``[N]``.
    """
    ranks = label_rank(logits, labels)
    num_classes = np.shape(logits)[1]
    return {
        "acc1": float(np.mean(ranks < 1)),
        "acc5": float(np.mean(ranks < 5)) if num_classes >= 5 else float("nan"),
        "mean_per_class_recall": mean_per_class_recall(logits, labels),
    }
