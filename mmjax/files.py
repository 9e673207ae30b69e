"""Writing a file so that a reader (another process, a restarted run) sees the old one or the whole new one, and
an error writing it (a full disk) that names it."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterator

_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT)  # what a library's own error may carry as the system's message


@contextlib.contextmanager
def naming_the_file(path: str) -> Iterator[None]:
    """An error writing `path` that does not name it is raised as an `OSError` naming `path`: an `OSError` without a
    file name (a full disk, met by a write or a flush), or a library's error carrying the system's message for a
    full disk or quota (safetensors' `SafetensorError`, ArrayRecord's `RuntimeError`)."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno not in _WRITE_ERRORS:  # (another error: a read of the input)
            raise
        raise OSError(error.errno, error.strerror, path) from None
    except Exception as error:
        code = next((code for code in _WRITE_ERRORS if os.strerror(code) in str(error)), None)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), path) from None


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """`write(temporary path)` for a temporary file beside `path`, then a rename: never half written. The
    temporary's name holds the host's name and the process id (`PATH.tmp-HOST-PID`), so that the processes of a
    multi-host run writing one file on a shared file system (each the same content) do not share one. When it
    fails, the temporary file is removed and the error names `path` (`naming_the_file`)."""
    temporary = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
    try:
        with naming_the_file(path):
            write(temporary)
            os.replace(temporary, path)
    except OSError as error:
        if error.filename != temporary:
            raise
        raise OSError(error.errno, error.strerror, path) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def write_text_atomically(path: str, text: str) -> None:
    """`text` into `path` through a temporary file beside it and a rename, never half written."""
    def write(temporary: str) -> None:
        with open(temporary, "w") as f:
            f.write(text)

    write_atomically(path, write)
