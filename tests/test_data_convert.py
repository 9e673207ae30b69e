"""`mmjax data convert`: webdataset tars, captions files and TFDS → ArrayRecord data directories.

The expected records come from the inputs the tests write, read back with the plain
`ArrayRecordReader` and parsed by hand (the layout in `mmjax/data/records.py`).
"""
from __future__ import annotations

import csv
import hashlib
from collections import Counter
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader
from fake_coco import write_fake_coco_captions
from PIL import Image
from test_benchmarks import write_shard
from test_cli import mmjax

from mmjax.data import shards, synthetic
from mmjax.data.convert import convert
from mmjax.data.filter import Scores, selection_threshold, write_filtered
from mmjax.data.tfds_source import prepared_dir
from mmjax.eval.sources.tasks import RETRIEVAL
from mmjax.eval.sources.wds_source import wds_index, wds_task

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def image_bytes(index: int, fmt: str = "PNG", size: tuple[int, int] = (24, 20)) -> bytes:
    """A solid image whose colour encodes `index`: (index % 256, index // 256, 77)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (index % 256, index // 256, 77)).save(buffer, format=fmt)
    return buffer.getvalue()


def read_records(directory) -> list[dict]:
    """Every record of a data directory, parsed by hand: key, captions, image bytes, meta."""
    with open(os.path.join(directory, "index.json")) as f:
        index = json.load(f)
    records = []
    for shard in index["shards"]:
        reader = ArrayRecordReader(os.path.join(directory, shard["file"]))
        data = reader.read_all()
        reader.close()
        assert len(data) == shard["count"]
        for record in data:
            assert record[:4] == b"MMJ1"
            (length,) = struct.unpack("<I", record[4:8])
            header = json.loads(record[8:8 + length])
            assert header["image_bytes"] == len(record) - 8 - length
            records.append({"key": header["key"], "captions": header["captions"], "image": record[8 + length:],
                            "meta": header["meta"]})
    return records


def wds_inputs(root, num_shards: int = 4, per_shard: int = 5) -> list[dict]:
    """Tar shards in img2dataset layout (jpg or png, txt, json); returns the samples they hold."""
    expected = []
    root.mkdir(parents=True, exist_ok=True)
    for shard in range(num_shards):
        samples = []
        for i in range(per_shard):
            n = shard * per_shard + i
            key = f"{shard:05d}{i:04d}"
            image = image_bytes(n, "JPEG" if n % 2 else "PNG")
            captions = [f"caption {n}"] + ([f"second caption {n}"] if n % 3 == 0 else [])
            meta = {"url": f"http://example.com/{n}.jpg", "width": 24}
            samples.append((key, {"jpg" if n % 2 else "png": image, "txt": "\n".join(captions).encode(),
                                  "json": json.dumps(meta).encode()}))
            expected.append({"key": key, "captions": captions, "image": image, "meta": meta})
        write_shard(root / f"{shard:05d}.tar", samples)
    return expected


def test_webdataset_round_trip_keeps_bytes_captions_and_metadata(tmp_path):
    expected = wds_inputs(tmp_path / "wds")
    index = convert(str(tmp_path / "wds"), str(tmp_path / "out"), progress=False)
    assert index["num_records"] == 20 and len(index["shards"]) == 4 and index["dropped"] == {}
    assert read_records(tmp_path / "out") == expected


def test_dropped_samples_are_counted_by_reason(tmp_path):
    (tmp_path / "wds").mkdir()
    write_shard(tmp_path / "wds" / "a.tar", [
        ("k0", {"jpg": image_bytes(0, "JPEG"), "txt": b"fine"}),
        ("k1", {"txt": b"no image here"}),
        ("k2", {"png": image_bytes(2), "txt": b"  \n \n"}),
        ("k3", {"png": image_bytes(3)}),
        ("k4", {"webp": image_bytes(4, "WEBP"), "txt": b"webp is fine"})])
    index = convert(str(tmp_path / "wds"), str(tmp_path / "out"), progress=False)
    assert index["dropped"] == {"no_caption": 2, "no_image": 1}
    assert [r["key"] for r in read_records(tmp_path / "out")] == ["k0", "k4"]


def test_cli_errors_come_before_the_work_and_an_empty_conversion_fails(tmp_path):
    (tmp_path / "wds").mkdir()
    write_shard(tmp_path / "wds" / "a.tar", [("k0", {"txt": b"no image"}), ("k1", {"png": image_bytes(1)})])
    empty = mmjax("data", "convert", str(tmp_path / "wds"), "--out", str(tmp_path / "out"))
    assert empty.returncode == 2 and empty.stderr.strip().splitlines()[-1] == (
        f"mmjax: error: {tmp_path / 'out'}: no sample of {tmp_path / 'wds'} was kept; "
        f"0 records in 1 shard; dropped: no_caption 1, no_image 1 (delete {tmp_path / 'out'} before converting the "
        "source again)")
    info = mmjax("data", "info", str(tmp_path / "wds"))
    assert info.returncode == 2 and f"convert them with `mmjax data convert {tmp_path / 'wds'} --out DIR`" in info.stderr
    # --top_fraction is checked before the model (here: no workdir at all) would be loaded and every pair embedded
    bad = mmjax("data", "filter", str(tmp_path / "out"), "--model", str(tmp_path / "none"), "--out",
                str(tmp_path / "kept"), "--top_fraction", "1.5")
    assert bad.returncode == 2 and bad.stderr.strip() == "mmjax: error: --top_fraction=1.5 must be in (0, 1]"


def test_synthetic_shards_script_writes_img2dataset_tars_and_a_retrieval_benchmark(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "synthetic_shards.py")
    (tmp_path / "shards" / "train").mkdir(parents=True)
    (tmp_path / "shards" / "train" / "00007.tar").write_bytes(b"")  # an earlier run's: replaced, not mixed in
    subprocess.run([sys.executable, script, "--out", str(tmp_path / "shards"), "--count", "10", "--shards", "2",
                    "--bench-count", "6", "--image-size", "16"], check=True, capture_output=True)
    assert sorted(os.listdir(tmp_path / "shards" / "train")) == ["00000.tar", "00001.tar"]
    index = convert(str(tmp_path / "shards" / "train"), str(tmp_path / "out"), progress=False)
    assert index["num_records"] == 10 and len(index["shards"]) == 2 and index["dropped"] == {}
    source = synthetic.SyntheticSource("train", seed=0, num_examples=10)
    records = read_records(tmp_path / "out")
    assert [r["captions"] for r in records] == [[source[i]["caption"]] for i in range(10)]
    assert all(Image.open(io.BytesIO(r["image"])).format == "JPEG" and r["meta"]["width"] == 16 for r in records)
    bench = wds_index(str(tmp_path / "shards" / "bench"))
    assert wds_task(str(tmp_path / "shards" / "bench")) == RETRIEVAL and len(bench) == 6
    # a bad size is refused before anything is touched: it used to delete the tars above, then fail
    for flag in ("--image-size", "--bench-count"):
        refused = subprocess.run([sys.executable, script, "--out", str(tmp_path / "shards"), flag, "0"],
                                 capture_output=True, text=True)
        assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
            f"synthetic_shards.py: error: {flag} must be a positive integer, got 0")
    assert sorted(os.listdir(tmp_path / "shards" / "train")) == ["00000.tar", "00001.tar"]
    (tmp_path / "a_file").write_text("")  # a file as --out was a NotADirectoryError traceback
    refused = subprocess.run([sys.executable, script, "--out", str(tmp_path / "a_file"), "--count", "2"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        f"synthetic_shards.py: error: cannot write into --out {tmp_path / 'a_file'}: Not a directory: "
        f"{tmp_path / 'a_file' / 'train'}")


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_image_folder_with_captions_file(tmp_path, kind):
    (tmp_path / "images").mkdir()
    rows = []
    for n in range(7):
        (tmp_path / "images" / f"{n}.png").write_bytes(image_bytes(n))
        rows.append({"image": f"images/{n}.png", "caption": f"picture {n}", "source": f"s{n}"})
    rows.append({"image": "images/absent.png", "caption": "gone", "source": "x"})
    path = tmp_path / f"captions.{kind}"
    if kind == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, ["image", "caption", "source"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    index = convert(str(path), str(tmp_path / "out"), records_per_shard=3, progress=False)
    assert len(index["shards"]) == 3 and index["dropped"] == {"missing_file": 1}
    records = read_records(tmp_path / "out")
    assert [(r["key"], r["captions"], r["image"], r["meta"]) for r in records] == \
        [(f"images/{n}.png", [f"picture {n}"], image_bytes(n), {"source": f"s{n}"}) for n in range(7)]


def test_restart_after_interruption_neither_loses_nor_duplicates(tmp_path):
    expected = wds_inputs(tmp_path / "wds", num_shards=5, per_shard=4)
    source, out = str(tmp_path / "wds"), str(tmp_path / "out")
    done = []
    partial = convert(source, out, progress=False, max_shards=2, on_shard=done.append)
    assert partial["num_records"] is None and partial["shards_done"] == 2 and len(done) == 2
    assert not os.path.exists(os.path.join(out, "index.json"))
    # What a killed worker leaves: a half-written temporary file, and a finished file with no marker.
    (tmp_path / "out" / f"{shards.shard_name(2)}.tmp-12345").write_bytes(b"partial")
    os.replace(os.path.join(out, shards.shard_name(1)), os.path.join(out, shards.shard_name(3)))
    os.remove(os.path.join(out, shards.shard_name(1) + ".done"))
    finished = []
    index = convert(source, out, progress=False, num_workers=2, on_shard=finished.append)
    assert sorted(m["file"] for m in finished) == [shards.shard_name(i) for i in (1, 2, 3, 4)]  # 0 was kept
    assert index["num_records"] == 20
    assert read_records(out) == expected
    assert not [name for name in os.listdir(out) if ".tmp-" in name]
    # a tar is one shard whatever --records_per_shard says: it is no reason to refuse the resume
    assert convert(source, out, records_per_shard=7, progress=False)["num_records"] == 20


def test_tfds_coco_captions_layout(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pairs = [(COLOURS[0], ["a red one", "red"]), (COLOURS[1], ["green"]), (COLOURS[2], ["blue", "", "a blue"]),
             (COLOURS[3], [""])]

    write_fake_coco_captions(str(tmp_path / "tfds"), "train",
                             [(Image.new("RGB", (5, 3 + i), colour), texts) for i, (colour, texts) in enumerate(pairs)])
    index = convert("tfds:coco_captions", str(tmp_path / "out"), data_dir=str(tmp_path / "tfds"),
                    records_per_shard=2, progress=False)
    assert index["num_records"] == 3 and index["dropped"] == {"no_caption": 1}
    records = sorted(read_records(tmp_path / "out"), key=lambda r: r["key"])
    assert [(r["key"], r["captions"]) for r in records] == [
        ("coco_captions:100", ["a red one", "red"]), ("coco_captions:101", ["green"]),
        ("coco_captions:102", ["blue", "a blue"])]
    for i, record in enumerate(records):
        pixels = np.asarray(Image.open(io.BytesIO(record["image"])))
        np.testing.assert_array_equal(pixels, np.full((3 + i, 5, 3), pairs[i][0], np.uint8))
    every = convert("tfds:coco_captions", str(tmp_path / "all"), data_dir=str(tmp_path / "tfds"), split="all",
                    progress=False)
    assert every["num_records"] == 3
    # a split the prepared data set does not have is named as such (it was "not prepared … tfds build")
    with pytest.raises(ValueError, match=r"TFDS data set coco_captions under .*tfds has no split 'validation' "
                                         r"\(split 'validation\[:10%\]'\); its prepared splits: train$"):
        convert("tfds:coco_captions", str(tmp_path / "out2"), data_dir=str(tmp_path / "tfds"), split="validation[:10%]",
                progress=False)


def test_a_tfds_conversion_resumed_from_another_data_directory_is_refused(tmp_path, monkeypatch):
    """The TFDS fingerprint was empty: a conversion stopped after one shard and resumed with another
    `--data_dir` mixed two data sets' records in one output. The same directory spelt otherwise, and a plan
    an earlier mmjax wrote (its fingerprint the digest of no files), still resume."""
    pytest.importorskip("tensorflow_datasets")
    for name, word in (("a", "first"), ("b", "other")):
        write_fake_coco_captions(str(tmp_path / name), "train",
                                 [(Image.new("RGB", (4, 4), COLOURS[i]), [f"{word} {i}"]) for i in range(4)])
    out = str(tmp_path / "out")

    def run(data_dir, max_shards=None):
        return convert("tfds:coco_captions", out, data_dir=data_dir, records_per_shard=1, max_shards=max_shards,
                       progress=False)

    assert run(str(tmp_path / "a"), max_shards=1)["shards_done"] == 1
    with pytest.raises(ValueError, match="holds a conversion of tfds:coco_captions from another TFDS data "
                                         "directory or version; convert it into a new --out$"):
        run(str(tmp_path / "b"))
    monkeypatch.chdir(tmp_path)
    assert run("a", max_shards=1)["shards_done"] == 2
    plan_file = os.path.join(out, "plan.json")
    with open(plan_file) as f:
        plan = json.load(f)
    with open(plan_file, "w") as f:
        json.dump(plan | {"fingerprint": hashlib.sha256(b"[]").hexdigest()[:16]}, f)
    assert run(str(tmp_path / "a"))["num_records"] == 4
    assert sorted(r["captions"][0] for r in read_records(tmp_path / "out")) == [f"first {i}" for i in range(4)]


def _tar_of(tmp_path, samples, name="a.tar"):
    (tmp_path / "wds").mkdir(exist_ok=True)
    write_shard(tmp_path / "wds" / name, samples)
    return tmp_path / "wds" / name


def _samples(count):
    return [(f"k{n}", {"png": image_bytes(n), "txt": f"caption {n}".encode()}) for n in range(count)]


def test_a_source_directory_whose_name_holds_glob_characters(tmp_path):
    source = tmp_path / "photos [2024]*"
    source.mkdir()
    write_shard(source / "00000.tar", _samples(3))
    index = convert(str(source), str(tmp_path / "out"), progress=False)
    assert index["num_records"] == 3


def test_tfds_source_picks_the_newest_version_and_asks_for_a_config_when_several_are_prepared(tmp_path):
    root = tmp_path / "tfds [x]"
    for version in ("coco_captions/2014/1.9.0", "coco_captions/2014/1.10.0", "coco_captions/2017/1.10.0",
                    "cifar10/3.0.2", "cifar10/10.0.0"):
        (root / version).mkdir(parents=True)
        (root / version / "dataset_info.json").write_text("{}")
    assert prepared_dir("coco_captions/2014", str(root)) == str(root / "coco_captions/2014/1.10.0")
    assert prepared_dir("cifar10", str(root)) == str(root / "cifar10/10.0.0")
    assert prepared_dir("mnist", str(root)) is None
    with pytest.raises(ValueError, match=r"^TFDS data set coco_captions has several prepared configs under .* "
                                         r"\(2014, 2017\): name one, e.g. coco_captions/2017$"):
        prepared_dir("coco_captions", str(root))


@pytest.mark.parametrize("cut", ["at_a_header", "inside_a_header", "inside_padding", "end_of_archive_missing"])
def test_a_tar_cut_short_keeps_what_it_read_and_counts_the_damage(tmp_path, cut):
    """`tarfile` reads a tar cut at a member boundary as a complete one; the cut must still be counted, and every
    sample whose files were read in full kept. Offsets come from the intact tar's own member table."""
    path = _tar_of(tmp_path, _samples(5))
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    first_of_k3, last_of_k2, last = members[6], members[5], members[-1]
    end_of = lambda member: member.offset_data + member.size  # noqa: E731
    size = {"at_a_header": first_of_k3.offset, "inside_a_header": first_of_k3.offset + 100,
            "inside_padding": end_of(last_of_k2) + 10, "end_of_archive_missing": end_of(last) + 100}[cut]
    path.write_bytes(path.read_bytes()[:size])
    index = convert(str(path), str(tmp_path / "out"), progress=False)
    kept = 5 if cut == "end_of_archive_missing" else 3
    assert [r["key"] for r in read_records(tmp_path / "out")] == [f"k{n}" for n in range(kept)]
    assert index["dropped"] == {"truncated_tar": 1}


def test_hidden_members_and_files_without_an_extension_are_not_samples(tmp_path):
    """macOS tar writes `._NAME` resource members beside each file; webdataset passes them over, and so must we."""
    members = []
    for key, files in _samples(3):
        for extension, data in files.items():
            members.append((f"._{key}", {extension: b"\x00\x05\x16\x07 AppleDouble"}))
            members.append((key, {extension: data}))
    path = _tar_of(tmp_path, members)
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo("README")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"notes"))
    index = convert(str(path), str(tmp_path / "out"), progress=False)
    assert index["dropped"] == {} and [r["captions"] for r in read_records(tmp_path / "out")] == [
        [f"caption {n}"] for n in range(3)]


def test_captions_are_split_at_line_ends_only(tmp_path):
    text = "A red car\u2028parked by the sea\r\nPrice\x0c 20 EUR\rthird\n\n  \nfourth"
    path = _tar_of(tmp_path, [("k0", {"jpg": image_bytes(0, "JPEG"), "txt": text.encode()})])
    convert(str(path), str(tmp_path / "out"), progress=False)
    assert read_records(tmp_path / "out")[0]["captions"] == [
        "A red car\u2028parked by the sea", "Price\x0c 20 EUR", "third", "fourth"]


def test_convert_refuses_a_directory_holding_data_it_did_not_plan(tmp_path):
    """A `data filter` output (shards and index, no plan.json): its finished shards must not pass for the new
    conversion's."""
    convert(str(_tar_of(tmp_path, _samples(2), "first.tar")), str(tmp_path / "out"), progress=False)
    os.remove(tmp_path / "out" / "plan.json")
    with pytest.raises(ValueError, match=r"out already holds a data directory \(index.json, "
                                         r"shard-00000.array_record, shard-00000.array_record.done\); "
                                         r"`mmjax data convert` needs another --out, or an empty one$"):
        convert(str(_tar_of(tmp_path, _samples(3), "second.tar")), str(tmp_path / "out"), progress=False)


def test_convert_refuses_a_directory_holding_other_files(tmp_path):
    """A training workdir, or the source's own folder, got shards, an index and a plan mixed into its files."""
    source = _tar_of(tmp_path, _samples(2), "first.tar")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    for out, listed in [(tmp_path / "run", "metrics.jsonl"), (source.parent, "first.tar")]:
        before = sorted(os.listdir(out))
        with pytest.raises(ValueError, match=rf"^{re.escape(str(out))} is not empty \({listed}.*\); `mmjax data "
                                             rf"convert` needs a new or empty --out$"):
            convert(str(source), str(out), progress=False)
        assert sorted(os.listdir(out)) == before


def test_captions_file_with_a_byte_order_mark_and_a_caption_that_is_not_text(tmp_path):
    (tmp_path / "0.png").write_bytes(image_bytes(0))
    path = tmp_path / "captions.csv"
    path.write_text("image,caption\n0.png,a picture\n", encoding="utf-8-sig")  # as Excel's "CSV UTF-8" saves
    convert(str(path), str(tmp_path / "out"), progress=False)
    assert [r["captions"] for r in read_records(tmp_path / "out")] == [["a picture"]]
    path = tmp_path / "captions.jsonl"
    path.write_text('{"image": "0.png", "caption": "fine"}\n{"image": "0.png", "caption": 2024}\n')
    with pytest.raises(ValueError, match=r"captions.jsonl: line 2: a caption must be a string and captions a list of "
                                         r"strings, got 2024$"):
        convert(str(path), str(tmp_path / "out2"), progress=False)


def test_a_filter_that_keeps_nothing_writes_nothing(tmp_path):
    """`write_filtered` below every score: one line, and no data directory with no record (training rejects it)."""
    convert(str(_tar_of(tmp_path, _samples(3))), str(tmp_path / "data"), progress=False)
    scores = Scores([np.array([0.1]), None, np.array([0.3])], Counter(undecodable_image=1))  # one caption each
    with pytest.raises(ValueError, match=r"data scores ≥ 0.3500 \(the best scores 0.3000\); nothing was written to "
                                         r".*kept$"):
        write_filtered(str(tmp_path / "data"), str(tmp_path / "kept"), scores, 0.35)
    assert not (tmp_path / "kept").exists()
    index = write_filtered(str(tmp_path / "data"), str(tmp_path / "kept"), scores, 0.3)
    assert index["num_records"] == 1 and [r["key"] for r in read_records(tmp_path / "kept")] == ["k2"]
    # into a data directory (its own earlier output, or a conversion): refused, nothing overwritten
    for out in ("kept", "data"):
        with pytest.raises(ValueError, match=rf"{out} already holds a data directory \(index.json, .*\); "
                                             r"`mmjax data filter` needs another --out, or an empty one$"):
            write_filtered(str(tmp_path / "data"), str(tmp_path / out), scores, 0.1)
    assert [r["key"] for r in read_records(tmp_path / "kept")] == ["k2"]


def test_a_filter_fills_its_shards_with_kept_records_and_indexes_the_unreadable_ones(tmp_path):
    """Output shards were cut at source-record boundaries (7 shards, 3 empty, for 6 kept records); the index said
    "dropped: none" after a filter that had passed over unreadable records."""
    convert(str(_tar_of(tmp_path, _samples(7))), str(tmp_path / "data"), progress=False)
    kept_keys = ["k0", "k3", "k4", "k6"]
    scores = Scores([np.array([0.9 if f"k{n}" in kept_keys else 0.1]) for n in range(6)] + [np.array([0.5])],
                    Counter(undecodable_image=2))
    index = write_filtered(str(tmp_path / "data"), str(tmp_path / "kept"), scores, 0.5, records_per_shard=3)
    on_disk = json.loads((tmp_path / "kept" / "index.json").read_text())
    assert [shard["count"] for shard in on_disk["shards"]] == [3, 1] and on_disk == index
    assert on_disk["dropped"] == {"undecodable_image": 2} and on_disk["num_records"] == 4
    assert [r["key"] for r in read_records(tmp_path / "kept")] == kept_keys
    info = mmjax("data", "info", str(tmp_path / "kept"))
    assert info.stdout.strip() == f"{tmp_path / 'kept'}: 4 records in 2 shards; dropped: undecodable_image 2"


def test_a_filter_whose_out_cannot_be_a_directory_stops_before_loading_the_model(tmp_path):
    convert(str(_tar_of(tmp_path, _samples(2))), str(tmp_path / "data"), progress=False)
    (tmp_path / "afile").write_text("")
    done = mmjax("data", "filter", str(tmp_path / "data"), "--model", str(tmp_path / "no_model"), "--out",
                 str(tmp_path / "afile"), "--threshold", "0.2")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        f"mmjax: error: --out {tmp_path / 'afile'} cannot be made a directory: {tmp_path / 'afile'} is a file")


@pytest.mark.parametrize("n", [7, 25, 50, 100])
def test_top_fraction_keeps_the_ceiling_of_the_exact_share(n):
    scores = Scores([np.array([float(i)]) for i in range(n)], Counter())
    for percent in range(1, 101):
        fraction = percent / 100
        want = -(-percent * n // 100)  # ⌈percent · n / 100⌉ in integers
        kept = sum(s[0] >= selection_threshold(scores, None, fraction) for s in scores.scores)
        assert kept == want, (n, fraction)
        assert selection_threshold(scores, None, np.float64(fraction)) == selection_threshold(scores, None, fraction)


def test_a_top_fraction_of_nothing_scored_says_why_nothing_was():
    scores = Scores([None, None, None], Counter({"undecodable_image": 2, "truncated_record": 1}))
    with pytest.raises(ValueError, match=r"^no pair could be scored \(3 records; skipped: truncated_record 1, "
                                         r"undecodable_image 2\)$"):
        selection_threshold(scores, None, 0.5)


def test_captions_file_rows_that_do_not_fit_the_header_are_one_line(tmp_path):
    """An unquoted comma cut the caption at it (the rest went to metadata under "null"); a short row or an image
    that is not a path was a raw TypeError."""
    (tmp_path / "a.png").write_bytes(image_bytes(0))
    for name, text, message in [
        ("comma.csv", "image,caption\na.png,a red, square on a table\n",
         r"comma.csv: row 1 has more fields than the header \(\[' square on a table'\] left over\): quote a caption "
         r"that holds a comma$"),
        ("short.csv", "caption,image\nonly a caption\n", r"short.csv: row 1: 'image' must be a file path, got None$"),
        ("null.jsonl", '{"image": null, "caption": "x"}\n', r"null.jsonl: line 1: 'image' must be a file path, got None$"),
        ("spaced.csv", "image, caption\na.png, a cat\n",
         r"spaced.csv: row 1 needs an 'image' and a 'caption' \(or 'captions'\) field \(it has \[' caption', 'image'\]\)$"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            convert(str(tmp_path / name), str(tmp_path / f"out-{name}"), progress=False)
    # quoted, the comma is the caption's; empty cells past the header (a spreadsheet's export) are no fields
    (tmp_path / "quoted.csv").write_text('image,caption\na.png,"a red, square on a table",,\n')
    convert(str(tmp_path / "quoted.csv"), str(tmp_path / "out"), progress=False)
    assert [r["captions"] for r in read_records(tmp_path / "out")] == [["a red, square on a table"]]


def test_a_tar_whose_sample_files_are_not_grouped_is_one_line_for_convert_and_eval(tmp_path):
    """`tar cf` of a folder writes files in the folder's order: k0.png … k2.png, then k0.txt …. Read run by run,
    every sample lost its image or caption, and the conversion reported them as dropped."""
    path = tmp_path / "wds" / "test" / "0.tar"
    path.parent.mkdir(parents=True)
    files = [(key, extension, data) for key, sample in _samples(3) for extension, data in sample.items()]
    write_shard(path, [(key, {extension: data}) for key, extension, data in sorted(files, key=lambda f: f[1])])
    message = r"0.tar: the files of sample k0 are not next to each other in the tar; write tars with their files " \
              r"sorted by name \(tar --sort=name\), as webdataset reads them$"
    with pytest.raises(ValueError, match=message):
        convert(str(path), str(tmp_path / "out"), progress=False)
    with pytest.raises(ValueError, match=message):
        wds_index(str(tmp_path / "wds"))


def test_a_tar_that_cannot_be_opened_stops_the_conversion_and_is_not_marked_done(tmp_path):
    """It was counted as one `truncated_tar` and its shard marked done with no record, so a run after the fix
    (the file restored, its permissions corrected) never read it."""
    source = tmp_path / "wds"
    source.mkdir()
    write_shard(source / "00000.tar", _samples(2))
    os.symlink(tmp_path / "elsewhere.tar", source / "00001.tar")  # dangling, as a tar on an unmounted disk
    with pytest.raises(FileNotFoundError, match="elsewhere.tar|00001.tar"):
        convert(str(source), str(tmp_path / "out"), progress=False)
    assert not os.path.exists(tmp_path / "out" / (shards.shard_name(1) + ".done"))
    write_shard(tmp_path / "elsewhere.tar", _samples(3))
    assert convert(str(source), str(tmp_path / "out"), progress=False)["num_records"] == 5


def test_a_source_that_changed_is_not_resumed_or_taken_as_converted(tmp_path):
    """A corrected captions file used to be answered with the old conversion's summary; a row added before a
    resume duplicated one sample and lost another."""
    for n in range(3):
        (tmp_path / f"{n}.png").write_bytes(image_bytes(n))
    path = tmp_path / "captions.csv"
    path.write_text("image,caption\n0.png,zero\n1.png,one\n")
    convert(str(path), str(tmp_path / "out"), records_per_shard=1, progress=False, max_shards=1)
    path.write_text("image,caption\n2.png,two\n0.png,zero\n")  # same size of plan: 2 shards
    os.utime(path, ns=(1, 1))
    with pytest.raises(ValueError, match=r"out holds a conversion of .*captions.csv as it was before its files "
                                         r"changed \(sizes or modification times\); convert it into a new --out$"):
        convert(str(path), str(tmp_path / "out"), records_per_shard=1, progress=False)


def test_a_conversion_resumes_under_another_spelling_of_its_source_and_from_an_earlier_plan(tmp_path, monkeypatch):
    wds_inputs(tmp_path / "wds", num_shards=3, per_shard=2)
    monkeypatch.chdir(tmp_path)
    convert("wds", "out", progress=False, max_shards=1)
    convert(str(tmp_path / "wds"), "out", progress=False, max_shards=1)  # the same source, spelt absolute
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    del plan["fingerprint"]  # as an earlier mmjax wrote it
    (tmp_path / "out" / "plan.json").write_text(json.dumps(plan))
    assert convert("./wds", "out", progress=False)["num_records"] == 6


def test_utf16_and_byte_order_marked_captions_are_read_as_text(tmp_path):
    """A .txt saved by Windows PowerShell 5 (UTF-16 with its byte-order mark) became mojibake and NUL captions."""
    path = _tar_of(tmp_path, [("k0", {"png": image_bytes(0), "txt": "a dog\r\nein Hund".encode("utf-16")}),
                              ("k1", {"png": image_bytes(1), "txt": "\ufeffa cat".encode("utf-8")})])
    convert(str(path), str(tmp_path / "out"), progress=False)
    assert [r["captions"] for r in read_records(tmp_path / "out")] == [["a dog", "ein Hund"], ["a cat"]]


def test_data_info_on_an_unfinished_conversion_says_to_finish_it(tmp_path):
    convert(str(_tar_of(tmp_path, _samples(2))), str(tmp_path / "out"), progress=False, max_shards=0)
    info = mmjax("data", "info", str(tmp_path / "out"))
    assert info.returncode == 2 and "its conversion has not finished: run the same `mmjax data convert` again" \
        in info.stderr


def test_a_conversion_worker_does_not_import_grain_or_jax():
    """Each `--num_workers` process imports the converter: with grain and JAX (1.1 s, or far longer on a busy
    machine) a Ctrl-C during start-up printed a traceback per worker."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, mmjax.data.convert; "
                             "print(sorted(m for m in ('grain', 'jax', 'tensorflow_datasets') if m in sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_a_tar_cut_inside_a_samples_caption_counts_it_once(tmp_path):
    """The cut took k2's caption: it was dropped twice, as `no_caption` and as `truncated_tar`."""
    path = _tar_of(tmp_path, _samples(4))
    with tarfile.open(path) as tar:
        caption_of_k2 = tar.getmembers()[5]
    path.write_bytes(path.read_bytes()[:caption_of_k2.offset_data + 3])
    index = convert(str(path), str(tmp_path / "out"), progress=False)
    assert [r["key"] for r in read_records(tmp_path / "out")] == ["k0", "k1"]
    assert index["dropped"] == {"truncated_tar": 1}


def test_a_gzip_compressed_tar_is_read_whole(tmp_path):
    """The end-of-archive check read the compressed file at the decompressed offset: a complete tar.gz named .tar
    was counted as `truncated_tar`."""
    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "a.tar", "w:gz") as tar:
        for key, files in _samples(3):
            for extension, data in files.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    index = convert(str(tmp_path / "wds"), str(tmp_path / "out"), progress=False)
    assert index["num_records"] == 3 and index["dropped"] == {}


@pytest.mark.parametrize("text, message", [
    ('image,caption\n0.png,"an unclosed quote\n1.png,a cat\n2.png,a dog\n',
     r"captions.csv: line 2: a quoted field is never closed \(a quote inside a quoted field is written twice: \"\"\)$"),
    ('image,caption\n0.png,a dog\n\n1.png,"a cat\n2.png,a dog\n', r"captions.csv: line 4: a quoted field is never closed"),
    # a doubled quote inside the open field does not close it; a lone CR ends a line (old Mac Excel files)
    ('image,caption\na.png,"say ""hi""\nb.png,a dog\nc.png,a cat\n', r"captions.csv: line 2: a quoted field is never"),
    ('image,caption\r0.png,a dog\r1.png,"open\r2.png,x\r', r"captions.csv: line 3: a quoted field is never closed"),
    ('image,caption\n0.png,"' + "x" * 200_000 + '"\n',
     r"captions.csv: field larger than field limit \(131072\) \(reading stopped at line 2\)$"),
])
def test_a_captions_file_the_csv_reader_refuses_is_one_line(tmp_path, text, message):
    """An unclosed quote read the rest of the file as one caption: 4 rows became 1 record, with nothing dropped."""
    (tmp_path / "captions.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        convert(str(tmp_path / "captions.csv"), str(tmp_path / "out"), progress=False)


@pytest.mark.parametrize("text", ["image,caption\n", "image,caption\n,\n,,\n"])  # rows of empty cells are none
def test_a_captions_file_without_rows_converts_to_nothing(tmp_path, text):
    """It raised IndexError (the plan looked at its first shard, and there is none)."""
    (tmp_path / "captions.csv").write_text(text)
    index = convert(str(tmp_path / "captions.csv"), str(tmp_path / "out"), progress=False)
    assert index["num_records"] == 0 and index["shards"] == []


def test_a_caption_that_goes_on_after_its_closing_quote_is_read_as_csv_reads_it(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes(0))
    (tmp_path / "captions.csv").write_text('image,caption\na.png,"The Scream" by Munch\na.png,"say ""hi"" now"\n'
                                           'a.png,a 12" record\n')  # a quote inside an unquoted field is text
    convert(str(tmp_path / "captions.csv"), str(tmp_path / "out"), progress=False)
    assert [r["captions"] for r in read_records(tmp_path / "out")] == [["The Scream by Munch"], ['say "hi" now'],
                                                                       ['a 12" record']]


def test_captions_files_spreadsheet_rows_line_numbers_encoding_and_keys(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "1.png").write_bytes(image_bytes(ord(folder)))
    # rows of empty cells, which spreadsheets leave at the end, are no rows (they stopped the conversion)
    (tmp_path / "sheet.csv").write_text("image,caption\na/1.png,an a\nb/1.png,a b\n,\n,,\n")
    index = convert(str(tmp_path / "sheet.csv"), str(tmp_path / "out"), progress=False)
    # the key is the path as written: both files were `1.png`
    assert [r["key"] for r in read_records(tmp_path / "out")] == ["a/1.png", "b/1.png"] and index["dropped"] == {}
    # a JSONL error names the file's line, blank lines counted (it said "row 3" for line 4)
    (tmp_path / "c.jsonl").write_text('{"image": "a/1.png", "caption": "x"}\n\n{"image": "b/1.png", "caption": "y"}\n'
                                      '{"image": 5, "caption": "z"}\n')
    with pytest.raises(ValueError, match=r"c.jsonl: line 4: 'image' must be a file path, got 5$"):
        convert(str(tmp_path / "c.jsonl"), str(tmp_path / "out2"), progress=False)
    (tmp_path / "excel.csv").write_bytes("image,caption\na/1.png,café\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"excel.csv is not UTF-8 text \(.*\); save it as UTF-8 \(Excel: CSV UTF-8\)$"):
        convert(str(tmp_path / "excel.csv"), str(tmp_path / "out3"), progress=False)


def test_conversion_leaves_files_that_are_not_its_temporaries(tmp_path):
    """Every name holding `.tmp-` was deleted from --out: a user's `draft.tmp-v2.docx` too."""
    source = str(_tar_of(tmp_path, _samples(2)))
    convert(source, str(tmp_path / "out"), progress=False, max_shards=0)
    (tmp_path / "out" / "draft.tmp-v2.docx").write_text("mine")
    (tmp_path / "out" / f"{shards.shard_name(0)}.tmp-999").write_text("a killed writer's")
    convert(source, str(tmp_path / "out"), progress=False)
    assert sorted(n for n in os.listdir(tmp_path / "out") if ".tmp-" in n) == ["draft.tmp-v2.docx"]


def test_a_resume_into_another_plan_says_what_differs(tmp_path):
    """A plan.json of something else gave an AttributeError traceback; a source that gained a tar was refused as
    "other arguments" although the arguments were the same."""
    wds_inputs(tmp_path / "wds", num_shards=2, per_shard=2)
    convert(str(tmp_path / "wds"), str(tmp_path / "out"), progress=False, max_shards=1)
    write_shard(tmp_path / "wds" / "zz.tar", _samples(1))
    with pytest.raises(ValueError, match=r"out holds a conversion of .*wds in 2 shards, and it now makes 3 \(its files "
                                         r"changed\); convert it into a new --out$"):
        convert(str(tmp_path / "wds"), str(tmp_path / "out"), progress=False)
    for foreign in ("[1, 2]", ""):
        (tmp_path / "other").mkdir(exist_ok=True)
        (tmp_path / "other" / "plan.json").write_text(foreign)
        with pytest.raises(ValueError, match=r"other/plan.json is not an mmjax conversion plan; use another --out$"):
            convert(str(tmp_path / "wds"), str(tmp_path / "other"), progress=False)


def test_a_failing_tar_stops_the_other_workers_at_once(tmp_path, monkeypatch):
    """With --num_workers 2 an unsorted first tar was reported only after every other tar had been converted. The
    pool is made of threads here, each good tar taking 50 ms, so the count does not hang on the machine's load."""
    import concurrent.futures
    import time

    from mmjax.data import convert as converting

    (tmp_path / "wds").mkdir()
    write_shard(tmp_path / "wds" / "000.tar", [("k0", {"png": image_bytes(0)}), ("k1", {"png": image_bytes(1)}),
                                               ("k0", {"txt": b"late"})])  # k0's files are not together
    for n in range(1, 61):
        write_shard(tmp_path / "wds" / f"{n:03d}.tar", _samples(1))
    convert_unit = converting._convert_unit

    def slow_convert_unit(directory, name, unit):
        if not unit.path.endswith("000.tar"):
            time.sleep(0.05)
        return convert_unit(directory, name, unit)

    monkeypatch.setattr(converting, "_convert_unit", slow_convert_unit)
    monkeypatch.setattr(converting, "ProcessPoolExecutor",
                        lambda workers, mp_context: concurrent.futures.ThreadPoolExecutor(workers))
    with pytest.raises(ValueError, match=r"000.tar"):
        convert(str(tmp_path / "wds"), str(tmp_path / "out"), num_workers=2, progress=False)
    # the shards already handed to a worker finish; the others are not started (all 60 were)
    assert len([n for n in os.listdir(tmp_path / "out") if n.endswith(".done")]) <= 4


@pytest.mark.parametrize("text, reason", [
    ("[]", "AttributeError: 'list' object has no attribute 'get'"),
    ('{"format": "mmjax-records-1"}', "KeyError: 'shards'"),
    ('{"format": "mmjax-records-1", "shards": [', "Expecting value: line 1 column 42 (char 41)"),
])
def test_a_damaged_index_is_one_line_naming_it(tmp_path, text, reason):
    """A list gave an AttributeError traceback; a missing key the bare message `shards`; cut JSON named no file."""
    (tmp_path / "index.json").write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'index.json'} is not a readable mmjax index "
                                                   f"({reason})")):
        shards.read_index(str(tmp_path))


def test_shards_without_an_index_say_what_they_may_be(tmp_path):
    """An interrupted `data filter` left shards and no index; the message advised `mmjax data convert --out` there,
    which refuses a directory holding shards."""
    (tmp_path / "shard-00000.array_record").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"it holds shards but no index: an `mmjax data filter` stopped before "
                                                r"it finished \(delete the directory and filter again\), or a damaged"):
        shards.read_index(str(tmp_path))


def test_a_flag_of_another_data_subcommand_is_refused(tmp_path):
    """`mmjax data convert --threshold 0.9 --model run` converted everything without a word."""
    convert(str(_tar_of(tmp_path, _samples(2))), str(tmp_path / "out"), progress=False)
    for args, message in [
        (["convert", str(tmp_path / "wds"), "--out", str(tmp_path / "out2"), "--threshold", "0.9"],
         "mmjax data convert does not read --threshold (it reads --data_dir, --num_workers, --out, --records_per_shard, "
         "--split)"),
        (["info", str(tmp_path / "out"), "--top_fraction", "0.1"],
         "mmjax data info does not read --top_fraction (it takes no flags)"),
    ]:
        done = mmjax("data", *args)
        assert done.returncode == 2 and done.stderr.strip() == f"mmjax: error: {message}", (args, done.stderr)
    assert not (tmp_path / "out2").exists()


def test_a_shard_whose_source_fails_part_way_leaves_no_temporary_file(tmp_path):
    """The half-written `.tmp-PID` shard stayed in --out, and a rerun refused for the changed source kept it."""
    from mmjax.data.records import Sample

    def samples():
        yield Sample("000", ("a caption",), b"\xff\xd8 not really a jpeg")
        raise ValueError("tars/a.tar: the files of sample 001 are not next to each other in the tar")

    with pytest.raises(ValueError, match="are not next to each other"):
        shards.write_shard(str(tmp_path), shards.shard_name(0), samples(), "tars/a.tar")
    assert os.listdir(tmp_path) == []
