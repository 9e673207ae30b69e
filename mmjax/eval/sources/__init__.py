"""Benchmark data readers: TFDS (array_record, no TensorFlow) and clip_benchmark webdataset shards.

Two kinds of benchmark, each read as a stream of examples and batched for a model:

- classification: ``(image, label)``; batches ``(uint8 [b, S, S, 3], int64 [b])``;
- retrieval: ``(image, captions)``; batches ``(uint8 [b, S, S, 3], list of b caption lists)``.

TFDS data sets are opened with ``tfds.builder_from_directory(...).as_data_source`` on the
prepared directory (reads ``features.json``; needs neither TensorFlow nor the builder code,
which for ``coco_captions`` imports TensorFlow), falling back to ``tfds.data_source`` (what
``tfds.testing.mock_data`` patches). A data set that is not prepared raises
``FileNotFoundError`` with one line on how to prepare it.

webdataset benchmarks use clip_benchmark's layout: ``DIR/test/*.tar`` shards, read with
``tarfile`` in sorted order; members are grouped into samples by key (the file name up to its
first dot, as webdataset does; ``mmjax.data.tar_samples``), and a shard cut short is an error. Classification samples hold ``KEY.{webp,jpg,jpeg,png}`` and
``KEY.cls`` (the integer label); retrieval samples ``KEY.{jpg,...}`` and ``KEY.txt`` (captions,
one per line). ``DIR/classnames.txt`` and ``DIR/zeroshot_classification_templates.txt`` hold
one entry per line.

Images are decoded with PIL and prepared by the caller's ``resize`` (an mmjax model's: as OpenCLIP /
clip_benchmark do, ``Resize(S, bicubic)`` on the shorter side, then ``CenterCrop(S)``; a pretrained
checkpoint's: its own processor), as uint8; normalisation is the encoder's business.

Batches come from :func:`batches` (decoding in the calling process) or, with
``num_workers > 0`` or several JAX processes, from :func:`tfds_batches` / :func:`wds_batches`:
grain pipelines whose reading, decoding, resizing and batching run in ``num_workers`` spawned
worker processes (``MapDataset -> map -> batch -> slice -> to_iter_dataset -> mp_prefetch``;
in the calling process when ``num_workers`` is 0). Process ``i`` of ``n`` takes batches
``i, i + n, ...`` and reads only their examples. Both are random access
over the examples (a TFDS data source; for webdataset an index of every sample's member
``(offset, size)`` in its shard, built by one pass over the tar headers, see
:func:`wds_index`), and ``mp_prefetch`` hands worker ``w`` the batches ``w, w + n, ...`` and
interleaves them back in order, so batches, and hence metrics, are the same for any number of
workers. A bad-data ``ValueError`` raised in a worker reaches the caller as the same one-line
``ValueError`` the in-process path raises.
"""

from mmjax.eval.sources.batching import Resize, batches, grain_batches
from mmjax.eval.sources.tasks import CLASSIFICATION, IMAGE_EXTENSIONS, RETRIEVAL
from mmjax.eval.sources.tfds_source import (TFDS_BENCHMARKS, TfdsBenchmark, open_tfds,
                                            tfds_batches, tfds_classnames_count, tfds_examples)
from mmjax.eval.sources.wds_source import (WdsSample, wds_batches, wds_classnames, wds_examples, wds_index,
                                           wds_shards, wds_task, wds_templates)

__all__ = ["CLASSIFICATION", "IMAGE_EXTENSIONS", "RETRIEVAL", "Resize", "TFDS_BENCHMARKS", "TfdsBenchmark", "WdsSample",
           "batches", "grain_batches", "open_tfds", "tfds_batches", "tfds_classnames_count",
           "tfds_examples", "wds_batches", "wds_classnames", "wds_examples", "wds_index", "wds_shards", "wds_task",
           "wds_templates"]
