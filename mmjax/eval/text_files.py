"""Reading a UTF-8 text file of one item per line (captions to embed, class names, prompt templates), and showing an
item (an image id) on one line."""

from __future__ import annotations

import os
import unicodedata

from mmjax.data.tar_samples import caption_lines


def read_text_lines(path: str, what: str = "") -> list[str]:
    """The non-empty lines of a UTF-8 text file (a byte-order mark dropped), without their line ends (surrounding
    spaces stripped); one-line errors name the file (and the line that is not UTF-8). `what`: one line's item,
    for the message of a file with none."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"text file {path} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ValueError(f"text file {path} is not UTF-8 (line {line}: {error.reason})") from None
    texts = list(caption_lines(text))  # split at line ends only, stripped, the empty ones left out
    if not texts:
        raise ValueError(f"text file {path} has no non-empty lines" + (f" (one {what} per line)" if what else ""))
    return texts


def one_line(text: str) -> str:
    """`text`, or Python's quoted form of it when it holds a line break or a control character other than a tab, so
    that it stays on one line (a file name may hold a newline)."""
    breaks = any(unicodedata.category(c) in ("Cc", "Zl", "Zp") and c != "\t" for c in text)
    return repr(text) if breaks else text
