"""Timing a step function the same way on both sides of a comparison."""

from __future__ import annotations

import time
from typing import Callable

from mmjax import interrupts


def step_times(run: Callable[[], None], warmup: int, steps: int) -> list[float]:
    """Seconds of each of `steps` calls of `run` (which must block until its work is done), after `warmup`
    untimed calls."""
    for _ in range(warmup):
        interrupts.check()  # a Ctrl-C Python dropped in a gc callback stops the benchmark here
        run()
    times = []
    for _ in range(steps):
        interrupts.check()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times
