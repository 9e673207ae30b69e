"""Transparent huge pages for XLA:CPU's buffers (glibc's `glibc.malloc.hugetlb=1` tunable).

XLA:CPU gets each step's temporaries (`temp_bytes` of the memory analysis: ~630 MB for
`bench-tiny` at batch 64) from glibc malloc, which maps them fresh with `mmap` and
returns them on free, so every step first-touches them again: ~147 000 page faults of
4 KiB per step, measured with `getrusage`. With the tunable, malloc asks for 2 MiB
pages (`madvise(MADV_HUGEPAGE)`; the kernel's THP mode here is `madvise`): ~470 faults
per step and the step drops from ~470 to ~310 ms on this 2-core machine (same run, load ~1.5).
glibc reads tunables only at process start, so the process re-executes itself once.
`mmjax train` does this by default (the demo model's step: 244 → 173 ms, `mmjax bench train-step
--model clip-tiny --batch 256 --threads 2 [--nohugepages]`); `MMJAX_HUGEPAGES=0` turns it off.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def hugepages_enabled() -> bool:
    return TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def reexec_with_hugepages() -> None:
    """Run this process's own command line again (`sys.orig_argv`: the `mmjax` script, or `python -m mmjax.cli`,
    so `sys.path` starts as it did) with the tunable set, unless the environment already sets
    `glibc.malloc.hugetlb` (to any value: a user's 0 or 2 is kept) or the platform is not Linux. Returns only
    when nothing was done."""
    tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t]
    if (any(t.startswith("glibc.malloc.hugetlb=") for t in tunables) or not sys.platform.startswith("linux")
            or os.environ.get("MMJAX_HUGEPAGES") == "0"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join([*tunables, TUNABLE]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
