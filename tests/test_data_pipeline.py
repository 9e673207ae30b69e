"""The real-data grain pipeline: bad samples skipped and counted exactly, exact resume, mixtures, crops.

Data directories are written here record by record (the layout of `mmjax/data/records.py`
built by hand), so corruption can be injected at any level and the expected counts
are known independently of the pipeline.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import resource
import struct
import subprocess
import sys
import zlib

import jax
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from mmjax.data.arrayrecord_source import RecordSource
from mmjax.data.decode import DecodeOptions, crop_box, decode_image
from mmjax.data.open_files import SPARE_DESCRIPTORS
from mmjax.data.element_random import element_uniforms
from mmjax.data.pipeline import records_train_dataset
from mmjax.data.preprocess import ImagePreprocess
from mmjax.data.records import SKIP_REASONS, Sample, Skip
from mmjax.data.tokenizers import Tokenizer
from mmjax.train.config import ConfigError, base_config, validate
from mmjax.parallel import make_mesh
from mmjax.train.prefetch import prefetch_to_mesh
from test_data_convert import image_bytes

TOKENIZER = Tokenizer.for_synthetic(16)
KINDS = ("ok", "undecodable_image", "truncated_jpeg", "truncated_png", "empty_caption", "long_caption",
         "truncated_record", "oversized_image")


def with_declared_size(png: bytes, width: int, height: int) -> bytes:
    """`png` whose IHDR chunk (bytes 8–32: length, type, width, height, …, CRC) declares `width × height`:
    a decompression bomb's header on a small image's data."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def record(key: str, captions: list[str], image: bytes, fmt: str = "png") -> bytes:
    header = json.dumps({"key": key, "captions": captions, "image_format": fmt, "image_bytes": len(image),
                         "meta": {}}).encode()
    return b"MMJ1" + struct.pack("<I", len(header)) + header + image


def write_data_dir(directory, shards: list[list[bytes]]) -> None:
    os.makedirs(directory, exist_ok=True)
    entries = []
    for number, records in enumerate(shards):
        name = f"shard-{number:05d}.array_record"
        writer = ArrayRecordWriter(os.path.join(directory, name), "group_size:1")
        for data in records:
            writer.write(data)
        writer.close()
        entries.append({"file": name, "count": len(records), "source": "test", "dropped": {}})
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump({"format": "mmjax-records-1", "num_records": sum(len(r) for r in shards), "dropped": {},
                   "shards": entries}, f)


def clean_dir(directory, count: int, offset: int = 0, per_shard: int = 10) -> None:
    """`count` good records; record n is a solid PNG of colour `image_bytes(offset + n)` captioned 'a red circle'."""
    data = [record(f"k{offset + n}", ["a red circle", "a blue square"], image_bytes(offset + n))
            for n in range(count)]
    write_data_dir(directory, [data[i:i + per_shard] for i in range(0, count, per_shard)])


def image_index(images: np.ndarray) -> np.ndarray:
    """The `image_bytes` index of solid images `[b, S, S, 3]`."""
    return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)


def corrupted_dir(directory, rng: np.random.Generator, num_shards: int = 10, per_shard: int = 100, missing: int = 6):
    """1 000 records, each kind of corruption at random places, shard `missing` deleted. Returns the expected counts
    by reason and the expected skipped record ids."""
    expected, skipped_ids, shards = dict.fromkeys(SKIP_REASONS, 0), set(), []
    kinds = rng.choice(len(KINDS), size=num_shards * per_shard, p=[0.51] + [0.07] * 7)
    for shard in range(num_shards):
        records = []
        for position in range(per_shard):
            n = shard * per_shard + position
            kind = KINDS[kinds[n]]
            jpeg, png = image_bytes(n, "JPEG", (32, 32)), image_bytes(n, "PNG", (32, 32))
            cut = lambda data: data[:int(len(data) * rng.uniform(0.3, 0.8))]
            data = {"ok": lambda: record(f"k{n}", ["a red circle"], jpeg, "jpeg"),
                    "undecodable_image": lambda: record(f"k{n}", ["a red circle"], rng.bytes(500)),
                    "truncated_jpeg": lambda: record(f"k{n}", ["a red circle"], cut(jpeg), "jpeg"),
                    "truncated_png": lambda: record(f"k{n}", ["a red circle"], cut(png)),
                    "empty_caption": lambda: record(f"k{n}", ["   ", ""], png),
                    "long_caption": lambda: record(f"k{n}", ["red " * 600], png),
                    "truncated_record": lambda: cut(record(f"k{n}", ["a red circle"], png)),
                    "oversized_image": lambda: record(f"k{n}", ["a red circle"],
                                                      with_declared_size(png, 20_000, 10_000))}[kind]()
            records.append(data)
            reason = "missing_shard" if shard == missing else {"truncated_jpeg": "truncated_image",
                                                         "truncated_png": "truncated_image"}.get(kind, kind)
            if reason != "ok":
                expected[reason] += 1
                skipped_ids.add(f"shard-{shard:05d}.array_record:{position} {reason}")
        shards.append(records)
    write_data_dir(directory, shards)
    os.remove(os.path.join(directory, f"shard-{missing:05d}.array_record"))
    return expected, skipped_ids


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_kind_of_corruption_is_skipped_and_counted_exactly(tmp_path, num_workers):
    expected, expected_ids = corrupted_dir(tmp_path, np.random.default_rng(1))
    assert all(expected[reason] > 20 for reason in SKIP_REASONS), expected  # every kind injected, many times
    iterator = iter(records_train_dataset([RecordSource(str(tmp_path))], None, 0, 64, DecodeOptions(16),
                                          TOKENIZER, num_workers, process_index=0, process_count=1, num_epochs=1))
    good = sum(len(batch["image"]) for batch in iterator if "image" in batch)
    iterator.close()
    assert dict(zip(SKIP_REASONS, iterator.skip_counts.tolist())) == expected
    assert set(iterator.new_skipped) == expected_ids and len(iterator.new_skipped) == len(expected_ids)
    assert good == 1000 - sum(expected.values()) == iterator.examples_per_source.sum()


def batches(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_from_state_gives_the_same_next_batches_and_counts(tmp_path, num_workers):
    rng = np.random.default_rng(2)
    corrupted_dir(tmp_path, rng, num_shards=4, per_shard=25, missing=2)
    make = lambda: iter(records_train_dataset([RecordSource(str(tmp_path))], None, 5, 8, DecodeOptions(16),
                                              TOKENIZER, num_workers, process_index=0, process_count=1))
    original = make()
    batches(original, 13)  # past the end of the first epoch (≈ 60 good records)
    state = json.loads(json.dumps(original.get_state()))  # as the checkpoint stores it
    counts = original.skip_counts.copy()
    want = batches(original, 6)
    resumed = make()
    resumed.set_state(state)
    got = batches(resumed, 6)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["text"], b["text"])
    np.testing.assert_array_equal(resumed.skip_counts, original.skip_counts)
    assert (counts > 0).sum() >= 5 and (original.skip_counts > counts).any()
    original.close()
    resumed.close()


def test_a_record_gets_the_same_crop_and_caption_with_any_number_of_workers(tmp_path):
    """Random numbers belong to stream positions: 0 and 2 worker processes crop every record alike."""
    ramp = np.linspace(0, 255, 48).astype(np.uint8)
    data = []
    for n in range(60):  # red/green ramps show the crop; blue = n names the record (resampling keeps a constant)
        pixels = np.stack([*np.meshgrid(ramp, ramp[::-1]), np.full((48, 48), n, np.uint8)], -1)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        data.append(record(f"k{n}", ["a red circle", "a blue square", "a green star"], buffer.getvalue()))
    write_data_dir(tmp_path, [data[:30], data[30:]])
    seen = []
    for num_workers in (0, 2):
        iterator = iter(records_train_dataset([RecordSource(str(tmp_path))], None, 4, 8, DecodeOptions(
            16, crop_scale=(0.2, 0.6)), TOKENIZER, num_workers, process_index=0, process_count=1, num_epochs=1))
        by_record = {int(image[0, 0, 2]): (image, text) for batch in iterator
                     for image, text in zip(batch["image"], batch["text"])}
        iterator.close()
        seen.append(by_record)
    assert sorted(seen[0]) == sorted(seen[1]) == list(range(60))
    for n in range(60):
        np.testing.assert_array_equal(seen[0][n][0], seen[1][n][0])
        np.testing.assert_array_equal(seen[0][n][1], seen[1][n][1])
    crops = {seen[0][n][0][:, :, :2].tobytes() for n in range(60)}
    captions = {seen[0][n][1].tobytes() for n in range(60)}
    assert len(crops) > 50 and len(captions) == 3  # the crops and captions do vary


def test_element_uniforms_are_uniform_independent_and_keyed_by_seed_and_position():
    u = element_uniforms(7, np.arange(20_000), 23)
    assert u.shape == (20_000, 23) and u.min() >= 0 and u.max() < 1
    standard_error = math.sqrt(1 / 12 / u.shape[0])
    assert np.abs(u.mean(0) - 0.5).max() < 5 * standard_error
    assert np.abs(u.var(0) - 1 / 12).max() < 0.005
    correlation = np.corrcoef(np.concatenate([u[:-1], u[1:, :1]], 1).T)  # across columns and neighbouring positions
    assert np.abs(correlation - np.eye(24)).max() < 5 / math.sqrt(u.shape[0])
    np.testing.assert_array_equal(element_uniforms(7, np.array([5, 3]), 23), u[[5, 3]])
    assert np.isclose(element_uniforms(8, np.arange(100), 23), u[:100]).mean() < 0.01  # another seed, other numbers


@pytest.mark.parametrize("ahead", [0, 2])
def test_device_prefetch_checkpoints_and_counts_only_the_batches_returned(tmp_path, ahead):
    """With batches read ahead onto the mesh, the state, the skip totals and the logged ids are those of a plain
    iterator that has returned as many batches."""
    corrupted_dir(tmp_path, np.random.default_rng(3), num_shards=4, per_shard=25, missing=2)
    dataset = lambda: records_train_dataset([RecordSource(str(tmp_path))], None, 3, 4, DecodeOptions(16), TOKENIZER,
                                            process_index=0, process_count=1)
    mesh = make_mesh(devices=jax.devices()[:1])
    plain = iter(dataset())
    batches(plain, 3)
    prefetched = prefetch_to_mesh(dataset(), mesh, ahead)
    first = batches(prefetched, 3)
    assert all(isinstance(batch["image"], jax.Array) and set(batch) == {"image", "text"} for batch in first)
    state = json.loads(json.dumps(prefetched.get_state()))
    assert state == json.loads(json.dumps(plain.get_state()))  # as if no batch had been read ahead
    assert prefetched.new_skipped == plain.new_skipped and len(plain.new_skipped) > 0
    np.testing.assert_array_equal(prefetched.skip_counts, plain.skip_counts)
    want = batches(plain, 5)
    resumed = prefetch_to_mesh(dataset(), mesh, ahead)
    resumed.set_state(state)
    for a, b, c in zip(want, batches(resumed, 5), batches(prefetched, 5), strict=True):
        for key in ("image", "text"):
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])
    np.testing.assert_array_equal(resumed.skip_counts, plain.skip_counts)
    np.testing.assert_array_equal(prefetched.skip_counts, plain.skip_counts)
    for iterator in (plain, prefetched, resumed):
        iterator.close()


def test_a_shard_array_record_cannot_open_is_skipped_and_counted(tmp_path):
    """ArrayRecord refuses files under 64 KB (an empty shard, one cut short) with a RuntimeError, which
    stopped the run; their records are now skipped as truncated, and the other shards still read."""
    clean_dir(tmp_path, 50)
    open(tmp_path / "shard-00001.array_record", "wb").close()
    with open(tmp_path / "shard-00002.array_record", "r+b") as f:
        f.truncate(1000)
    (tmp_path / "shard-00003.array_record").write_bytes(np.random.default_rng(0).bytes(131_072))  # corrupted
    iterator = iter(records_train_dataset([RecordSource(str(tmp_path))], None, 0, 10, DecodeOptions(8),
                                          TOKENIZER, process_index=0, process_count=1, num_epochs=1))
    images = np.concatenate([batch["image"] for batch in iterator if "image" in batch])  # the last: skips only
    assert sorted(image_index(images).tolist()) == [*range(10), *range(40, 50)]
    assert dict(zip(SKIP_REASONS, iterator.skip_counts.tolist()))["truncated_record"] == 30
    assert sum(iterator.skip_counts) == 30


def count_threaded_reads(monkeypatch) -> list[int]:
    """Patches grain's batched ArrayRecord read (a thread per shard) to note each call's number of keys."""
    import grain

    calls, batched = [], grain.sources.ArrayRecordDataSource.__getitems__
    monkeypatch.setattr(grain.sources.ArrayRecordDataSource, "__getitems__",
                        lambda self, keys: calls.append(len(keys)) or batched(self, keys))
    return calls


@pytest.mark.parametrize("reads", ["parallel", "single"])
def test_a_batched_read_gives_what_reading_record_by_record_gives(tmp_path, reads, monkeypatch):
    """The pipeline reads a batch's records in one `_getitems` call (one ArrayRecord read per shard in threads, or
    one record at a time); reading each record alone is the reference, with a missing shard, a damaged one,
    repeated and unordered indices."""
    clean_dir(tmp_path, 60)
    os.remove(tmp_path / "shard-00001.array_record")
    source = RecordSource(str(tmp_path), reads)
    assert source.parallel_reads == (reads == "parallel")
    healthy = list(np.random.default_rng(0).permutation(60)) + [3, 3, 59, 0]
    threaded = count_threaded_reads(monkeypatch)
    batched = source._getitems(healthy)
    assert threaded == ([54] if reads == "parallel" else [])  # the 10 records of the missing shard are not read
    assert batched == [source[i] for i in healthy]
    assert sum(isinstance(item, Skip) for item in source._getitems(healthy)) == 10
    with open(tmp_path / "shard-00004.array_record", "r+b") as f:
        f.truncate(1000)
    damaged = RecordSource(str(tmp_path), reads)
    expected = [damaged[i] for i in healthy]
    assert sorted(item.reason for item in expected if isinstance(item, Skip)) == (["missing_shard"] * 10
                                                                                 + ["truncated_record"] * 10)
    assert damaged._getitems(healthy) == expected


@pytest.mark.parametrize("reads", ["parallel", "single"])
def test_a_shard_the_system_will_not_open_stops_the_run_in_one_line(tmp_path, reads):
    """Too many open files is not bad data: skipping those shards lost 280 of 600 records without a word."""
    clean_dir(tmp_path, 40)
    source = RecordSource(str(tmp_path), reads)
    taken = []
    try:
        while True:  # take every file descriptor there is
            taken.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    try:
        for read in (lambda: source[0], lambda: source._getitems([5, 0])):
            with pytest.raises(ValueError, match=r"^cannot open shard .*shard-00000.array_record: open\(\) failed"):
                read()
    finally:
        for descriptor in taken:
            os.close(descriptor)


OPEN_FILES_SCRIPT = """
import resource, sys
from mmjax.data.arrayrecord_source import RecordSource
from mmjax.data.decode import DecodeOptions
from mmjax.data.pipeline import records_train_dataset
from mmjax.data.tokenizers import Tokenizer
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
try:
    sources = [RecordSource(directory) for directory in sys.argv[3:]]
    read = sum(type(source[i]).__name__ == "RawRecord" for source in sources for i in range(len(source)))
    records_train_dataset(sources, None, 0, 2, DecodeOptions(8), Tokenizer.for_synthetic(), process_index=0,
                          process_count=1)
    print(read, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
except ValueError as error:
    print(error)
"""


def open_files_run(soft: int, hard: int, *directories) -> str:
    """The line `OPEN_FILES_SCRIPT` prints in a fresh process whose open-file limits are (`soft`, `hard`)."""
    result = subprocess.run([sys.executable, "-c", OPEN_FILES_SCRIPT, str(soft), str(hard), *map(str, directories)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_every_shard_stays_readable_above_the_soft_open_file_limit(tmp_path):
    """Readers keep their shards open: with the usual soft limit of 1 024, a data set of more shards stopped at
    the first shard past it ("cannot open shard"), hours into a run. The soft limit is now raised to fit."""
    clean_dir(tmp_path / "a", 400, per_shard=2)
    clean_dir(tmp_path / "b", 400, per_shard=2)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert open_files_run(100, hard, tmp_path / "a") == f"400 {200 + SPARE_DESCRIPTORS}"
    assert open_files_run(100, hard, tmp_path / "a", tmp_path / "b") == f"800 {400 + SPARE_DESCRIPTORS}"


def test_a_hard_open_file_limit_below_the_shard_count_is_refused_up_front(tmp_path):
    clean_dir(tmp_path / "a", 400, per_shard=2)
    clean_dir(tmp_path / "b", 400, per_shard=2)
    refusal = ("{} has {} shards and a reader keeps each one open, but this process may open only {} files "
               "(`ulimit -Hn`; 256 are kept for everything else): raise the hard limit, or convert with a larger "
               "--records_per_shard")
    assert open_files_run(100, 300, tmp_path / "a") == refusal.format(tmp_path / "a", 200, 300)
    # each source fits alone, the two together do not
    assert open_files_run(100, 600, tmp_path / "a", tmp_path / "b") == refusal.format("the mixture of 2 sources",
                                                                                       400, 600)


def test_two_epochs_see_every_good_record_twice_in_new_crops(tmp_path):
    clean_dir(tmp_path, 40)
    options = DecodeOptions(16, crop_scale=(0.3, 0.6))
    iterator = iter(records_train_dataset([RecordSource(str(tmp_path))], None, 0, 10, options, TOKENIZER,
                                          process_index=0, process_count=1, num_epochs=2))
    images = np.concatenate([batch["image"] for batch in iterator])
    indices = image_index(images)
    assert sorted(indices.tolist()) == sorted(list(range(40)) * 2)
    assert indices[:40].tolist() != indices[40:].tolist()  # reshuffled


def test_mixture_proportions_hold_within_sampling_error(tmp_path):
    clean_dir(tmp_path / "a", 30, offset=0)
    clean_dir(tmp_path / "b", 20, offset=1000)
    weights, n = (0.7, 0.3), 2000
    iterator = iter(records_train_dataset([RecordSource(str(tmp_path / "a")), RecordSource(str(tmp_path / "b"))],
                                          weights, 0, 50, DecodeOptions(8, augment=False), TOKENIZER,
                                          process_index=0, process_count=1))
    indices = np.concatenate([image_index(batch["image"]) for batch in batches(iterator, n // 50)])
    from_a = int((indices < 1000).sum())
    # Binomial 4-sigma bound: what independent draws with p = 0.7 would stay within (grain's mix does better).
    assert abs(from_a - weights[0] * n) <= 4 * math.sqrt(n * weights[0] * weights[1])
    assert iterator.examples_per_source.tolist() == [from_a, n - from_a]
    assert set(indices[indices < 1000]) == set(range(30)) and set(indices[indices >= 1000]) == set(range(1000, 1020))
    # Every n-th position (another process, or grain worker) still mixes: grain's interleave alone is periodic
    # (a, b, a, b, … for equal weights), so process 0 of 2 saw only a and process 1 only b.
    for process_index in (0, 1):
        half = iter(records_train_dataset([RecordSource(str(tmp_path / "a")), RecordSource(str(tmp_path / "b"))],
                                          (0.5, 0.5), 0, 50, DecodeOptions(8, augment=False), TOKENIZER,
                                          process_index=process_index, process_count=2))
        from_a = [int((image_index(batch["image"]) < 1000).sum()) for batch in batches(half, 40)]
        assert all(0 < count < 25 for count in from_a), from_a
        assert abs(sum(from_a) - 500) <= 4 * math.sqrt(1000 * 0.25)
    clean_dir(tmp_path / "c", 10, offset=2000)  # a resume that adds a source: one line, not a numpy broadcast error
    three = iter(records_train_dataset([RecordSource(str(tmp_path / d)) for d in "abc"], (0.5, 0.3, 0.2), 0, 50,
                                       DecodeOptions(8, augment=False), TOKENIZER, process_index=0, process_count=1))
    with pytest.raises(ValueError, match=r"^the checkpoint's data stream mixes 2 source\(s\), this config's "
                                         r"data.sources 3: resume with the same sources"):
        three.set_state(iterator.get_state())


def test_caption_sampling_picks_each_valid_caption(tmp_path):
    vocabulary = TOKENIZER.backend.get_vocab()
    write_data_dir(tmp_path, [[record(f"k{n}", ["red", "", "blue", "x" * 2000], image_bytes(n))
                               for n in range(50)]])
    iterator = iter(records_train_dataset([RecordSource(str(tmp_path))], None, 0, 50, DecodeOptions(8), TOKENIZER,
                                          process_index=0, process_count=1, num_epochs=1))
    words = next(iterator)["text"][:, 1]
    assert set(words.tolist()) == {vocabulary["red"], vocabulary["blue"]}
    assert 10 <= (words == vocabulary["red"]).sum() <= 40


def test_crop_box_matches_torchvision_random_resized_crop():
    torchvision = pytest.importorskip("torchvision")
    torch = pytest.importorskip("torch")
    get_params = torchvision.transforms.RandomResizedCrop.get_params
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    for width, height in [(64, 48), (30, 200)]:  # crop statistics over 4 000 draws each
        ours = np.array([crop_box(width, height, rng.random(22), scale, ratio) for _ in range(4000)])
        ours_w, ours_h = ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
        theirs = np.array([get_params(torch.zeros(3, height, width), scale, ratio) for _ in range(4000)])
        theirs_h, theirs_w = theirs[:, 2], theirs[:, 3]
        assert (ours[:, :2] >= 0).all() and (ours[:, 2] <= width).all() and (ours[:, 3] <= height).all()
        for a, b in [(ours_w * ours_h, theirs_w * theirs_h), (ours_w / ours_h, theirs_w / theirs_h)]:
            assert abs(a.mean() - b.mean()) < 0.03 * b.mean() and abs(np.median(a) - np.median(b)) < 0.05 * b.mean()
    for width, height in [(500, 20), (20, 500)]:  # no random crop fits: the same centred fallback
        top, left, h, w = get_params(torch.zeros(3, height, width), (0.99, 1.0), ratio)
        assert crop_box(width, height, rng.random(22), (0.99, 1.0), ratio) == (left, top, left + w, top + h)


def test_jpeg_draft_decoding_matches_full_decoding_closely():
    buffer = io.BytesIO()
    gradient = np.linspace(0, 255, 256, dtype=np.uint8)
    Image.fromarray(np.stack([*np.meshgrid(gradient, gradient[::-1]), np.full((256, 256), 90, np.uint8)],
                             -1)).save(buffer, format="JPEG", quality=95)
    sample = Sample("k", ("c",), buffer.getvalue())
    options = DecodeOptions(16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    drafted = decode_image(sample, options, np.random.default_rng(0).random(22)).astype(int)
    full = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").resize(
        (16, 16), Image.Resampling.BICUBIC), int)
    assert np.abs(drafted - full).mean() < 3


@pytest.mark.parametrize("augment", [True, False])
def test_a_decompression_bomb_is_an_oversized_image_not_a_truncated_one(augment):
    """An image whose header declares more than PIL's limit (2 × 89.5 M pixels) was counted as "truncated_image",
    which sent users looking for damaged files among valid (if huge) ones."""
    png = image_bytes(3, "PNG", (32, 32))
    options, uniforms = DecodeOptions(16, augment=augment), np.random.default_rng(0).random(22)
    same_size = decode_image(Sample("k", ("c",), with_declared_size(png, 32, 32)), options, uniforms)
    np.testing.assert_array_equal(same_size, decode_image(Sample("k", ("c",), png), options, uniforms))
    assert decode_image(Sample("k", ("c",), with_declared_size(png, 20_000, 10_000)), options,
                        uniforms) == "oversized_image"


def test_a_checkpoint_from_before_a_skip_reason_was_added_resumes_with_it_counted_from_zero(tmp_path):
    clean_dir(tmp_path, 20)
    make = lambda: iter(records_train_dataset([RecordSource(str(tmp_path))], None, 5, 4, DecodeOptions(16),
                                              TOKENIZER, 0, process_index=0, process_count=1))
    original = make()
    batches(original, 2)
    state = json.loads(json.dumps(original.get_state()))
    state["skip_counts"] = list(range(1, len(SKIP_REASONS)))  # one reason fewer, as an older version wrote it
    resumed = make()
    resumed.set_state(state)
    assert resumed.skip_counts.tolist() == [*range(1, len(SKIP_REASONS)), 0]
    for a, b in zip(batches(original, 2), batches(resumed, 2), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    original.close()
    resumed.close()


@pytest.mark.parametrize("augment", [True, False])
def test_sixteen_bit_greyscale_is_scaled_to_eight_bits(augment):
    """PIL's `convert("RGB")` clips 16-bit values at 255: a mid-grey 16-bit PNG would come out white."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 24), 40_000, np.uint16)).save(buffer, format="PNG")  # 40 000 / 257 = 155.6
    sample = Sample("k", ("c",), buffer.getvalue())
    pixels = decode_image(sample, DecodeOptions(16, augment=augment), np.random.default_rng(0).random(22))
    assert pixels.shape == (16, 16, 3) and (pixels == 156).all()
    np.testing.assert_array_equal(ImagePreprocess(16).resized(Image.open(buffer)), pixels)
    transparent = io.BytesIO()
    Image.fromarray(np.full((20, 24), 40_000, np.uint16)).save(transparent, format="PNG", transparency=0)
    np.testing.assert_array_equal(ImagePreprocess(16, alpha_on_white=True).resized(Image.open(transparent)), pixels)


@pytest.mark.parametrize("overrides, expected", [
    ({"name": "webdataset"}, "config.data.name='webdataset' must be one of"),
    ({"name": "arrayrecord", "sources": ()}, "must name exactly 1 source(s)"),
    ({"name": "mixture", "sources": ("a", "b"), "weights": (1.0,)}, "config.data.weights=(1.0,) must be 2 finite pos"),
    ({"name": "mixture", "sources": ("a", "b"), "weights": (1.0, float("inf"))}, "weights=(1.0, inf) must be 2 finite"),
    ({"name": "mixture", "sources": ("a", "b"), "weights": (1.0, float("nan"))}, "weights=(1.0, nan) must be 2 finite"),
    ({"name": "mixture", "sources": ("a", "b"), "weights": (1.0, 5e-324)}, "weights=(1.0, 5e-324) must be 2 finite"),
    ({"name": "tfds", "sources": ("coco",)}, "data.name='tfds' needs 'tfds:NAME'"),
    ({"name": "arrayrecord", "sources": ("a",), "crop_scale": (0.5, 1.5)}, "config.data.crop_scale=(0.5, 1.5)"),
    ({"name": "arrayrecord", "sources": ("a",), "max_skip_fraction": 2.0}, "max_skip_fraction=2.0 must be in"),
    ({"sources": ("data/mine",)}, "config.data.sources=('data/mine',) is ignored by data.name='synthetic'"),
    # real-data options on the synthetic world were accepted, not even range-checked, and ignored
    ({"crop_scale": (5.0, 9.0)}, "config.data.crop_scale=(5.0, 9.0) is ignored by data.name='synthetic' (it renders "
                                 "its images and captions): leave it at (0.9, 1.0)"),
    ({"augment": False}, "config.data.augment=False is ignored by data.name='synthetic'"),
    ({"weights": [0.8, 0.2]}, "config.data.weights=(0.8, 0.2) is ignored by data.name='synthetic'"),
    ({"name": "arrayrecord", "sources": ("a",), "weights": (0.8, 0.2)},
     "config.data.weights=(0.8, 0.2) is ignored by data.name='arrayrecord': weights mix the sources of "
     "data.name='mixture'"),
    ({"seed": -1}, "config.data.seed=-1 must be in [0, 2**32)"),
    ({"image_std": (0.5, 0.0, 0.5)}, "image_std=(0.5, 0.0, 0.5) must be 3 numbers each, the std positive"),
    ({"worker_priority": "low"}, "config.data.worker_priority='low' must be one of ('normal', 'idle')"),
    ({"record_reads": "threads"}, "config.data.record_reads='threads' is ignored by data.name='synthetic'"),
    ({"name": "arrayrecord", "sources": ("a",), "record_reads": "threads"},
     "config.data.record_reads='threads' must be one of ('auto', 'parallel', 'single')"),
    ({"name": "tfds", "sources": ("tfds:coco_captions",), "record_reads": "single"},
     "config.data.record_reads='single' is ignored: every source of config.data.sources=('tfds:coco_captions',) "
     "is tfds:NAME, which TFDS reads itself"),
])
def test_bad_data_configs_are_one_line_errors(overrides, expected):
    config = base_config("clip-test", "clip")
    config.multi_positive = overrides.get("name") == "webdataset"
    for key, value in overrides.items():
        config.data[key] = value
    with pytest.raises(ConfigError, match=re.escape(expected)) as raised:
        validate(config)
    assert "\n" not in str(raised.value)
    config = base_config("clip-test", "clip")
    config.data.name, config.data.sources = "arrayrecord", ("a",)
    with pytest.raises(ConfigError, match="multi_positive=True needs the synthetic data's labels") as raised:
        validate(config)
    assert "\n" not in str(raised.value)


def test_a_tfds_split_without_a_tfds_source_is_refused():
    config = base_config("clip-test", "clip")
    config.multi_positive = False
    config.data.name, config.data.sources, config.data.tfds_split = "arrayrecord", ("data/shapes",), "test"
    with pytest.raises(ConfigError, match=re.escape("config.data.tfds_split='test' is ignored: no source of "
                                                    "config.data.sources=('data/shapes',) is tfds:NAME")):
        validate(config)
    config.data.name, config.data.sources = "mixture", ("data/shapes", "tfds:coco_captions")
    config.data.weights = (1.0, 1.0)
    validate(config)


def test_a_synthetic_config_read_back_from_json_passes():
    """A resumed run's config comes from config.json, with lists for tuples: the defaults must still pass."""
    import ml_collections

    config = base_config("clip-test", "clip")
    validate(ml_collections.ConfigDict(json.loads(config.to_json())))


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
@pytest.mark.parametrize("priority", ["normal", "idle"])
def test_data_workers_run_at_the_priority_asked(priority):
    """The operating system's word for the scheduling policy of the worker thread that runs the pipeline."""
    import grain

    from mmjax.data.workers import start_workers

    expected = {"normal": os.SCHED_OTHER, "idle": os.SCHED_IDLE}[priority]
    dataset = grain.MapDataset.source([0] * 3).map(os.sched_getscheduler).to_iter_dataset()  # 0: the calling thread
    iterator = iter(start_workers(dataset, 1, priority))
    try:
        assert list(iterator) == [expected] * 3
    finally:
        iterator.close()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the main process keeps its priority


def _threads_started_by_tokenizing(_) -> int:
    """How many threads this process gains while the demo tokenizer encodes 256 captions."""
    before = len(os.listdir("/proc/self/task"))
    TOKENIZER(["a small red circle at the top left"] * 256)
    return len(os.listdir("/proc/self/task")) - before


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in Linux's /proc")
def test_data_workers_tokenize_without_a_thread_pool():
    """The worker processes are the pipeline's parallelism; the Hugging Face tokenizer's own pool of threads cost
    a third more CPU per batch."""
    import grain

    from mmjax.data.workers import start_workers

    dataset = grain.MapDataset.source([0]).map(_threads_started_by_tokenizing).to_iter_dataset()
    iterator = iter(start_workers(dataset, 1))
    try:
        assert list(iterator) == [0]
    finally:
        iterator.close()


def test_data_smaller_than_one_batch_is_a_one_line_error(tmp_path):
    """Each batch would hold copies of the same pairs, which a contrastive loss counts as each other's negatives."""
    from mmjax.data import pipeline

    clean_dir(tmp_path / "a", 3)
    clean_dir(tmp_path / "b", 4, offset=100)
    config = base_config("clip-tiny", "clip").data
    config.name, config.sources, config.weights = "mixture", (str(tmp_path / "a"), str(tmp_path / "b")), (0.5, 0.5)
    with pytest.raises(ValueError, match=r"^config.data.sources hold 7 records, fewer than one batch of 8 "
                                         r"\(config.batch_size\): every batch would repeat them; use a smaller "
                                         r"batch or more data$"):
        pipeline.config_train_dataset(config, 8, 16, TOKENIZER)
    iterator = iter(pipeline.config_train_dataset(config, 7, 16, TOKENIZER))
    assert len(next(iterator)["image"]) == 7


@pytest.mark.parametrize("name", ["synthetic", "arrayrecord"])
def test_the_config_names_the_workers_priority(tmp_path, monkeypatch, name):
    from mmjax.data import pipeline

    started = []
    monkeypatch.setattr(pipeline, "start_workers",
                        lambda dataset, num_workers, priority: started.append(priority) or dataset)
    config = base_config("clip-tiny", "clip").data
    config.worker_priority = "idle"
    if name == "arrayrecord":
        clean_dir(tmp_path, 10)
        config.name, config.sources = name, (str(tmp_path),)
    pipeline.config_train_dataset(config, 8, 16, TOKENIZER)
    assert started == ["idle"]


def test_a_mixture_reads_a_batch_as_it_reads_record_by_record(tmp_path):
    """`ShuffleWithinWindows._getitems` hands each component its share of a batch in one call; reading the
    mixture element by element is the reference."""
    from mmjax.data.mixture import mix, shuffled_component

    clean_dir(tmp_path / "a", 30)
    clean_dir(tmp_path / "b", 20, offset=100)
    components = [shuffled_component(RecordSource(str(tmp_path / name)), i, 0, tagged=True)
                  for i, name in enumerate("ab")]
    mixed = mix(components, (0.7, 0.3), seed=1)
    indices = [*range(5000, 5100), 3, 3, 0, 9000]  # beyond the first window, repeated, out of order
    assert mixed._getitems(indices) == [mixed[i] for i in indices]
    assert {item.source for item in mixed._getitems(indices)} == {0, 1}


def test_the_config_chooses_how_records_are_read_and_both_ways_give_the_same_batches(tmp_path, monkeypatch):
    """`data.record_reads` reaches each `RecordSource`; "auto" asks the mount table (here: network storage, so
    grain's threaded read); a worker process reading in threads gives the batches it gives reading one at a time."""
    from mmjax.data import arrayrecord_source, pipeline

    clean_dir(tmp_path, 40)
    sources, open_source = [], pipeline.open_source
    monkeypatch.setattr(pipeline, "open_source", lambda *args: sources.append(open_source(*args)) or sources[-1])
    monkeypatch.setattr(arrayrecord_source, "on_network_storage", lambda directory: directory == str(tmp_path))
    config = base_config("clip-tiny", "clip").data
    config.name, config.sources, config.num_workers = "arrayrecord", (str(tmp_path),), 1
    batches = {}
    for reads in ("auto", "single", "parallel"):
        config.record_reads = reads
        iterator = iter(pipeline.config_train_dataset(config, 8, 16, TOKENIZER))
        try:
            batches[reads] = [next(iterator) for _ in range(3)]
        finally:
            iterator.close()
    assert [source.parallel_reads for source in sources] == [True, False, True]
    for batch_single, batch_parallel in zip(batches["single"], batches["parallel"]):
        assert batch_single.keys() == batch_parallel.keys()
        for key in batch_single:
            np.testing.assert_array_equal(batch_single[key], batch_parallel[key])
