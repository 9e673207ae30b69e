"""A contact sheet of search hits: the query on top, the hits in a grid with rank and score.

Pure PIL (no matplotlib): each image is scaled to a square cell (nearest-neighbour
when enlarging, so tiny model-size images stay crisp), with a caption
``#rank  score`` and the hit's id under it.
"""
from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmjax.eval.text_files import one_line

PAD = 8
LINE = 14  # caption line height, pixels
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _cell(image: np.ndarray, cell: int) -> Image.Image:
    picture = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    resample = Image.NEAREST if max(picture.size) < cell else Image.BICUBIC
    scale = cell / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, resample)


def _clip(text: str, width_px: int) -> str:
    limit = max(4, width_px // 7)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def contact_sheet(query: np.ndarray | str, hits: Sequence[np.ndarray], captions: Sequence[str],
                  ids: Sequence[str] = (), columns: int = 5, cell: int = 128) -> Image.Image:
    """The sheet as a PIL image.

    Args:
      query: the query image (uint8 ``[H, W, 3]``) or text.
      hits: the hit images, best first.
      captions: one per hit, e.g. ``"#1  0.873"``.
      ids: optional second caption line per hit (clipped to the cell width).
      columns: hits per grid row; cell: the side of one image cell, pixels.
    """
    font = _font()
    columns = max(1, min(columns, len(hits) or 1))
    rows = -(-len(hits) // columns)
    caption_lines = 2 if ids else 1
    width = max(columns * (cell + PAD) + PAD, 2 * cell)
    if isinstance(query, str):
        query_lines = textwrap.wrap("query: " + query, max(10, width // 7))[:4] or ["query:"]
        query_height = len(query_lines) * LINE
    else:
        query_lines, query_height = ["query"], cell + LINE
    height = PAD + query_height + 2 * PAD + rows * (cell + caption_lines * LINE + PAD) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = PAD
    if isinstance(query, str):
        for line in query_lines:
            draw.text((PAD, y), line, fill=INK, font=font)
            y += LINE
    else:
        picture = _cell(query, cell)
        sheet.paste(picture, ((width - picture.width) // 2, y))
        draw.text(((width - picture.width) // 2, y + cell), "query", fill=INK, font=font)
        y += cell + LINE
    y += PAD
    draw.line((PAD, y, width - PAD, y), fill=(180, 180, 180))
    y += PAD
    for i, image in enumerate(hits):
        row, column = divmod(i, columns)
        x0, y0 = PAD + column * (cell + PAD), y + row * (cell + caption_lines * LINE + PAD)
        picture = _cell(image, cell)
        sheet.paste(picture, (x0 + (cell - picture.width) // 2, y0 + (cell - picture.height) // 2))
        draw.text((x0, y0 + cell), captions[i], fill=INK, font=font)
        if ids:
            draw.text((x0, y0 + cell + LINE), _clip(one_line(str(ids[i])), cell), fill=INK, font=font)
    return sheet


def write_contact_sheet(path: str | os.PathLike, query: np.ndarray | str, hits: Sequence[np.ndarray],
                        captions: Sequence[str], ids: Sequence[str] = (), columns: int = 5,
                        cell: int = 128) -> tuple[int, int]:
    """Writes :func:`contact_sheet` as a PNG; returns its ``(width, height)``."""
    sheet = contact_sheet(query, hits, captions, ids, columns, cell)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    sheet.save(path, format="PNG")
    return sheet.size


def write_search_sheet(path: str | os.PathLike, index, query: str, query_is_text: bool, indices: Sequence[int],
                       scores: Sequence[float], cell: int = 128) -> tuple[int, int]:
    """The sheet of one search: hit images read from ``index.root / id``; ``query`` is a text or an image path."""
    from mmjax.eval.images import load_image

    if index.modality != "image":
        raise ValueError("--sheet needs an image index (the hits are texts)")
    root = index.root or "."
    hits = [load_image(os.path.join(root, index.ids[i]), cell) for i in indices]
    captions = [f"#{rank}  {score:.3f}" for rank, score in enumerate(scores, 1)]
    shown = query if query_is_text else load_image(query, cell)
    return write_contact_sheet(path, shown, hits, captions, [index.ids[i] for i in indices], cell=cell)
