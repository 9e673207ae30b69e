"""Ctrl-C that is never lost, and never lands in the middle of a checkpoint save.

Python raises `KeyboardInterrupt` wherever the main thread happens to be. Inside a garbage-collector callback
or a finalizer (JAX runs `_xla_gc_callback` on every collection) the exception is printed as "Exception
ignored" and dropped, and a training run went on to its last step. `install()` (what `mmjax` does first)
makes Ctrl-C also leave a mark that `check()`, called by the training loop at every step, turns back into
the `KeyboardInterrupt` that was dropped.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

_received = threading.Event()


def _on_interrupt(signum, frame) -> None:
    del signum, frame
    _received.set()
    raise KeyboardInterrupt


def _ignore_dropped_interrupts(unraisable) -> None:
    """`sys.unraisablehook`: a dropped `KeyboardInterrupt` is not reported ("Exception ignored in …", with its
    traceback); `check()` raises it again. Anything else is reported as Python would."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def install() -> None:
    """Handle Ctrl-C (SIGINT) in this process as above; from the main thread, before anything long starts."""
    _received.clear()
    signal.signal(signal.SIGINT, _on_interrupt)
    sys.unraisablehook = _ignore_dropped_interrupts


def check() -> None:
    """Raise the `KeyboardInterrupt` of a Ctrl-C whose exception was dropped (only after `install()`)."""
    if _received.is_set():
        _received.clear()
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred():
    """Ctrl-C during the block raises `KeyboardInterrupt` after it, not inside it.

    Orbax starts an async save in several steps; interrupted between them, the save's threads fail at exit with
    tracebacks. Only where Python's own handler or `install()`'s is in place (the main thread, SIGINT not
    ignored) is anything changed.
    """
    handler = signal.getsignal(signal.SIGINT)
    if (threading.current_thread() is not threading.main_thread()
            or handler not in (signal.default_int_handler, _on_interrupt)):
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
    if received:
        _received.clear()  # raised here, now: nothing is left for `check()`
        raise KeyboardInterrupt
