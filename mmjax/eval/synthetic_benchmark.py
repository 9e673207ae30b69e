"""Zero-shot benchmark on the synthetic world of the embedded demo (`mmjax.data.synthetic`).

Two evaluations, both on images drawn by the data set's own `render_images` (the
function the training pipeline's eval path uses) and fixed by the training seed:

- zero-shot classification of the `heldout` split: every image shows one of the
  7 (shape, colour) pairs held out of training (one per colour; the split has no
  grey images), classified over all 42 `CLASSNAMES` with the `PROMPT_TEMPLATES`
  ensemble. Only 7 of the 42 classes occur as labels, so `mean_per_class_recall`
  averages over those 7 (clip_benchmark's rule: classes that are never a label
  are dropped), while predictions may fall on any of the 42;
- retrieval on the `retrieval` split: one full, pairwise-distinct caption per
  image, so each text has exactly one matching image and each image one caption.

The caller supplies the embedding functions (tokenisation, normalisation, jit and
sharding are its business); nothing here imports a model.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from mmjax.data import synthetic
from mmjax.eval.retrieval import blocked_top_k, retrieval_metrics
from mmjax.eval.zeroshot import build_classifier, classify, l2_normalize, zero_shot_metrics

ImageEncoder = Callable[[np.ndarray], np.ndarray]  # uint8 [N, H, W, 3] -> [N, D]
TextEncoder = Callable[[list[str]], np.ndarray]  # N strings -> [N, D]


class RetrievalExample(NamedTuple):
    """One text query and its top-k images, for the demo figure."""

    query: str
    images: list[np.ndarray]  # k uint8 [H, W, 3], best first
    correct: list[bool]  # per image: is it the image the query describes


def _batches(source: synthetic.SyntheticSource, batch_size: int) -> Iterator[list[dict]]:
    """The records of `source` in index order, `batch_size` at a time (the last one partial)."""
    for start in range(0, len(source), batch_size):
        yield [source[index] for index in range(start, min(start + batch_size, len(source)))]


def _encode_split(
    source: synthetic.SyntheticSource,
    encode_images: ImageEncoder,
    encode_texts: TextEncoder | None,
    image_size: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Image embeddings `[N, D]`, caption embeddings `[N, D]` (None without `encode_texts`)
    and image labels int32 `[N, 4]` of every example of `source`."""
    image_embeddings, text_embeddings, labels = [], [], []
    for records in _batches(source, batch_size):
        image_labels = np.stack([record["image_labels"] for record in records])
        images = synthetic.render_images(image_labels, np.stack([record["key"] for record in records]), image_size)
        image_embeddings.append(np.asarray(encode_images(images), np.float32))
        if encode_texts is not None:
            captions = [record["caption"] for record in records]
            text_embeddings.append(np.asarray(encode_texts(captions), np.float32))
        labels.append(image_labels)
    texts = np.concatenate(text_embeddings) if encode_texts is not None else None
    return np.concatenate(image_embeddings), texts, np.concatenate(labels)


def evaluate_synthetic(
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    *,
    seed: int,
    image_size: int,
    num_heldout: int = synthetic.DEFAULT_SIZES["heldout"],
    num_retrieval: int = synthetic.DEFAULT_SIZES["retrieval"],
    batch_size: int = 256,
) -> dict[str, float]:
    """Held-out zero-shot classification and caption retrieval on the synthetic world.

    Args:
      encode_images: uint8 images `[N, image_size, image_size, 3]` -> embeddings `[N, D]`.
      encode_texts: `N` strings -> embeddings `[N, D]`.
      seed: the training seed (it fixes which pairs are held out) and the data seed.
      image_size: side of the rendered images, as in training.
      num_heldout: held-out images to classify.
      num_retrieval: image-caption pairs to retrieve among (at most 1 134).
      batch_size: most images or texts given to an encoder at once.

    Returns:
      A flat dict: `acc1`, `acc5`, `mean_per_class_recall`,
      `image_retrieval_recall@{1,5,10}`, `text_retrieval_recall@{1,5,10}` (fractions),
      the counts `num_classes` (42), `num_zeroshot_images`, `num_retrieval_pairs` (ints)
      and the chance levels `chance_acc1` = 1 / num_classes and `chance_recall@1` =
      1 / num_retrieval_pairs.
    """
    heldout = synthetic.SyntheticSource("heldout", seed, num_heldout)
    image_embeddings, _, labels = _encode_split(heldout, encode_images, None, image_size,
                                                batch_size)
    classifier = build_classifier(encode_texts, synthetic.CLASSNAMES,
                                  synthetic.PROMPT_TEMPLATES, batch_size)
    class_labels = synthetic.class_id(labels[:, 0], labels[:, 1])
    metrics = zero_shot_metrics(classify(image_embeddings, classifier), class_labels)

    retrieval = synthetic.SyntheticSource("retrieval", seed, num_retrieval)
    image_embeddings, text_embeddings, _ = _encode_split(retrieval, encode_images, encode_texts,
                                                         image_size, batch_size)
    metrics |= retrieval_metrics(image_embeddings, text_embeddings, np.arange(num_retrieval))

    num_classes = len(synthetic.CLASSNAMES)
    return metrics | {
        "num_classes": num_classes,
        "num_zeroshot_images": num_heldout,
        "num_retrieval_pairs": num_retrieval,
        "chance_acc1": 1 / num_classes,
        "chance_recall@1": 1 / num_retrieval,
    }


def text_to_image_examples(
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    *,
    seed: int,
    image_size: int,
    queries: int = 5,
    k: int = 5,
    num_images: int = synthetic.DEFAULT_SIZES["retrieval"],
    batch_size: int = 256,
) -> list[RetrievalExample]:
    """Top-`k` images for the first `queries` captions of the `retrieval` split.

    The candidates are the first `num_images` images of the split (with the default,
    the images `evaluate_synthetic` retrieves among). A hit is correct when it is
    the query's own image: retrieval captions name every attribute and are pairwise
    distinct, so no other image matches. Ranking is by cosine similarity, ties to
    the lower image index (`blocked_top_k`).

    Returns:
      `min(queries, num_images)` examples; each holds the caption, `k` uint8 `[image_size, image_size, 3]`
      images (best first) and `k` bools.
    """
    source = synthetic.SyntheticSource("retrieval", seed, num_images)
    image_embeddings, _, _ = _encode_split(source, encode_images, None, image_size, batch_size)
    captions = [source[index]["caption"] for index in range(min(queries, len(source)))]
    text_embeddings = np.asarray(encode_texts(captions), np.float32)
    top = blocked_top_k(l2_normalize(text_embeddings), l2_normalize(image_embeddings), k)
    return [
        RetrievalExample(
            query=captions[query],
            images=[synthetic.render_image(source[int(hit)], image_size) for hit in hits],
            correct=[int(hit) == query for hit in hits],
        )
        for query, hits in enumerate(top)
    ]
