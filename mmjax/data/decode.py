"""The decode stage of the real-data pipeline: record → checked captions → decoded, cropped image.

Runs in grain worker processes, inside `batching.DecodeBatches`, which tokenises a batch's
captions in one call. Its random numbers are `UNIFORMS_PER_EXAMPLE` uniforms per element
(`element_random.element_uniforms`, a function of the element's position in the stream),
so a resumed run crops and samples captions exactly as the original would have. A bad
sample is never an exception: `decode_example` returns `records.Skip(record_id, reason)`,
which `DecodeBatches` leaves out of the batch and counts. Cheap checks come first (record,
captions), so a sample with a bad caption is never decoded.

Images leave as uint8; normalisation (`(x/255 − mean) / std`) is fused into the jitted
train step, which moves 4× fewer bytes to the device than float32 would.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmjax.data.records import RawRecord, RecordError, Sample, Skip, decode_record
from mmjax.data.transforms import resize_center_crop, to_rgb

# Uniforms an example uses: 10 crop tries × (area scale, log aspect ratio), crop left, crop top, caption.
CROP_TRIES = 10
UNIFORMS_PER_EXAMPLE = 2 * CROP_TRIES + 3
# Leading bytes of JPEG, PNG, GIF, WebP (RIFF), BMP and TIFF files, and the PIL format each names: bytes that start
# like an image but do not decode are a truncated (or damaged) image; anything else is not an image at all.
IMAGE_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF",
                    b"RIFF": "WEBP", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """`augment`: random-resized-crop with `crop_scale` (fraction of the area) and `crop_ratio` (w/h range),
    as torchvision's `RandomResizedCrop` (OpenCLIP trains with scale (0.9, 1.0)); otherwise resize + centre crop.
    `caption_sampling`: "random" (one of a sample's valid captions, uniformly) or "first".
    `max_caption_chars`: a caption longer than this is invalid (`long_caption`).
    `resize`: without augmentation, the image → uint8 `[S, S, 3]` (a pretrained checkpoint's
    `ImagePreprocess.resized`, for `mmjax data filter`); None: resize + centre crop to `image_size`."""

    image_size: int
    augment: bool = True
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    caption_sampling: str = "random"
    max_caption_chars: int = 1000
    resize: Callable[[Image.Image], np.ndarray] | None = None


def crop_box(width: int, height: int, uniforms: Sequence[float], scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision `RandomResizedCrop.get_params`: `(left, top, right, bottom)` of a random crop of a
    `width × height` image covering `scale` of its area with aspect ratio (w/h) in `ratio`; after
    `CROP_TRIES` failed tries, the largest centred crop whose ratio is clamped to `ratio`.
    `uniforms`: `2 * CROP_TRIES + 2` numbers in [0, 1) (tries, then left and top)."""
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(CROP_TRIES):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * uniforms[2 * attempt])
        aspect = math.exp(log_low + (log_high - log_low) * uniforms[2 * attempt + 1])
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(uniforms[2 * CROP_TRIES] * (width - w + 1))
            top = int(uniforms[2 * CROP_TRIES + 1] * (height - h + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def random_resized_crop(image: Image.Image, size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 `[size, size, 3]`: `box` of `image` resized (bicubic) to `size × size`."""
    return np.asarray(to_rgb(image).resize((size, size), Image.Resampling.BICUBIC, box=box), np.uint8)


def decode_image(sample: Sample, options: DecodeOptions, uniforms: Sequence[float]) -> np.ndarray | str:
    """uint8 `[S, S, 3]` (`uniforms` as `crop_box` takes them), or the skip reason: "truncated_image" when the bytes start with an image signature
    (`IMAGE_SIGNATURES`) but do not decode, "undecodable_image" when they do not, "oversized_image" when the header
    declares more pixels than PIL's decompression-bomb limit (`2 × PIL.Image.MAX_IMAGE_PIXELS`, 179 M by default)."""
    if isinstance(sample.image, np.ndarray):
        pixels = sample.image[..., 0] if sample.image.ndim == 3 and sample.image.shape[-1] == 1 else sample.image
        image = Image.fromarray(pixels)
    else:
        # The signature names the format: PIL then skips probing every plugin, a third of the time of a small image.
        image_format = next((name for signature, name in IMAGE_SIGNATURES.items()
                             if sample.image.startswith(signature)), None)
        try:
            image = Image.open(io.BytesIO(sample.image), formats=None if image_format is None else (image_format,))
        except Image.DecompressionBombError:  # the header alone says so: nothing was decoded
            return "oversized_image"
        except (UnidentifiedImageError, OSError, ValueError):
            return "undecodable_image" if image_format is None else "truncated_image"
    if not options.augment:
        try:
            return resize_center_crop(image, options.image_size) if options.resize is None else options.resize(image)
        except (OSError, ValueError, SyntaxError, EOFError):
            return "truncated_image"
    width, height = image.size
    box = crop_box(width, height, uniforms, options.crop_scale, options.crop_ratio)
    # JPEG: let libjpeg decode at 1/2, 1/4 or 1/8 scale when the crop stays at least `image_size` wide.
    scale = options.image_size / min(box[2] - box[0], box[3] - box[1])
    if scale < 0.5 and image.format == "JPEG":
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        sx, sy = image.size[0] / width, image.size[1] / height
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    try:
        image.load()
        return random_resized_crop(image, options.image_size, box)
    except (OSError, ValueError, SyntaxError, EOFError):
        return "truncated_image"


def choose_caption(captions: tuple[str, ...], options: DecodeOptions,
                   uniform: float) -> tuple[str | None, str | None]:
    """`(caption, None)`: one valid caption (stripped, non-empty, ≤ `max_caption_chars`; with "random"
    sampling the one `uniform` ∈ [0, 1) picks); `(None, reason)` when there is none
    ("empty_caption" | "long_caption")."""
    stripped = [caption.strip() for caption in captions]
    valid = [caption for caption in stripped if caption and len(caption) <= options.max_caption_chars]
    if not valid:
        return None, "long_caption" if any(stripped) else "empty_caption"
    return (valid[int(uniform * len(valid))] if options.caption_sampling == "random" else valid[0]), None


def decode_example(item: RawRecord | Sample | Skip, options: DecodeOptions,
                   uniforms: Sequence[float]) -> tuple[str, np.ndarray] | Skip:
    """A stream element → `(caption, uint8 image [S, S, 3])`, or the `Skip` that says why not.
    `uniforms`: `UNIFORMS_PER_EXAMPLE` numbers in [0, 1) (the crop's, then the caption's)."""
    if isinstance(item, Skip):
        return item
    if isinstance(item, RawRecord):
        record_id = item.record_id
        try:
            sample = decode_record(item.data)
        except RecordError:
            return Skip(record_id, "truncated_record")
    else:
        sample, record_id = item, item.key
    caption, reason = choose_caption(sample.captions, options, uniforms[-1])
    if reason is not None:
        return Skip(record_id, reason)
    image = decode_image(sample, options, uniforms)
    return Skip(record_id, image) if isinstance(image, str) else (caption, image)
