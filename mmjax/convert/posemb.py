"""Interpolating a learned position table to another image size.

Follows OpenCLIP's `resize_pos_embed`: the patch rows are laid out on their square grid
and resampled with torch's antialiased bicubic (`F.interpolate(mode="bicubic",
antialias=True, align_corners=False)`, Keys cubic with a = −0.5, widened when shrinking);
a class-token row stays first and unchanged.
"""

from __future__ import annotations

import numpy as np


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def resample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`[out_size, in_size]` weights of torch's antialiased bicubic resampling along one axis."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = _cubic((np.arange(lo, hi) - center + 0.5) * inv_scale)
        weights[i, lo:hi] = taps / taps.sum() if taps.sum() != 0 else taps
    return weights


def resize_position_table(table: np.ndarray, new_grid: int, has_cls: bool) -> np.ndarray:
    """`[(1 +) g*g, D]` → `[(1 +) new_grid*new_grid, D]` (float32)."""
    table = np.asarray(table, np.float32)
    cls, grid_rows = (table[:1], table[1:]) if has_cls else (table[:0], table)
    grid = int(round(len(grid_rows) ** 0.5))
    if grid * grid != len(grid_rows):
        raise ValueError(f"position table with {len(grid_rows)} patch rows is not a square grid")
    if grid == new_grid:
        return table
    matrix = resample_matrix(grid, new_grid)
    rows = grid_rows.reshape(grid, grid, -1).astype(np.float64)
    resized = np.einsum("yi,xj,ijd->yxd", matrix, matrix, rows).reshape(new_grid * new_grid, -1)
    return np.concatenate([cls, resized.astype(np.float32)])
