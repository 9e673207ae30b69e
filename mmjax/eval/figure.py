"""The demo figure: training loss next to a grid of text-to-image retrievals.

Needs matplotlib (the optional extra ``mmjax[viz]``); it is imported when the
figure is drawn and rendered with the Agg canvas, so no global backend is set.
"""
from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np

DPI = 100
LOSS_WIDTH_IN = 4.5  # loss panel, inches (axes and its labels)
LABEL_WIDTH_IN = 2.2  # query text column, inches
CELL_IN = 1.2  # side of one retrieved image, inches
MARGIN_IN = 0.6  # top (title) and bottom margin, inches


def figure_size(num_queries: int, k: int) -> tuple[int, int]:
    """(width, height) in pixels of the figure for ``num_queries`` rows of ``k`` images."""
    width_in = LOSS_WIDTH_IN + LABEL_WIDTH_IN + k * CELL_IN + 0.2
    height_in = max(num_queries * CELL_IN, 3.0) + 2 * MARGIN_IN
    return round(width_in * DPI), round(height_in * DPI)


def write_demo_figure(
    path: str | os.PathLike,
    metrics_records: Sequence[Mapping[str, float]],
    retrieval: Sequence[tuple[str, Sequence[np.ndarray], Sequence[bool]]],
) -> None:
    """Writes a PNG of size :func:`figure_size`: loss curve left, retrieval grid right.

    Args:
      path: the PNG file to write.
      metrics_records: training metrics, one dict per logged step (the JSON lines of
        the training log); records with both ``"step"`` and ``"loss"`` are plotted.
      retrieval: per query ``(text, images, correct)`` — ``k`` uint8 ``[H, W, 3]``
        images, best first, and whether each is a correct hit (framed green, else red).
        Every query must have the same ``k``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the demo figure needs matplotlib: pip install mmjax[viz]") from error
    if not retrieval:
        raise ValueError("retrieval needs at least one query")
    k = len(retrieval[0][1])
    if any(len(images) != k or len(correct) != k for _, images, correct in retrieval):
        raise ValueError("every query needs the same number of images and flags")

    width_px, height_px = figure_size(len(retrieval), k)
    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    width_in, height_in = width_px / DPI, height_px / DPI

    def inches_to_rect(left: float, bottom: float, width: float, height: float) -> list[float]:
        return [left / width_in, bottom / height_in, width / width_in, height / height_in]

    grid_height = len(retrieval) * CELL_IN
    grid_bottom = (height_in - grid_height) / 2
    loss_axes = figure.add_axes(inches_to_rect(0.8, MARGIN_IN, LOSS_WIDTH_IN - 1.1,
                                               height_in - 2 * MARGIN_IN))
    logged = [(record["step"], record["loss"]) for record in metrics_records
              if "step" in record and "loss" in record]
    if logged:
        steps, losses = zip(*logged)
        loss_axes.plot(steps, losses, color="tab:blue", linewidth=1.2)
    loss_axes.set(xlabel="step", ylabel="loss", title="training loss")
    loss_axes.grid(alpha=0.3)

    grid_left = LOSS_WIDTH_IN + LABEL_WIDTH_IN
    for row, (query, images, correct) in enumerate(retrieval):
        bottom = grid_bottom + (len(retrieval) - 1 - row) * CELL_IN
        for column, (image, is_correct) in enumerate(zip(images, correct)):
            axes = figure.add_axes(inches_to_rect(grid_left + column * CELL_IN + 0.05,
                                                  bottom + 0.05, CELL_IN - 0.1, CELL_IN - 0.1))
            axes.imshow(np.asarray(image, np.uint8), interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set_color("tab:green" if is_correct else "tab:red")
                spine.set_linewidth(3)
            if row == 0:
                axes.set_title(f"top {column + 1}", fontsize=9)
        figure.text((grid_left - 0.1) / width_in, (bottom + CELL_IN / 2) / height_in,
                    textwrap.fill(query, 24), ha="right", va="center", fontsize=9)
    figure.text((grid_left + k * CELL_IN / 2) / width_in, 1 - 0.25 / height_in,
                "text → image retrieval (green: correct, red: wrong)", ha="center",
                va="center", fontsize=10)
    figure.savefig(path, dpi=DPI, format="png")
