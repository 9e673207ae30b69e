"""`mmjax data convert`: webdataset tars, an image folder with a captions file, or TFDS → an mmjax data directory.

Sources (`SOURCE`):
  - webdataset / img2dataset shards: a directory of `*.tar` (searched recursively) or one `.tar`. A sample is
    the files sharing a key (the name up to its first dot): an image (`jpg`, `jpeg`, `png`, `webp`), a `txt`
    (each non-empty line is one caption) and an optional `json` (kept as metadata). One tar → one output shard.
  - an image folder: a `.csv` (columns `image` and `caption`; other columns become metadata) or `.jsonl`
    (`{"image": ..., "caption": str}` or `"captions": [str, ...]`) whose image paths are relative to the
    file's directory. Every `records_per_shard` rows → one output shard.
  - `tfds:NAME` (e.g. `tfds:coco_captions`): a TFDS data set prepared as array_record; its images are
    decoded by TFDS, so they are stored re-encoded as PNG (lossless). Every `records_per_shard` examples → one shard.

Images are copied byte for byte (except TFDS) and not decoded, so conversion runs at disk speed; samples
with no image or no caption are dropped and counted by reason. Shards are written by `num_workers` processes;
`DIR/plan.json` fixes how the source is cut into shards, so a restarted conversion (same arguments) skips the
shards already done (see `shards`) and neither loses nor duplicates a sample; a source whose files changed in
between (a corrected captions file) is refused rather than mixed with the shards of its earlier version.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import multiprocessing
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed

import tqdm
from PIL import Image

from mmjax.data import shards
from mmjax.data.records import Sample, Skip
from mmjax.data.tar_samples import TruncatedTarError, caption_lines, decode_text, read_tar_samples
from mmjax.data.tfds_source import TFDS_PREFIX, TfdsSamples, prepared_dir, resolve_data_dir
from mmjax.files import write_text_atomically

IMAGE_EXTENSIONS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}


def _wds_sample(key: str, files: dict[str, bytes], where: str) -> Sample | Skip:
    extension = next((ext for ext in IMAGE_EXTENSIONS if ext in files), None)
    if extension is None:
        return Skip(f"{where}:{key}", "no_image")
    captions = caption_lines(decode_text(files.get("txt", b"")))
    if not captions:
        return Skip(f"{where}:{key}", "no_caption")
    try:
        meta = json.loads(files["json"]) if "json" in files else {}
    except ValueError:
        meta = {}
    return Sample(key, captions, files[extension], IMAGE_EXTENSIONS[extension],
                  meta if isinstance(meta, dict) else {"json": meta})


@dataclasses.dataclass(frozen=True)
class TarUnit:
    """One webdataset tar → its samples (`tar_samples`). A damaged tar keeps the samples read before the damage
    and adds one `truncated_tar` skip."""

    path: str

    def samples(self) -> Iterator[Sample | Skip]:
        last = None  # held back: a sample the cut left without its image or caption counts once, as truncated_tar
        try:
            for key, files in read_tar_samples(self.path):
                if last is not None:
                    yield last
                last = _wds_sample(key, files, self.path)
        except TruncatedTarError as error:
            record_id = self.path if error.key is None else f"{self.path}:{error.key}"
            if last is not None and not (isinstance(last, Skip) and last.record_id == record_id):
                yield last
            yield Skip(record_id, "truncated_tar")
        else:
            if last is not None:
                yield last


@dataclasses.dataclass(frozen=True)
class FileListUnit:
    """Rows of a captions file: `(image path as written, absolute image path, captions, metadata)`. A sample's
    key is its path as written (relative to the captions file), so `a/1.jpg` and `b/1.jpg` stay apart."""

    rows: tuple[tuple[str, str, tuple[str, ...], dict], ...]

    def samples(self) -> Iterator[Sample | Skip]:
        for key, path, captions, meta in self.rows:
            extension = os.path.splitext(path)[1].lower().lstrip(".")
            if not os.path.isfile(path):
                yield Skip(path, "missing_file")
            elif not captions:
                yield Skip(path, "no_caption")
            else:
                with open(path, "rb") as f:
                    yield Sample(key, captions, f.read(), IMAGE_EXTENSIONS.get(extension, extension), meta)


@dataclasses.dataclass(frozen=True)
class TfdsUnit:
    """Examples `[start, end)` of a TFDS data set, images re-encoded as PNG."""

    name: str
    split: str
    data_dir: str | None
    start: int
    end: int

    def samples(self) -> Iterator[Sample | Skip]:
        source = TfdsSamples(self.name, self.split, self.data_dir)
        for index in range(self.start, self.end):
            sample = source[index]
            captions = tuple(c.strip() for c in sample.captions if c.strip())
            if not captions:
                yield Skip(sample.key, "no_caption")
                continue
            pixels = sample.image[..., 0] if sample.image.shape[-1] == 1 else sample.image
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            yield Sample(sample.key, captions, buffer.getvalue(), "png", {"tfds_index": index})


def _json_row(line: str, path: str, number: int) -> dict:
    try:
        return json.loads(line)
    except ValueError as error:
        raise ValueError(f"{path}: line {number} is not JSON ({error})") from None


def _refuse_an_unclosed_quote(text: str, path: str) -> None:
    """A one-line ValueError naming the line where a CSV field's quote opens and is never closed: csv reads the
    rest of the file into that one caption (four rows became one record, with nothing dropped). Follows csv's own
    reading of the excel dialect: a quote opens a quoted field only at a field's start, a doubled quote inside one
    is a quote, and text after its closing quote joins the field (`"The Scream" by Munch`)."""
    quoted, opened, position = False, 0, text.find('"')
    while position != -1:
        if quoted and text.startswith('"', position + 1):  # a doubled quote inside the quoted field
            position += 1
        elif quoted:
            quoted = False
        elif position == 0 or text[position - 1] in ",\r\n":
            quoted, opened = True, position
        position = text.find('"', position + 1)
    if quoted:
        line = len(re.findall(r"\r\n|\r|\n", text[:opened])) + 1  # line ends as csv counts them
        raise ValueError(f"{path}: line {line}: a quoted field is never closed (a quote "
                         f"inside a quoted field is written twice: \"\")")


def _entries(path: str) -> Iterator[tuple[str, object]]:
    """`(where, entry)` for each row of a captions file: "row N" of a CSV (a quoted caption may span lines; blank
    rows and rows of empty cells, which spreadsheets leave at the end, are none), "line N" of a JSONL file."""
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8" writes one) is not part of the first column's name
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            if not path.endswith(".csv"):
                yield from ((f"line {number}", _json_row(line, path, number))
                            for number, line in enumerate(f, start=1) if line.strip())
                return
            _refuse_an_unclosed_quote(f.read(), path)
            f.seek(0)  # read again, streamed (the byte-order mark is dropped again)
            reader = csv.DictReader(f)
            try:
                for number, entry in enumerate(reader, start=1):
                    if any(value for key, value in entry.items() if key is not None) or any(entry.get(None) or []):
                        yield f"row {number}", entry
            except csv.Error as error:
                raise ValueError(f"{path}: {error} (reading stopped at line {reader.reader.line_num})") from None
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text ({error}); save it as UTF-8 (Excel: CSV UTF-8)") from None


def _read_rows(path: str) -> list[tuple[str, str, tuple[str, ...], dict]]:
    """A captions file → `(image path as written, absolute image path, captions, metadata)` rows."""
    root = os.path.dirname(os.path.abspath(path))
    rows = []
    for where, entry in _entries(path):
        if not isinstance(entry, dict) or "image" not in entry or not ({"caption", "captions"} & set(entry)):
            fields = f" (it has {sorted(entry)})" if isinstance(entry, dict) else ""
            raise ValueError(f"{path}: {where} needs an 'image' and a 'caption' (or 'captions') field{fields}")
        extra = entry.pop(None, None) or []  # csv.DictReader's key for the fields past the header's
        if any(extra):  # empty trailing cells (`a.png,a cat,,` from a spreadsheet) are no fields
            raise ValueError(f"{path}: {where} has more fields than the header ({extra!r} left over): "
                             f"quote a caption that holds a comma")
        if not isinstance(entry["image"], str) or not entry["image"]:
            raise ValueError(f"{path}: {where}: 'image' must be a file path, got {entry['image']!r}")
        captions = entry.get("captions") or entry.get("caption") or ""
        captions = [captions] if isinstance(captions, str) else captions  # one caption, not its characters
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"{path}: {where}: a caption must be a string and captions a list of strings, "
                             f"got {captions!r}")
        captions = tuple(c.strip() for c in captions if c.strip())
        meta = {k: v for k, v in entry.items() if k not in ("image", "caption", "captions")}
        rows.append((entry["image"], os.path.join(root, entry["image"]), captions, meta))
    return rows


def plan_units(source: str, records_per_shard: int, split: str = "train",
               data_dir: str | None = None) -> list[TarUnit | FileListUnit | TfdsUnit]:
    """How `source` is cut into output shards (deterministic, so a restart gives the same plan)."""
    if source.startswith(TFDS_PREFIX):
        name = source[len(TFDS_PREFIX):]
        total = len(TfdsSamples(name, split, data_dir))
        return [TfdsUnit(name, split, data_dir, start, min(start + records_per_shard, total))
                for start in range(0, total, records_per_shard)]
    if os.path.isdir(source):
        tars = sorted(glob.glob(os.path.join(glob.escape(source), "**", "*.tar"), recursive=True))
        if not tars:
            raise FileNotFoundError(f"no *.tar shards under {source}")
        return [TarUnit(path) for path in tars]
    if not os.path.isfile(source):
        raise FileNotFoundError(f"data source {source} does not exist (a directory of .tar shards, a .tar, "
                                f"a .csv / .jsonl captions file, or tfds:NAME)")
    if source.endswith(".tar"):
        return [TarUnit(source)]
    if source.endswith((".csv", ".jsonl")):
        rows = _read_rows(source)
        return [FileListUnit(tuple(rows[start:start + records_per_shard]))
                for start in range(0, len(rows), records_per_shard)]
    raise ValueError(f"data source {source}: expected a directory of .tar shards, a .tar, a .csv, a .jsonl "
                     f"or tfds:NAME")


def _describe(unit) -> str:
    if isinstance(unit, TarUnit):
        return unit.path
    if isinstance(unit, TfdsUnit):
        return f"tfds:{unit.name}[{unit.split}][{unit.start}:{unit.end}]"
    return f"{unit.rows[0][1]} … ({len(unit.rows)} rows)"


def _convert_unit(directory: str, name: str, unit) -> dict:
    return shards.write_shard(directory, name, unit.samples(), _describe(unit))


def source_fingerprint(source: str, units: list) -> str:
    """A digest of the source files' paths, sizes and modification times (TFDS: the prepared version directory
    read, which names the data directory and the version, and its dataset_info.json), so that a conversion is
    not resumed, or taken as done, after its source changed or from another data directory."""
    if source.startswith(TFDS_PREFIX):
        prepared = prepared_dir(source[len(TFDS_PREFIX):], resolve_data_dir(units[0].data_dir)) if units else None
        files = [] if prepared is None else [(os.path.realpath(prepared), os.path.join(prepared, "dataset_info.json"))]
    elif os.path.isdir(source):  # paths relative to the source: `wds`, `./wds` and `/abs/wds` are one source
        files = [(os.path.relpath(unit.path, source), unit.path) for unit in units]
    else:
        files = [("", source)]
    return _digest([(name, stat.st_size, stat.st_mtime_ns)
                    for name, stat in ((name, os.stat(path)) for name, path in files)])


def _digest(stats: list) -> str:
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


# What mmjax before session 14 stored for every TFDS source: the digest of no files.
_EARLIER_TFDS_FINGERPRINT = _digest([])


def _check_plan(out: str, plan: dict) -> None:
    """Start a conversion into `out`, or resume the one with the same `plan`; refuse a directory that holds
    another conversion, one whose source files have changed since (`source_fingerprint`), or data that no
    conversion plan describes (a `data filter` output, say), whose finished shards would otherwise be taken for
    this conversion's."""
    path = os.path.join(out, shards.PLAN_FILE)
    if os.path.exists(path):
        try:
            with open(path) as f:
                before = json.load(f)
        except (ValueError, UnicodeDecodeError):
            before = None
        if not isinstance(before, dict) or "source" not in before:
            raise ValueError(f"{path} is not an mmjax conversion plan; use another --out")
        arguments = {key: value for key, value in plan.items() if key not in ("fingerprint", "num_shards")}
        if {key: before.get(key) for key in arguments} != arguments:
            shown = {key: value for key, value in before.items() if key not in ("fingerprint", "num_shards")}
            raise ValueError(f"{out} holds a conversion with other arguments ({shown}); use another --out "
                             f"or the same arguments to resume")
        if before.get("num_shards") != plan["num_shards"]:
            raise ValueError(f"{out} holds a conversion of {plan['source']} in {before.get('num_shards')} shards, "
                             f"and it now makes {plan['num_shards']} (its files changed); convert it into a new --out")
        tfds = plan["source"].startswith(TFDS_PREFIX)
        if "fingerprint" not in before or (tfds and before["fingerprint"] == _EARLIER_TFDS_FINGERPRINT):
            # a plan of an earlier mmjax: the source is taken as it is now
            write_text_atomically(path, json.dumps(before | {"fingerprint": plan["fingerprint"]}, indent=1))
        elif before["fingerprint"] != plan["fingerprint"]:
            changed = ("from another TFDS data directory or version" if tfds else
                       "as it was before its files changed (sizes or modification times)")
            raise ValueError(f"{out} holds a conversion of {plan['source']} {changed}; convert it into a new --out")
    else:
        shards.refuse_nonempty_out(out, "mmjax data convert")
        write_text_atomically(path, json.dumps(plan, indent=1))


def convert(source: str, out: str, *, records_per_shard: int = 10_000, num_workers: int = 1, split: str = "train",
            data_dir: str | None = None, progress: bool = True, max_shards: int | None = None,
            on_shard: Callable[[dict], None] | None = None) -> dict:
    """Convert `source` into the data directory `out`; returns its index (`shards.write_index`).

    `max_shards` stops after that many of the shards still to do (then the result is
    `{"num_records": None, "shards_done", "num_shards"}` and no index is written: run again to finish);
    `on_shard` is called with each finished shard's marker.
    """
    units = plan_units(source, records_per_shard, split, data_dir)
    shards.make_directory(out)
    # only the arguments that shape this source's shards: a tar is one shard whatever --records_per_shard says
    shaping = {} if units and isinstance(units[0], TarUnit) else {"records_per_shard": records_per_shard}
    if source.startswith(TFDS_PREFIX):
        shaping["split"] = split
    _check_plan(out, {"source": os.path.abspath(source) if not source.startswith(TFDS_PREFIX) else source,
                      **shaping, "num_shards": len(units), "fingerprint": source_fingerprint(source, units)})
    shards.remove_temporaries(out)
    names = [shards.shard_name(i) for i in range(len(units))]
    todo = [i for i, name in enumerate(names) if shards.read_done(out, name) is None]
    if max_shards is not None:
        todo = todo[:max_shards]
    bar = tqdm.tqdm(total=len(units), initial=len(units) - len(todo), unit="shard", disable=not progress,
                    desc=f"convert → {out}")
    try:
        if num_workers <= 1:
            for i in todo:
                marker = _convert_unit(out, names[i], units[i])
                bar.update(1)
                if on_shard:
                    on_shard(marker)
        else:
            with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_convert_unit, out, names[i], units[i]) for i in todo]
                try:
                    for future in as_completed(futures):
                        marker = future.result()
                        bar.update(1)
                        if on_shard:
                            on_shard(marker)
                except BaseException:  # a bad source file: say so now, not after every other shard is written
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        bar.close()
    markers = [shards.read_done(out, name) for name in names]
    if any(marker is None for marker in markers):
        return {"num_records": None, "shards_done": sum(m is not None for m in markers), "num_shards": len(units)}
    return shards.write_index(out, markers)

