"""Writing a file so that a reader (another process, a restarted run) sees the old one or the whole new one."""

from __future__ import annotations

import os


def write_text_atomically(path: str, text: str) -> None:
    """`text` into `path` through a temporary file beside it and a rename, never half written."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)
