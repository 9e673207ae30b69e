"""Random numbers that belong to an element of the stream, not to whoever decodes it.

The numbers of the element at global position `i` are a hash of `(seed, i, j)`, so they
do not depend on the number of worker processes or JAX processes, nor on where a
resumed run started: a resumed run crops and samples captions exactly as the original
did. One NumPy call gives a whole batch's numbers, which per-element generators (≈ 7 µs
each to create) cannot.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_STREAM = np.uint64(0xD1B54A32D192ED03)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mix; uint64 arithmetic wraps."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def element_uniforms(seed: int, positions: np.ndarray, count: int) -> np.ndarray:
    """float64 `[len(positions), count]` uniform in [0, 1): number `j` of the element at `positions[k]`."""
    with np.errstate(over="ignore"):
        base = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _STREAM + _GOLDEN)
        keys = _splitmix64(base ^ np.asarray(positions, np.uint64)[:, None] * _GOLDEN)
        bits = _splitmix64(keys + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
