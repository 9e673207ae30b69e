"""A grain random-access source over an mmjax data directory (`shards`): index → `RawRecord` or `Skip`.

Global index `i` runs over the shards listed in `index.json`, in order. A shard
whose file is missing keeps its place: its indices yield `Skip(…, "missing_shard")`,
so the data order and the skip counts do not depend on which files happen to be
present. A damaged shard file that ArrayRecord cannot read (empty, cut below its 64 KB
minimum, or corrupted) yields `Skip(…, "truncated_record")` for each of its indices; a shard
the system will not open (too many open files, no permission) stops the run with one line
naming it, since its records are not bad data. Shards are opened lazily with the counts from the index (no file is
opened up front, which matters with thousands of shards); each stays open once read, so the source raises the
process's open-file limit to fit them all (`open_files.allow_open_files`).

A batch's records (`_getitems`) are read one at a time on the reading thread when the shards lie on a local disk,
and in parallel threads, a shard each (grain's batched read), on network storage, where that hides the network's
latency (`reads`: "auto" decides by the filesystem, `filesystems.on_network_storage`). On a local disk the threads
cost several times the CPU of the reads: for 256 records of 32 px PNGs, measured in one process on a 2-core
machine, 12 ms of CPU instead of 6 over 4 shards, 38 ms instead of 4 when they are spread over 250 shards (a
global shuffle of many small shards, as `img2dataset` writes them).
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Sequence

import grain

from mmjax.data.filesystems import on_network_storage
from mmjax.data.open_files import allow_open_files
from mmjax.data.records import RawRecord, Skip
from mmjax.data.shards import read_index


READS = ("auto", "parallel", "single")  # how `_getitems` reads: by the filesystem, in threads, one at a time


class RecordSource:
    """`len()` records of `directory`; `[i]` → `RawRecord(record_id="shard-00003.array_record:17", data)` or
    `Skip(record_id, "missing_shard")`. `reads`: one of `READS` (see the module docstring)."""

    def __init__(self, directory: str, reads: str = "auto"):
        if reads not in READS:
            raise ValueError(f"reads={reads!r} is not one of {READS}")
        self.directory = directory
        infos = read_index(directory)  # first: reading index.json mounts an automounted directory
        self.parallel_reads = on_network_storage(directory) if reads == "auto" else reads == "parallel"
        if not sum(info.count for info in infos):
            raise ValueError(f"{directory}/index.json lists no records")
        self._names = [os.path.basename(info.path) for info in infos]
        self._paths = [info.path for info in infos]
        self._present = [os.path.exists(info.path) for info in infos]
        self._starts = [0, *itertools.accumulate(info.count for info in infos)]
        present = [f"{info.path}[0:{info.count}]" for info, ok in zip(infos, self._present) if ok and info.count]
        self.num_open_shards = len(present)  # the files a reader of every record holds open
        allow_open_files(self.num_open_shards, directory)
        # index in the source of present shards = global index - records of missing shards before it
        self._missing_before = [0, *itertools.accumulate(info.count * (not ok) for info, ok in
                                                         zip(infos, self._present))]
        self._records = grain.sources.ArrayRecordDataSource(present) if present else None

    @property
    def missing_shards(self) -> list[str]:
        return [name for name, ok in zip(self._names, self._present) if not ok]

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, index: int) -> tuple[int, str]:
        """(shard number, record id) of global index `index`."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records of {self.directory}")
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, f"{self._names[shard]}:{index - self._starts[shard]}"

    def __getitem__(self, index: int) -> RawRecord | Skip:
        shard, record_id = self._locate(index)
        if not self._present[shard]:
            return Skip(record_id, "missing_shard")
        try:
            data = self._records[int(index) - self._missing_before[shard]]
        except RuntimeError as error:  # what ArrayRecord raises for a file it cannot read
            if "open() failed" in str(error):  # the system refused the file (EMFILE, EACCES): not damage
                raise ValueError(f"cannot open shard {self._paths[shard]}: {error}") from None
            return Skip(record_id, "truncated_record")
        return RawRecord(record_id, data)

    def _getitems(self, indices: Sequence[int]) -> list[RawRecord | Skip]:
        """`[self[i] for i in indices]` (grain's batched-read protocol); with `parallel_reads`, one ArrayRecord read
        per shard, in threads. When a shard among them cannot be read, the records are read one by one, so only
        that shard's are skipped."""
        if not self.parallel_reads:
            return [self[index] for index in indices]
        located = [self._locate(index) for index in indices]
        keys = [int(index) - self._missing_before[shard]
                for index, (shard, _) in zip(indices, located) if self._present[shard]]
        try:
            records = iter(self._records.__getitems__(keys) if keys else ())
        except RuntimeError:
            return [self[index] for index in indices]
        return [RawRecord(record_id, next(records)) if self._present[shard] else Skip(record_id, "missing_shard")
                for shard, record_id in located]

    def __repr__(self) -> str:  # grain prints sources in its errors and stats
        return f"RecordSource({self.directory!r}, {len(self)} records, {len(self.missing_shards)} missing shards)"
