"""Commands whose subcommands share one set of absl flags: a flag given to a subcommand that does not read it is a
one-line error, not silently ignored (`mmjax data convert --threshold 0.9` converted everything)."""

from __future__ import annotations

from collections.abc import Iterable

from absl import flags


def refuse_unread_flags(command: str, defined: Iterable[str], used: Iterable[str]) -> None:
    """A ValueError naming the flags of `defined` given on the command line that `command` (e.g. "data info") does
    not read, and the ones it does (`used`)."""
    used = set(used)
    ignored = sorted(name for name in set(defined) - used if flags.FLAGS[name].present)
    if ignored:
        reads = f"it reads {', '.join('--' + name for name in sorted(used))}" if used else "it takes no flags"
        raise ValueError(f"mmjax {command} does not read {', '.join('--' + name for name in ignored)} ({reads})")
