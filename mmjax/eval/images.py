"""Image files → uint8 arrays, with CLIP's preprocessing geometry or a checkpoint's own.

Each image is opened with PIL, converted to RGB, resized so its shorter side is
``size`` (bicubic) and centre-cropped to ``size × size`` — torchvision's
``Resize(size) + CenterCrop(size)``, as OpenCLIP's eval transform — or, given a pretrained
checkpoint's ``ImagePreprocess``, resized and cropped as it says. Normalisation
(mean / std) is left to the model's encoder.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mmjax.data.preprocess import ImagePreprocess

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def list_images(directory: str | os.PathLike) -> list[str]:
    """Paths of the image files under ``directory`` (recursive), sorted by relative path. A linked directory
    whose target lies outside ``directory`` is listed under the link's name (each target once); one whose target
    lies inside is not, since its files are listed under their own names.

    Files are recognised by extension (case-insensitive): jpg, jpeg, png, webp, bmp. Hidden files (a name starting
    with a dot, such as the ``._NAME.jpg`` resource files macOS writes beside images) are not images.
    """
    directory = os.fspath(directory)
    if os.path.isfile(directory):
        raise ValueError(f"{directory} is a file, not a directory of images (--images takes a directory)")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"image directory {directory} does not exist")
    relative, visited, top = [], set(), os.path.realpath(directory)
    for root, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a second link to a directory outside, or a cycle through one
            dirs.clear()
            continue
        visited.add(real)
        dirs[:] = sorted(name for name in dirs if not _links_inside(os.path.join(root, name), top))
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                relative.append(os.path.relpath(os.path.join(root, name), directory))
    if not relative:
        raise ValueError(f"no image files ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) under {directory}")
    relative.sort(key=lambda p: p.split(os.sep))
    return [os.path.join(directory, p) for p in relative]


def _links_inside(path: str, top: str) -> bool:
    """Whether `path` is a link to a directory under `top` (its real path)."""
    target = os.path.realpath(path)
    return os.path.islink(path) and (target == top or target.startswith(top + os.sep))


def load_image(path: str | os.PathLike, size: int | ImagePreprocess) -> np.ndarray:
    """One file → uint8 ``[S, S, 3]``; an unreadable file → ``ValueError`` naming it. ``size``: the side S (the
    shorter side resized bicubic, then the centre crop, as a training run evaluates) or a checkpoint's
    ``ImagePreprocess`` (its ``resized``)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return (ImagePreprocess(size) if isinstance(size, int) else size).resized(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"cannot read image {path}: {reason}") from None


def load_images(
    paths: Sequence[str | os.PathLike], size: int | ImagePreprocess, root: str | os.PathLike | None = None
) -> tuple[np.ndarray, list[str]]:
    """Files → ``(uint8 [N, S, S, 3], ids)``, each as :func:`load_image` makes it.

    ``ids`` are the paths relative to ``root`` (as ``list_images`` returns them,
    with ``/`` separators) when ``root`` is given, else the paths as passed.
    """
    side = size if isinstance(size, int) else size.size
    images = np.zeros((len(paths), side, side, 3), np.uint8)
    for i, path in enumerate(paths):
        images[i] = load_image(path, size)
    return images, image_ids(paths, root)


def image_ids(paths: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> list[str]:
    """The ids :func:`load_images` gives ``paths``."""
    if root is None:
        return [os.fspath(p) for p in paths]
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
