"""webdataset tar shards as samples: runs of consecutive members that share a key, the member's path up to the
first dot of its file name (`00000/000000123.jpg` and `00000/000000123.txt` are sample `00000/000000123`).
A key whose files are not next to each other (a tar made without `--sort=name`) is a one-line error
(`KeyOrder`): webdataset would read each run as a sample of its own, most of them without image or caption.

Members that are not sample files are passed over, as webdataset does: hidden ones (a file name starting with
a dot, such as the `._KEY.jpg` resource files macOS's tar adds) and ones without an extension. A tar cut short
is detected also where `tarfile` cannot see it: cut at (or inside) a member's header, `tarfile` stops as at a
normal end, so the end-of-archive block is checked for.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator


class TruncatedTarError(ValueError):
    """The tar ends before its end-of-archive block, or its bytes do not parse; `key` is the last sample read."""

    def __init__(self, path: str, key: str | None, reason: str):
        super().__init__(f"{path}: truncated or damaged tar at or after sample {key} ({reason})")
        self.path, self.key, self.reason = path, key, reason


class KeyOrder:
    """Checks that each key's files in the tar `path` come together: `start(key)` where a new run of files
    begins."""

    def __init__(self, path: str):
        self.path, self.seen = path, set()

    def start(self, key: str) -> None:
        if key in self.seen:
            raise ValueError(f"{self.path}: the files of sample {key} are not next to each other in the tar; write "
                             f"tars with their files sorted by name (tar --sort=name), as webdataset reads them")
        self.seen.add(key)


def decode_text(data: bytes, errors: str = "replace") -> str:
    """A `.txt` member's text: UTF-8 (a byte-order mark dropped), or UTF-16 when it starts with a UTF-16 byte-order
    mark (as Windows PowerShell writes). `errors` as `bytes.decode`'s: "replace" turns bytes that do not decode
    into U+FFFD, "strict" raises `UnicodeDecodeError`."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors=errors)
    return data.decode("utf-8-sig", errors=errors)


def caption_lines(text: str) -> tuple[str, ...]:
    """The captions of a sample's `.txt`: its non-empty lines, stripped. Split at line ends only; `str.splitlines`
    also splits at U+2028, form feeds and other separators that can sit inside one caption."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return tuple(line.strip() for line in lines if line.strip())


def split_key(member_name: str) -> tuple[str, str] | None:
    """`("dir/key", "ext")` (extension lower-cased), or None for a member that is not a sample file."""
    directory, base = os.path.split(member_name)
    key, _, extension = base.partition(".")
    if not key or not extension:
        return None
    return os.path.join(directory, key), extension.lower()


def ends_with_end_of_archive(tar: tarfile.TarFile) -> bool:
    """Whether `tar` holds a zero block where `tarfile` stopped reading headers (read through its file object: a
    compressed tar's offsets are in the decompressed stream)."""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


def read_tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """`(key, {extension: bytes})` for each sample of the tar `path`, in order; a file is in a sample only once
    read in full. A damaged tar yields the samples read before the damage (the last one possibly missing files),
    then raises `TruncatedTarError`. A tar that cannot be opened (missing, no permission) is an `OSError`, and
    one whose samples' files are not grouped by key a `ValueError` (`KeyOrder`)."""
    key, files, reason, order = None, {}, None, KeyOrder(path)
    with open(path, "rb") as file:
        try:
            with tarfile.open(fileobj=file, mode="r") as tar:
                for member in tar:
                    parts = split_key(member.name) if member.isfile() else None
                    if parts is None:
                        continue
                    if parts[0] != key and files:
                        yield key, files
                        files = {}
                    if parts[0] != key:
                        order.start(parts[0])
                    key = parts[0]
                    files[parts[1]] = tar.extractfile(member).read()
                if not ends_with_end_of_archive(tar):
                    reason = "no end-of-archive block"
        except (tarfile.TarError, OSError, EOFError) as error:
            reason = str(error) or type(error).__name__
    if files:
        yield key, files
    if reason is not None:
        raise TruncatedTarError(path, key, reason)
