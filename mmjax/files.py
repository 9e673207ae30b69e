"""Writing a file so that a reader (another process, a restarted run) sees the old one or the whole new one."""

from __future__ import annotations

import os
from collections.abc import Callable


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """`write(temporary path)` for a temporary file beside `path`, then a rename: never half written."""
    temporary = f"{path}.tmp-{os.getpid()}"
    write(temporary)
    os.replace(temporary, path)


def write_text_atomically(path: str, text: str) -> None:
    """`text` into `path` through a temporary file beside it and a rename, never half written."""
    def write(temporary: str) -> None:
        with open(temporary, "w") as f:
            f.write(text)

    write_atomically(path, write)
