"""The bytes of one image–caption record in an mmjax ArrayRecord shard, and the reasons a sample is skipped.

Layout of a record (no dependency beyond the standard library):

    b"MMJ1"                      4 bytes, magic and layout version
    header length H              4 bytes, unsigned little-endian
    header                       H bytes, UTF-8 JSON:
                                 {"key": str, "captions": [str, ...], "image_format": "jpeg" | "png" | …,
                                  "image_bytes": N, "meta": {...}}
    image                        N bytes, the encoded image exactly as it came from the source

The image is stored encoded (never re-encoded), so conversion is a byte copy and
the round trip is exact. A record whose length is not `8 + H + N`, whose magic is
wrong or whose header does not parse is a *truncated record*.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any, NamedTuple

import numpy as np

MAGIC = b"MMJ1"
_LENGTH = struct.Struct("<I")

# Why a sample was skipped. The order fixes the code of each reason: `skip_counts[i]` counts `SKIP_REASONS[i]`.
SKIP_REASONS = (
    "truncated_record",   # record bytes cut short, wrong magic, or a header that does not parse
    "missing_shard",      # the index names a shard that is not on disk
    "undecodable_image",  # the bytes are not an image (no known image signature) and PIL cannot open them
    "truncated_image",    # an image signature, but decoding fails (a cut-off or damaged JPEG/PNG/…)
    "empty_caption",      # no caption with a non-space character
    "long_caption",       # every non-empty caption is longer than the configured limit
    "oversized_image",    # the header declares more pixels than PIL's decompression-bomb limit (179 M by default)
)
REASON_CODE = {reason: code for code, reason in enumerate(SKIP_REASONS)}


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image–caption sample. `image` is the encoded file (bytes) or decoded uint8 `[H, W, C]` pixels (TFDS)."""

    key: str
    captions: tuple[str, ...]
    image: bytes | np.ndarray
    image_format: str = "jpeg"
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


class RawRecord(NamedTuple):
    """What an ArrayRecord source yields: the record's bytes and where it lives (`shard:position`)."""

    record_id: str
    data: bytes


class Skip(NamedTuple):
    """A sample that will not reach a batch, and why (one of `SKIP_REASONS`)."""

    record_id: str
    reason: str


class RecordError(ValueError):
    """A record that does not parse; always a `truncated_record`."""


def encode_record(sample: Sample) -> bytes:
    """`Sample` (with encoded image bytes) → record bytes (layout in the module docstring)."""
    if not isinstance(sample.image, bytes):
        raise TypeError(f"record {sample.key}: the image must be encoded bytes, got {type(sample.image).__name__}")
    header = json.dumps({"key": sample.key, "captions": list(sample.captions), "image_format": sample.image_format,
                         "image_bytes": len(sample.image), "meta": sample.meta},
                        ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return b"".join((MAGIC, _LENGTH.pack(len(header)), header, sample.image))


def decode_record(data: bytes) -> Sample:
    """Record bytes → `Sample`; `RecordError` when they are truncated or garbled."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise RecordError(f"not an mmjax record ({len(data)} bytes, starts {data[:4]!r})")
    (header_length,) = _LENGTH.unpack_from(data, 4)
    end = 8 + header_length
    if len(data) < end:
        raise RecordError(f"header of {header_length} bytes cut at {len(data) - 8}")
    try:
        header = json.loads(data[8:end].decode("utf-8"))
        image_bytes, captions = int(header["image_bytes"]), tuple(str(c) for c in header["captions"])
        key, image_format, meta = str(header["key"]), str(header["image_format"]), dict(header["meta"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise RecordError(f"header does not parse ({error})") from None
    if len(data) != end + image_bytes:
        raise RecordError(f"image of {image_bytes} bytes but {len(data) - end} present")
    return Sample(key, captions, data[end:], image_format, meta)
