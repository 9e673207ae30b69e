"""Ctrl-C that is never lost, and never lands in the middle of a checkpoint save.

Python raises `KeyboardInterrupt` wherever the main thread happens to be. Inside a garbage-collector callback
or a finalizer (JAX runs `_xla_gc_callback` on every collection) the exception is passed to
`sys.unraisablehook`, reported as "Exception ignored", and dropped: a training run went on to its last step.
`install()` (what `mmjax` does first) marks such a dropped interrupt, and `check()`, which the training loop
calls at every step, raises it again. While the loop runs (`watching()`), the drop is not reported, since it
is about to be raised.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

_dropped = threading.Event()
_watchers = []  # one entry per `watching()` block open (they nest: a command, the training loop inside it)
_reporting = sys.unraisablehook  # the hook `install()` found, which reports everything else


def _on_unraisable(unraisable) -> None:
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _dropped.set()
        if _watchers:
            return
    _reporting(unraisable)


def install() -> None:
    """Mark the `KeyboardInterrupt`s Python drops (chained to the current `sys.unraisablehook`)."""
    global _reporting
    if sys.unraisablehook is not _on_unraisable:
        _reporting = sys.unraisablehook
        sys.unraisablehook = _on_unraisable


def check() -> None:
    """Raise the `KeyboardInterrupt` that Python dropped since the last check, if any (after `install()`)."""
    if _dropped.is_set():
        _dropped.clear()
        raise KeyboardInterrupt


@contextlib.contextmanager
def watching() -> Iterator[None]:
    """A loop that calls `check()` often: a dropped interrupt is raised by it, not reported."""
    _watchers.append(None)
    try:
        yield
    finally:
        _watchers.pop()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Ctrl-C during the block raises `KeyboardInterrupt` after it, not inside it.

    Orbax starts an async save in several steps; interrupted between them, the save's threads fail at exit with
    tracebacks. Only where Python's own handler is in place (the main thread, SIGINT not ignored) is anything
    changed.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt
