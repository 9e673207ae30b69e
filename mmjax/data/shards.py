"""An mmjax data directory: ArrayRecord shards of `records` plus one small index file.

    DIR/index.json                       {"format", "num_records", "dropped": {reason: n},
                                          "shards": [{"file", "count", "source", "dropped"}, ...]}
    DIR/shard-00000.array_record         records (`records.encode_record`), group size 1 (random access)
    DIR/shard-00000.array_record.done    JSON: the shard's count, dropped-by-reason and source

Restartable writing: a shard is written to a temporary name, renamed into place,
and only then gets its `.done` marker. A restarted conversion skips shards that
have a marker and rewrites the others from the start, so a shard is never
half-written under its final name and no sample is written twice. `index.json`
is written last, from the markers, when every shard is done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import Counter
from collections.abc import Iterable

from array_record.python.array_record_module import ArrayRecordWriter

from mmjax.data.records import Sample, Skip, encode_record
from mmjax.files import write_atomically, write_text_atomically

INDEX_FILE = "index.json"
PLAN_FILE = "plan.json"  # what `mmjax data convert` is writing into a directory (`convert._check_plan`)
FORMAT = "mmjax-records-1"
DONE_SUFFIX = ".done"


def data_files(directory: str) -> list[str]:
    """The names in `directory` that belong to a data directory, finished or not: shards, the index, a plan."""
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory)
                  if name.startswith("shard-") or name in (INDEX_FILE, PLAN_FILE))


def _listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", …" if len(names) > 3 else "")


def refuse_nonempty_out(directory: str, command: str) -> None:
    """A one-line ValueError when `directory` holds anything: a data directory (`command` would mix its shards
    with the ones there, or take them for its own), or other files (a training workdir, the source's own
    folder), which a data directory would be mixed into."""
    found = data_files(directory)
    if found:
        raise ValueError(f"{directory} already holds a data directory ({_listed(found)}); `{command}` needs another "
                         f"--out, or an empty one")
    others = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    if others:
        raise ValueError(f"{directory} is not empty ({_listed(others)}); `{command}` needs a new or empty --out")


def check_can_make(directory: str) -> None:
    """A one-line ValueError when `directory` could not be made (a file there or above it, no permission), without
    making it."""
    ancestor = os.path.abspath(directory)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"--out {directory} cannot be made a directory: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--out {directory} cannot be made a directory: {ancestor} is not writable")


def make_directory(directory: str) -> None:
    """`os.makedirs(directory)`, or a one-line ValueError saying why it cannot be made (a file there, no
    permission)."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {directory} cannot be made a directory: {error.strerror or error}") from None


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.array_record"


def read_done(directory: str, name: str) -> dict | None:
    """The `.done` marker of shard `name`, or None while the shard is unfinished."""
    path = os.path.join(directory, name + DONE_SUFFIX)
    if not os.path.exists(path) or not os.path.exists(os.path.join(directory, name)):
        return None
    with open(path) as f:
        return json.load(f)


def write_shard(directory: str, name: str, samples: Iterable[Sample | Skip], source: str) -> dict:
    """Write the `Sample`s of `samples` to `DIR/name`, count the `Skip`s by reason, then mark it done.

    Returns the marker: {"file", "count", "source", "dropped": {reason: n}}.
    """
    path = os.path.join(directory, name)
    count, dropped = 0, Counter()

    def write(temporary: str) -> None:
        nonlocal count
        writer = ArrayRecordWriter(temporary, "group_size:1")
        try:
            for sample in samples:
                if isinstance(sample, Skip):
                    dropped[sample.reason] += 1
                else:
                    writer.write(encode_record(sample))
                    count += 1
        finally:
            writer.close()

    # a source that fails part-way, a full disk (an error naming the shard) or Ctrl-C leaves no half-written shard
    write_atomically(path, write)
    marker = {"file": name, "count": count, "source": source, "dropped": dict(sorted(dropped.items()))}
    write_text_atomically(path + DONE_SUFFIX, json.dumps(marker, indent=1))
    return marker


TEMPORARY = re.compile(r"(shard-\d+\.array_record(\.done)?|index\.json|plan\.json)\.tmp-([\w.-]+-)?\d+")


def remove_temporaries(directory: str) -> None:
    """Delete what an interrupted writer left (`shard-….tmp-HOST-PID`, `index.json.tmp-HOST-PID`, …), and nothing
    else."""
    for name in os.listdir(directory):
        if TEMPORARY.fullmatch(name):
            os.remove(os.path.join(directory, name))


def write_index(directory: str, markers: list[dict], dropped_before: dict[str, int] | None = None) -> dict:
    """`DIR/index.json` from the shards' markers (in shard order) and the records dropped before any shard was
    written (`dropped_before`, by reason: a filter's unreadable source records); returns it."""
    dropped = Counter(dropped_before or {})
    for marker in markers:
        dropped.update(marker["dropped"])
    index = {"format": FORMAT, "num_records": sum(m["count"] for m in markers),
             "dropped": dict(sorted(dropped.items())), "shards": markers}
    write_text_atomically(os.path.join(directory, INDEX_FILE), json.dumps(index, indent=1))
    return index


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    path: str
    count: int


def read_index(directory: str) -> list[ShardInfo]:
    """The shards of a data directory, in order (missing files included: the reader skips them)."""
    path = os.path.join(directory, INDEX_FILE)
    if not os.path.isfile(path):
        tars = os.path.isdir(directory) and any(name.endswith(".tar") for name in os.listdir(directory))
        if os.path.isfile(os.path.join(directory, PLAN_FILE)):
            hint = "its conversion has not finished: run the same `mmjax data convert` again to finish it"
        elif any(name.startswith("shard-") for name in data_files(directory)):
            hint = ("it holds shards but no index: an `mmjax data filter` stopped before it finished (delete the "
                    "directory and filter again), or a damaged directory")
        elif os.path.isfile(directory):
            hint = f"it is a file: convert a captions file or tar with `mmjax data convert {directory} --out DIR`"
        elif directory.startswith("tfds:"):
            hint = (f"training reads a TFDS data set as data.name='tfds'; `mmjax data convert {directory} --out DIR` "
                    f"makes a data directory of it")
        elif tars:
            hint = f"it holds webdataset tars: convert them with `mmjax data convert {directory} --out DIR`"
        else:
            hint = f"make one with `mmjax data convert SOURCE --out {directory}`"
        raise FileNotFoundError(f"{path} not found: {directory} is not an mmjax data directory ({hint})")
    try:
        with open(path) as f:
            index = json.load(f)
        if index.get("format") != FORMAT:
            raise ValueError(f"format {index.get('format')!r}, expected {FORMAT!r}")
        return [ShardInfo(os.path.join(directory, shard["file"]), int(shard["count"])) for shard in index["shards"]]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
        reason = f"{type(error).__name__}: {error}" if isinstance(error, (KeyError, TypeError, AttributeError)) \
            else str(error)
        raise ValueError(f"{path} is not a readable mmjax index ({reason})") from None
