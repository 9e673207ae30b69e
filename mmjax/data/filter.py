"""CLIP-score filtering (as DataComp does): keep the image–caption pairs a model finds similar.

Every (record, caption) pair of a data directory gets the cosine similarity of the
model's image and caption embeddings (the image resized + centre-cropped, as in
evaluation, or as a pretrained checkpoint's own preprocessing does it: DataComp scores with
OpenAI's ViT-L/14). The kept pairs are those with score ≥ `threshold`, or the best
`top_fraction` of all pairs (score ≥ the ⌈fraction·n⌉-th highest; ties at that score
are all kept). A record keeps its image bytes, key and metadata, only its kept
captions, and gains `meta["clip_score"]` (one score per kept caption); records with
no kept caption are dropped. Records that cannot be read or decoded are counted
by reason (`records.SKIP_REASONS`) and not written.

The model enters as two functions, `encode_images(uint8 [N, S, S, 3]) → [N, E]` and
`encode_texts(list[str]) → [N, E]` (e.g. `mmjax.inference.Encoder`'s), so this module
does not depend on training code.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from fractions import Fraction

import numpy as np
import tqdm

from mmjax.data import shards
from mmjax.data.arrayrecord_source import RecordSource
from mmjax.data.decode import DecodeOptions, decode_image
from mmjax.data.preprocess import ImagePreprocess
from mmjax.data.records import RecordError, Sample, Skip, decode_record

EncodeImages = Callable[[np.ndarray], np.ndarray]
EncodeTexts = Callable[[list[str]], np.ndarray]


@dataclasses.dataclass
class Scores:
    """`scores[i]`: float `[non-empty captions of record i]` (None when record i was skipped); `skipped`: count by
    reason."""

    scores: list[np.ndarray | None]
    skipped: Counter


def _read(source: RecordSource, index: int, options: DecodeOptions) -> tuple[Sample | None, np.ndarray | str]:
    """`(sample, uint8 image [S, S, 3])` or `(sample | None, skip reason)`."""
    item = source[index]
    if isinstance(item, Skip):
        return None, item.reason
    try:
        sample = decode_record(item.data)
    except RecordError:
        return None, "truncated_record"
    if not _captions(sample):
        return sample, "empty_caption"
    return sample, decode_image(sample, options, ())


def _captions(sample: Sample) -> list[str]:
    """The captions that are scored: stripped, non-empty (pair `j` of a record is its `j`-th)."""
    return [caption.strip() for caption in sample.captions if caption.strip()]


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, np.float64)
    return embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)


def _score_records(source: RecordSource, indices: range, options: DecodeOptions, encode_images: EncodeImages,
                   encode_texts: EncodeTexts, scores: list, skipped: Counter) -> None:
    """Fill `scores[i]` (one cosine per caption) for the records `indices` that decode; count the others."""
    kept, images, texts, owners = [], [], [], []
    for index in indices:
        sample, image = _read(source, index, options)
        if isinstance(image, str):
            skipped[image] += 1
            continue
        captions = _captions(sample)
        kept.append(index)
        images.append(image)
        owners += [len(kept) - 1] * len(captions)
        texts += captions
    if not kept:
        return
    image_emb = _unit_rows(encode_images(np.stack(images)))
    text_emb = _unit_rows(encode_texts(texts))
    pair_scores = np.einsum("pd,pd->p", image_emb[owners], text_emb)
    owners = np.array(owners)
    for position, index in enumerate(kept):
        scores[index] = pair_scores[owners == position]


def score_directory(directory: str, encode_images: EncodeImages, encode_texts: EncodeTexts, image_size: int,
                    batch_size: int = 256, progress: bool = True, preprocess: ImagePreprocess | None = None) -> Scores:
    """Cosine score of every (record, caption) pair of `directory`, `batch_size` records at a time. Images are
    resized and centre-cropped to `image_size`, or resized and cropped as `preprocess` (a pretrained
    checkpoint's) says."""
    if preprocess is not None and preprocess.size != image_size:
        raise ValueError(f"preprocess makes {preprocess.size} px images, not image_size {image_size}")
    source = RecordSource(directory)
    options = DecodeOptions(image_size, augment=False, resize=None if preprocess is None else preprocess.resized)
    scores: list[np.ndarray | None] = [None] * len(source)
    skipped = Counter()
    with tqdm.tqdm(total=len(source), unit="records", disable=not progress) as bar:
        for start in range(0, len(source), batch_size):
            end = min(start + batch_size, len(source))
            _score_records(source, range(start, end), options, encode_images, encode_texts, scores, skipped)
            bar.update(end - start)
    return Scores(scores, skipped)


def check_selection(threshold: float | None, top_fraction: float | None) -> None:
    """Raises ValueError unless exactly one of `threshold` (a cosine, in [-1, 1]) and `top_fraction` (in (0, 1])
    is given: checked before any pair is embedded."""
    if (threshold is None) == (top_fraction is None):
        raise ValueError("give one of --threshold or --top_fraction")
    if threshold is not None and not -1 <= threshold <= 1:
        raise ValueError(f"--threshold={threshold} must be in [-1, 1] (a cosine similarity)")
    if top_fraction is not None and not 0 < top_fraction <= 1:
        raise ValueError(f"--top_fraction={top_fraction} must be in (0, 1]")


def selection_threshold(scores: Scores, threshold: float | None, top_fraction: float | None) -> float:
    """The score a pair needs: `threshold`, or the ⌈top_fraction · n⌉-th highest pair score."""
    check_selection(threshold, top_fraction)
    if threshold is not None:
        return threshold
    every = np.sort(np.concatenate([s for s in scores.scores if s is not None] or [np.zeros(0)]))[::-1]
    if not len(every):
        why = ", ".join(f"{reason} {count}" for reason, count in sorted(scores.skipped.items()))
        raise ValueError(f"no pair could be scored ({len(scores.scores)} records; skipped: {why or 'none'})")
    # exact decimal arithmetic: in floats, 0.28 × 25 = 7.000000000000001, whose ceiling would keep 8 pairs
    return float(every[math.ceil(Fraction(str(top_fraction)) * len(every)) - 1])


def _kept_samples(source: RecordSource, scores: Scores, minimum: float) -> Iterator[Sample]:
    for index in range(len(source)):
        pair_scores = scores.scores[index]
        if pair_scores is None or not (pair_scores >= minimum).any():
            continue
        sample = decode_record(source[index].data)
        keep = pair_scores >= minimum
        captions = tuple(c for c, k in zip(_captions(sample), keep, strict=True) if k)
        yield dataclasses.replace(sample, captions=captions,
                                  meta={**sample.meta, "clip_score": [float(s) for s in pair_scores[keep]]})


def write_filtered(directory: str, out: str, scores: Scores, minimum: float,
                   records_per_shard: int = 10_000) -> dict:
    """Write the records of `directory` with a pair scoring ≥ `minimum` to the data directory `out`; its index.
    When no pair scores that much, a ValueError says so and nothing is written (as `convert` refuses to leave a
    data directory with no record, which training could not read)."""
    best = max((float(s.max()) for s in scores.scores if s is not None and len(s)), default=None)
    if best is None or best < minimum:
        raise ValueError(f"no pair of {directory} scores ≥ {minimum:.4f} (the best scores "
                         f"{'nothing' if best is None else f'{best:.4f}'}); nothing was written to {out}")
    shards.refuse_nonempty_out(out, "mmjax data filter")
    shards.make_directory(out)
    kept, markers = _kept_samples(RecordSource(directory), scores, minimum), []
    for first in kept:  # shards of `records_per_shard` kept records
        markers.append(shards.write_shard(out, shards.shard_name(len(markers)),
                                          itertools.chain([first], itertools.islice(kept, records_per_shard - 1)),
                                          f"{directory}, clip score ≥ {minimum:.6g}"))
    return shards.write_index(out, markers, dropped_before=scores.skipped)
