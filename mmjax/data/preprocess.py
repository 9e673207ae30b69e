"""A checkpoint's own image preprocessing, as a small frozen spec.

`ImagePreprocess(size=224, mean=…, std=…)(image)` gives the float32 `[S, S, 3]` pixels the
reference processor gives:

- OpenCLIP / OpenAI CLIP (`rgb_after_resize=True`): torchvision `Resize(S, bicubic)` on a PIL image
  (PIL's resize, in the image's own mode), `CenterCrop(S)` (offset `int(round((side − S) / 2))`), then
  `convert("RGB")`, `ToTensor`, `Normalize(mean, std)`. The order matters for palette and bilevel images
  (PIL resizes them nearest-neighbour) and transparent ones (resized with premultiplied alpha).
- transformers CLIP (`crop_rounding="floor"`, `alpha_on_white=True`): the same PIL resize of
  the shortest edge, crop offset `(side − S) // 2`, transparency composited onto white.
- SigLIP (`mode="squash"`, `interpolation="bilinear"`): resize straight to `S×S`, no crop.
- big_vision (`mode="squash"`, `interpolation="bilinear_tf"`): `tf.image.resize(bilinear,
  antialias=False)` (half-pixel centres, no antialiasing when shrinking), then clipped and
  truncated to uint8, as big_vision's `resize` op.

Resizing is otherwise PIL's (uint8), which transformers' PIL backend also uses; its default
torchvision-tensor backend differs from PIL by 1–2 grey levels for CLIP's bicubic resize and
up to ~10 for SigLIP's bilinear squash of a noisy image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mmjax.data.transforms import to_rgb

INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR, "bilinear_tf": None}
MODES = ("shortest", "squash")
CROP_ROUNDINGS = ("round", "floor")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_bilinear_tf(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 `[H, W, C]` → uint8 `[h, w, C]` (`size = (w, h)`) as TensorFlow 2's `tf.image.resize(method="bilinear",
    antialias=False)` computes it (half-pixel centres: source `(i + 0.5) · in / out − 0.5`, clamped to the image;
    float32 arithmetic; no antialiasing when shrinking), then clipped and truncated to uint8 as big_vision's
    `resize` op casts back."""

    def taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * np.float32(in_size / out_size) \
            - np.float32(0.5)
        floor = np.floor(source)
        lower = np.maximum(floor, 0).astype(np.intp)
        upper = np.minimum(np.ceil(source), in_size - 1).astype(np.intp)
        return lower, upper, (source - floor).astype(np.float32)

    (top, bottom, y_lerp), (left, right, x_lerp) = taps(size[1], pixels.shape[0]), taps(size[0], pixels.shape[1])
    x_lerp = x_lerp[None, :, None]

    def row_of(rows: np.ndarray) -> np.ndarray:  # gathered in uint8: only the taps become float32
        gathered = pixels[rows]
        left_taps, right_taps = gathered[:, left].astype(np.float32), gathered[:, right].astype(np.float32)
        return left_taps + (right_taps - left_taps) * x_lerp

    upper_row, lower_row = row_of(top), row_of(bottom)
    resized = upper_row + (lower_row - upper_row) * y_lerp[:, None, None]
    return np.clip(resized, 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """Resize → (centre crop) → `(x / 255 − mean) / std`.

    size: output side S. resize_size: the shorter side before the crop (`None`: S).
    mode: `"shortest"` (resize the shorter side, centre crop S×S) or `"squash"` (resize to S×S).
    interpolation: `"bicubic"` or `"bilinear"` (PIL filters), or `"bilinear_tf"` (`resize_bilinear_tf`). crop_rounding: `"round"`
    (torchvision) or `"floor"` (transformers). alpha_on_white: composite transparent images
    onto white (transformers) instead of dropping the alpha channel (PIL `convert("RGB")`).
    rgb_after_resize: resize and crop in the image's own mode and convert to RGB last (OpenCLIP), instead of
    converting first (transformers, big_vision, mmjax's training). 16-bit images are scaled to 8 bits first.
    """

    size: int
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resize_size: int | None = None
    mode: str = "shortest"
    interpolation: str = "bicubic"
    crop_rounding: str = "round"
    alpha_on_white: bool = False
    rgb_after_resize: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"preprocess mode {self.mode!r} is not one of {MODES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
        if self.crop_rounding not in CROP_ROUNDINGS:
            raise ValueError(f"crop_rounding {self.crop_rounding!r} is not one of {CROP_ROUNDINGS}")
        if self.alpha_on_white and self.rgb_after_resize:
            raise ValueError("alpha_on_white composites onto white before resizing: it excludes rgb_after_resize")
        if self.resize_size is not None and self.resize_size < self.size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than the crop size {self.size}")

    def with_size(self, size: int) -> ImagePreprocess:
        """The same processing for another output side (the resize side scales with it)."""
        resize = None if self.resize_size is None else round(self.resize_size * size / self.size)
        return dataclasses.replace(self, size=size, resize_size=resize)

    def _before_resize(self, image: Image.Image | np.ndarray) -> Image.Image:
        """The PIL image to resize: converted to RGB unless `rgb_after_resize` (16-bit images always are)."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise ValueError(f"images must be PIL images or uint8 [H, W(, C)] arrays, "
                                 f"got {image.dtype} {list(image.shape)}")
            image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
        if image.mode.startswith("I"):  # 16-bit: scaled to 8 bits (its transparency, a 16-bit value, is dropped)
            return to_rgb(image)
        if self.rgb_after_resize:
            return image
        has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
        if self.alpha_on_white and has_alpha:
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return to_rgb(image)

    def resized(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """uint8 `[S, S, 3]`: the image after resize and crop, before normalisation."""
        image = self._before_resize(image)
        if self.mode == "squash":
            return np.asarray(to_rgb(self._resize(image, (self.size, self.size))), np.uint8)
        short = self.resize_size or self.size
        width, height = image.size
        if width <= height:
            new_size = (short, int(short * height / width))
        else:
            new_size = (int(short * width / height), short)
        if new_size != image.size:
            image = self._resize(image, new_size)
        offset = (lambda extra: int(round(extra / 2.0))) if self.crop_rounding == "round" else (lambda e: e // 2)
        left, top = offset(new_size[0] - self.size), offset(new_size[1] - self.size)
        return np.asarray(to_rgb(image.crop((left, top, left + self.size, top + self.size))), np.uint8)

    def _resize(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """`image` resized to `size` (width, height) with this spec's interpolation."""
        if self.interpolation == "bilinear_tf":
            return Image.fromarray(resize_bilinear_tf(np.asarray(to_rgb(image)), size))
        return image.resize(size, INTERPOLATIONS[self.interpolation])

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 `[..., 3]` → float32 `(x / 255 − mean) / std`."""
        x = pixels.astype(np.float32) / np.float32(255.0)
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """One PIL image or uint8 `[H, W(, C)]` array → float32 `[S, S, 3]`."""
        return self.normalize(self.resized(image))

    def batch(self, images: Sequence[Image.Image | np.ndarray] | Image.Image | np.ndarray) -> np.ndarray:
        """A list of images (any sizes), an array `[N, H, W, C]` or one PIL image → float32 `[N, S, S, 3]`.
        A 1-D object array is a list; other arrays are refused: `[H, W, 3]` (one colour image) and `[N, H, W]` (N
        greyscale images) cannot be told apart."""
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, np.ndarray):
            if images.ndim not in (1, 4):  # 1: an object array of images
                raise ValueError(f"an array of images must be [N, H, W, C], got shape {list(images.shape)}: pass "
                                 f"one image as [image], greyscale images with a channel axis (x[..., None])")
            images = list(images)
        return np.stack([self(image) for image in images]) if len(images) else np.zeros(
            (0, self.size, self.size, 3), np.float32)
