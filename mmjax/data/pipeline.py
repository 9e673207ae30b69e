"""grain pipelines: the synthetic world (an endless training stream and finite eval sets) and real
image–caption data (ArrayRecord data directories, TFDS, mixtures of them).

Synthetic batches are dicts of numpy arrays:
  `image`         uint8 `[b, S, S, 3]`
  `text`          int32 `[b, L]` token ids
  `image_labels`  int32 `[b, 4]` (shape, colour, size, position); colour 7 = grey
  `text_labels`   int32 `[b, 4]` the attributes each caption names, −1 where it names none
Real-data batches hold `image` and `text`; the iterator counts skipped samples (`batching.CountSkips`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grain
import jax
import ml_collections
import numpy as np

from mmjax.data import synthetic
from mmjax.data.arrayrecord_source import RecordSource
from mmjax.data.batching import CountSkips, DecodeBatches
from mmjax.data.decode import DecodeOptions
from mmjax.data.mixture import mix, open_source, shuffled_component
from mmjax.data.open_files import allow_open_files
from mmjax.data.tokenizers import Tokenizer
from mmjax.data.workers import start_workers

@dataclasses.dataclass(frozen=True)
class RenderAndTokenize(grain.transforms.Map):
    """The decode stage: a batch of indices into `source` (int `[b]`) → a batch of its examples.

    The pipeline batches indices, not records: drawing and tokenising a batch at once, and stacking the records'
    fields here, takes 0.56× the CPU time of grain mapping and batching record by record (44 against 78 ms for 256
    demo examples on the 2-core machine), time the train step waits for when it shares the cores."""

    source: synthetic.SyntheticSource
    image_size: int
    tokenizer: Tokenizer

    def map(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        records = [self.source[index] for index in indices.tolist()]
        image_labels = np.stack([record["image_labels"] for record in records])
        keys = np.stack([record["key"] for record in records])
        return {"image": synthetic.render_images(image_labels, keys, self.image_size),
                "text": self.tokenizer([record["caption"] for record in records]),
                "image_labels": image_labels,
                "text_labels": np.stack([record["text_labels"] for record in records])}


@dataclasses.dataclass(frozen=True)
class ProcessRows(grain.transforms.Map):
    """A global batch of indices `[B]` → this process's rows `[start, stop)` of it."""

    start: int
    stop: int

    def map(self, indices: np.ndarray) -> np.ndarray:
        return indices[self.start:self.stop]


def train_dataset(seed: int, global_batch_size: int, image_size: int, tokenizer: Tokenizer,
                  num_workers: int = 0, process_index: int | None = None,
                  process_count: int | None = None,
                  num_examples: int | None = None, worker_priority: str = "normal") -> grain.IterDataset:
    """The endless, shuffled training stream of this process.

    Source (`num_examples` per epoch, default `synthetic.DEFAULT_SIZES`) → global
    shuffle (index_shuffle: O(1) memory, a new order each epoch)
    → repeat forever → batches of `global_batch_size` indices → this process's rows of each (`ProcessRows`: the
    processes' local batches, stacked in process order, are the single-process batch row for row, so a step whose
    randomness is per row, as FLAVA's masks and hard negatives, draws the same on any number of processes)
    → records, drawn and tokenised (`RenderAndTokenize`) → `num_workers`
    worker processes (none when 0; at `worker_priority`, see `workers.start_workers`).
    `iter()` gives a checkpointable iterator (`get_state` / `set_state`,
    `grain.checkpoint.CheckpointSave`); `close()` it to stop the workers.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} does not split over "
                         f"{process_count} processes")
    source = synthetic.SyntheticSource("train", seed, num_examples)
    local = global_batch_size // process_count
    dataset = (grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
               .batch(global_batch_size, drop_remainder=True)
               .map(ProcessRows(process_index * local, (process_index + 1) * local))
               .map(RenderAndTokenize(source, image_size, tokenizer)))
    return _prefetch(dataset, num_workers, worker_priority)


def eval_dataset(split: str, seed: int, batch_size: int, image_size: int,
                 tokenizer: Tokenizer, num_examples: int | None = None) -> grain.MapDataset:
    """All `num_examples` of `split` ('heldout' or 'retrieval') in index order.

    Finite: `len()` batches, the last one partial. Use the training seed, which
    fixes the held-out pairs.
    """
    source = synthetic.SyntheticSource(split, seed, num_examples)
    return (grain.MapDataset.range(len(source))
            .batch(batch_size, drop_remainder=False)
            .map(RenderAndTokenize(source, image_size, tokenizer)))


def records_train_dataset(sources: Sequence, weights: Sequence[float] | None, seed: int, global_batch_size: int,
                          options: DecodeOptions, tokenizer: Tokenizer, num_workers: int = 0,
                          process_index: int | None = None, process_count: int | None = None,
                          num_epochs: int | None = None, worker_priority: str = "normal") -> CountSkips:
    """The shuffled training stream of this process over real data.

    Each of `sources` (`mixture.open_source`: `RecordSource`, `TfdsSamples`) is shuffled and
    repeated (`num_epochs`; None: forever) and mixed by `weights`; this process takes every
    `process_count`-th example (`grain.sharding.ShardByJaxProcess` by default, so hosts see
    disjoint data), and `num_workers` processes (at `worker_priority`) decode them (random-resized-crop, one caption
    sampled) into batches of `global_batch_size // process_count` good examples with tokenised captions
    (`DecodeBatches`). The iterator (`CountSkips`) totals the skipped samples by reason; `get_state` / `set_state`
    give exact resume.
    A finite stream (`num_epochs`) ends with a partial batch; a finite mixture ends when its first source runs
    out (grain's `mix`), so the other sources are not read to their end.
    """
    if process_index is None or process_count is None:
        shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
        process_index, process_count = shard.shard_index, shard.shard_count
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} does not split over {process_count} processes")
    if len(sources) > 1:  # each source made room for its own shards; the mixture holds all of them open
        allow_open_files(sum(source.num_open_shards for source in sources if isinstance(source, RecordSource)),
                         f"the mixture of {len(sources)} sources")
    components = [shuffled_component(source, i, seed, num_epochs, tagged=len(sources) > 1)
                  for i, source in enumerate(sources)]
    batched = DecodeBatches(mix(components, weights, seed), global_batch_size // process_count, options, tokenizer, seed,
                            offset=process_index, stride=process_count, finite=num_epochs is not None)
    return CountSkips(start_workers(batched, num_workers, worker_priority), len(components))


def config_train_dataset(data: ml_collections.ConfigDict, global_batch_size: int, image_size: int,
                         tokenizer: Tokenizer) -> grain.IterDataset:
    """The training stream a config's `data` section names: synthetic, or real sources (`records_train_dataset`)."""
    if data.name == "synthetic":
        return train_dataset(data.seed, global_batch_size, image_size, tokenizer, data.num_workers,
                             worker_priority=data.worker_priority)
    sources = [open_source(spec, data.tfds_split, data.tfds_data_dir or None, data.record_reads)
               for spec in data.sources]
    records = sum(len(source) for source in sources)
    if records < global_batch_size:  # each batch would hold copies of one pair, which a contrastive loss contrasts
        raise ValueError(f"config.data.sources hold {records} records, fewer than one batch of {global_batch_size} "
                         f"(config.batch_size): every batch would repeat them; use a smaller batch or more data")
    options = DecodeOptions(image_size, data.augment, tuple(data.crop_scale), tuple(data.crop_ratio),
                            data.caption_sampling, data.max_caption_chars)
    return records_train_dataset(sources, tuple(data.weights) if data.name == "mixture" else None, data.seed,
                                 global_batch_size, options, tokenizer, data.num_workers,
                                 worker_priority=data.worker_priority)


def _prefetch(dataset: grain.MapDataset, num_workers: int, worker_priority: str) -> grain.IterDataset:
    """One batch is prepared ahead in a thread, or in each of `num_workers` processes."""
    return start_workers(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)),
                         num_workers, worker_priority)
