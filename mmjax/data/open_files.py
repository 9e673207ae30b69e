"""Enough file descriptors for every shard of a data set to stay open.

grain's `ArrayRecordDataSource` keeps a shard's reader open once it has read from it, and a global
shuffle reads from every shard within the first batches of an epoch. So each process that reads a
data set (the main one, and each grain worker, which inherits the limit) ends up holding one
descriptor per shard, plus the ones JAX, checkpoints and logs use. The usual Linux soft limit is
1 024, while CC12M as img2dataset writes it is about 1 250 shards, and LAION-400M about 41 000.
Without privileges, a process may raise its soft limit up to its hard limit, which is what
`allow_open_files` does. When even the hard limit is too low, it stops before any work, instead of
stopping at the first shard the system refuses to open, hours into a run.
"""

from __future__ import annotations

import resource

SPARE_DESCRIPTORS = 256  # for everything but the shards: JAX, checkpoints, logs, worker pipes


def allow_open_files(num_shards: int, what: str) -> None:
    """Raises this process's soft limit on open files to `num_shards + SPARE_DESCRIPTORS` when it is lower;
    a one-line ValueError naming `what` (the data set) when the hard limit does not allow that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = num_shards + SPARE_DESCRIPTORS
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(f"{what} has {num_shards} shards and a reader keeps each one open, but this process may "
                         f"open only {hard} files (`ulimit -Hn`; {SPARE_DESCRIPTORS} are kept for everything "
                         f"else): raise the hard limit, or convert with a larger --records_per_shard")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError) as error:  # macOS caps the soft limit below an unlimited hard one
        raise ValueError(f"{what} has {num_shards} shards and a reader keeps each one open, but the open-file "
                         f"limit cannot be raised from {soft} to {needed} ({error}): raise it with `ulimit -n`, "
                         f"or convert with a larger --records_per_shard") from None
