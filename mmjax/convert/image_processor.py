"""transformers image processors (preprocessor_config.json) ↔ `ImagePreprocess`, for CLIP and SigLIP.

transformers' `CLIPImageProcessor` and `SiglipImageProcessor` run one pipeline, resize → centre crop →
rescale → normalise, with different class defaults (`ProcessorDefaults`). The `size` decides the resize:
`{shortest_edge: s}` resizes the shorter side to s keeping the aspect ratio, `{height: h, width: w}` resizes
straight to h×w, and an int means `{shortest_edge: int}`. `do_center_crop` then crops `crop_size`.
Of these, the square outputs are supported: a shorter side resized and centre-cropped to a square
(`mode="shortest"`, crop offset floored as transformers does), or a square resize with no crop, or with a
crop of the same size (`mode="squash"`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from mmjax.data.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePreprocess

RESAMPLE = {2: "bilinear", 3: "bicubic"}


@dataclasses.dataclass(frozen=True)
class ProcessorDefaults:
    """What a processor class assumes for the keys a config leaves out (its class attributes)."""

    image_processor_type: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    center_crop: bool
    squash: bool  # the default `size` is {height, width} (else {shortest_edge}), at the model's image size
    extra: tuple[tuple[str, str], ...] = ()  # keys `preprocess_to_hf` writes as they are


CLIP = ProcessorDefaults("CLIPImageProcessor", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, center_crop=True, squash=False)
SIGLIP = ProcessorDefaults("SiglipImageProcessor", (0.5,) * 3, (0.5,) * 3, center_crop=False, squash=True,
                           extra=(("processor_class", "SiglipProcessor"),))


def _per_channel(value, name: str, where: str) -> tuple[float, float, float]:
    """`image_mean` / `image_std`: three numbers, or one for every channel (transformers accepts both)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return tuple(float(v) for v in value)
    raise ValueError(f"{where}: {name} {value!r} is not a number or a list of 3 numbers")


def _size_dict(size, where: str) -> dict:
    if isinstance(size, int):
        return {"shortest_edge": size}
    if isinstance(size, Mapping) and ("shortest_edge" in size or {"height", "width"} <= set(size)):
        return dict(size)
    raise ValueError(f"{where}: size {size!r} is not an int, {{shortest_edge}} or {{height, width}}")


def _square_side(crop_size, where: str) -> int:
    if isinstance(crop_size, int):
        return crop_size
    if isinstance(crop_size, Mapping) and crop_size.get("height") is not None:
        if crop_size["height"] == crop_size.get("width"):
            return crop_size["height"]
    raise ValueError(f"{where}: crop_size {crop_size!r} is not square")


def preprocess_from_hf(processor: Mapping, image_size: int, where: str, defaults: ProcessorDefaults) -> ImagePreprocess:
    """The `ImagePreprocess` that gives the pixels transformers' processor (PIL backend) gives; a one-line
    ValueError naming `where` for a processor whose output is not square or that skips a step."""
    for flag in ("do_resize", "do_rescale", "do_normalize"):
        if not processor.get(flag, True):
            raise ValueError(f"{where}: {flag}=false is not supported")
    if abs(float(processor.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise ValueError(f"{where}: rescale_factor {processor['rescale_factor']} is not 1/255")
    resample = processor.get("resample", 3)
    if resample not in RESAMPLE:
        raise ValueError(f"{where}: resample {resample} is not 2 (bilinear) or 3 (bicubic)")
    common = dict(mean=_per_channel(processor.get("image_mean", defaults.mean), "image_mean", where),
                  std=_per_channel(processor.get("image_std", defaults.std), "image_std", where),
                  interpolation=RESAMPLE[resample], alpha_on_white=True)
    default_size = {"height": image_size, "width": image_size} if defaults.squash else {"shortest_edge": image_size}
    size = _size_dict(processor.get("size", default_size), where)
    crop_side = (_square_side(processor.get("crop_size", image_size), where)
                 if processor.get("do_center_crop", defaults.center_crop) else None)
    if "shortest_edge" in size:
        if crop_side is None:
            raise ValueError(f"{where}: size {size} without do_center_crop gives images that are not square")
        return ImagePreprocess(crop_side, resize_size=size["shortest_edge"], mode="shortest", crop_rounding="floor",
                               **common)
    if size["height"] != size["width"]:
        raise ValueError(f"{where}: non-square size {size} is not supported")
    if crop_side not in (None, size["height"]):
        raise ValueError(f"{where}: a resize to {size} followed by a {crop_side}-pixel crop is not supported")
    return ImagePreprocess(size["height"], mode="squash", **common)


def preprocess_to_hf(preprocess: ImagePreprocess, defaults: ProcessorDefaults) -> dict:
    """preprocessor_config.json for `preprocess` (inverse of `preprocess_from_hf`)."""
    # transformers has no non-antialiased resize: big_vision's `bilinear_tf` is written as PIL bilinear, its nearest
    resample = {name: code for code, name in RESAMPLE.items()}[preprocess.interpolation.removesuffix("_tf")]
    square = {"height": preprocess.size, "width": preprocess.size}
    config = dict(image_processor_type=defaults.image_processor_type, **dict(defaults.extra), do_resize=True,
                  resample=resample, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                  image_mean=list(preprocess.mean), image_std=list(preprocess.std), do_convert_rgb=True)
    if preprocess.mode == "squash":
        return {**config, "size": square, "do_center_crop": False}
    return {**config, "size": {"shortest_edge": preprocess.resize_size or preprocess.size}, "do_center_crop": True,
            "crop_size": square}


def crop_caveat(preprocess: ImagePreprocess, to: str) -> str | None:
    """How the preprocessing written for `to` ("hf" or "open_clip"; big_vision's squashes, which no export to it
    crops) crops otherwise than `preprocess`, as the end of a sentence about it, or None.

    OpenCLIP's transform resizes the shorter side to the crop size. transformers' processors floor the centre-crop
    offset `d / 2` (`d`: the resized side minus the crop), OpenCLIP rounds it as torchvision does (half to even):
    the two differ by a pixel when `d` is 3 more than a multiple of 4, which moved an embedding by 0.2 on a test
    model."""
    if preprocess.mode != "shortest":
        return None
    if to == "open_clip" and preprocess.resize_size not in (None, preprocess.size):
        return (f"resizes the shorter side to {preprocess.resize_size} before a {preprocess.size}-pixel centre crop; "
                f"OpenCLIP's transform resizes it to {preprocess.size}, so every image is cropped otherwise there")
    written = {"hf": ("floor", "the transformers processor written floors it"),
               "open_clip": ("round", "OpenCLIP's transform rounds it")}
    rounding, how = written[to]
    if preprocess.crop_rounding != rounding:
        return (f"{'rounds' if preprocess.crop_rounding == 'round' else 'floors'} the centre-crop offset; {how}: an "
                f"image whose resized side minus the crop is 3 more than a multiple of 4 is cropped one pixel apart")
    return None


# How each format's processor makes an image that is not RGB into RGB: `(alpha_on_white, rgb_after_resize)`.
WRITTEN_COLOUR = {"hf": (True, False), "open_clip": (False, True), "big_vision": (False, False)}
WRITTEN_BY = {"hf": "the transformers processor written", "open_clip": "OpenCLIP's transform",
              "big_vision": "big_vision's decoder"}


def _to_rgb_step(alpha_on_white: bool, rgb_after_resize: bool) -> str:
    if rgb_after_resize:
        return "resizes an image that is not RGB in its own mode and converts it to RGB last"
    if alpha_on_white:
        return "puts a transparent image on white before converting it to RGB"
    return "converts an image to RGB first, dropping its transparency"


def colour_caveat(preprocess: ImagePreprocess, to: str) -> str | None:
    """How the preprocessing written for `to` ("hf", "open_clip" or "big_vision") makes palette and transparent
    images RGB otherwise than `preprocess`, as the end of a sentence about it, or None. (An RGBA image moved an
    embedding by 0.24 between OpenCLIP's transform and the transformers processor on a test model.)"""
    own = (preprocess.alpha_on_white, preprocess.rgb_after_resize)
    if own == WRITTEN_COLOUR[to]:
        return None
    return (f"{_to_rgb_step(*own)}; {WRITTEN_BY[to]} {_to_rgb_step(*WRITTEN_COLOUR[to])}: palette and transparent "
            f"images are preprocessed otherwise there")
