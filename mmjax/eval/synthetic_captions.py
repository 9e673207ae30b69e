"""Captioning on the synthetic world of the embedded demo: do a captioner's words name what its images show?

The images are the `retrieval` split's (the training seed's), drawn by `render_images` as in training. Each
caption is read for the words of each attribute (`synthetic.ATTRIBUTES`): the first shape, colour and size word,
and the first position phrase ("at the top left", "on the left", …). Two numbers per attribute:
`<attribute>_named`, the fraction of captions that name one, and `<attribute>_accuracy`, the fraction of those
that name the image's own (NaN when none names one), whose chance level `chance_<attribute>_accuracy` is one
over the attribute's values. A caption may leave an attribute out, as the training captions do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from mmjax.data import synthetic

CAPTIONING_TASK = "captioning"
_WORDS = {"shape": synthetic.SHAPES, "colour": synthetic.COLOURS, "size": synthetic.SIZES}
VALUES = {"shape": len(synthetic.SHAPES), "colour": len(synthetic.COLOURS), "size": len(synthetic.SIZES),
          "position": len(synthetic.POSITIONS)}
_POSITIONS = [(synthetic.position_phrase(p), p) for p in range(len(synthetic.POSITIONS))]


def named_attributes(caption: str) -> tuple[int, int, int, int]:
    """The (shape, colour, size, position) ids a caption names, −1 where it names none (the first of each)."""
    words = re.findall(r"[a-z]+", caption.lower())
    found = [next((vocabulary.index(w) for w in words if w in vocabulary), -1)
             for vocabulary in (_WORDS["shape"], _WORDS["colour"], _WORDS["size"])]
    text = " ".join(words)
    # the first phrase, the longest of those starting there ("at the top left", not "at the top")
    starts = [(match.start(), -len(phrase), position) for phrase, position in _POSITIONS
              for match in [re.search(rf"\b{phrase}\b", text)] if match]
    return (*found, min(starts)[2] if starts else -1)


def caption_metrics(captions: Sequence[str], image_labels: np.ndarray) -> dict[str, float]:
    """`<attribute>_named` and `<attribute>_accuracy` of `captions` for images with labels int `[N, 4]`."""
    named = np.array([named_attributes(caption) for caption in captions]).reshape(-1, 4)
    metrics = {}
    for column, attribute in enumerate(synthetic.ATTRIBUTES):
        said = named[:, column] >= 0
        metrics[f"{attribute}_named"] = float(said.mean())
        correct = named[said, column] == np.asarray(image_labels)[said, column]
        metrics[f"{attribute}_accuracy"] = float(correct.mean()) if said.any() else float("nan")
        metrics[f"chance_{attribute}_accuracy"] = 1 / VALUES[attribute]
    return metrics


def evaluate_synthetic_captions(caption_images: Callable[[np.ndarray], list[str]], *, seed: int, image_size: int,
                                num_images: int = synthetic.DEFAULT_SIZES["retrieval"]) -> dict[str, float]:
    """`caption_metrics` of `caption_images(uint8 [N, S, S, 3]) -> N captions` on the first `num_images` images
    of the `retrieval` split (each a distinct combination of the attributes), plus `num_images`."""
    source = synthetic.SyntheticSource("retrieval", seed, num_images)
    records = [source[index] for index in range(len(source))]
    labels = np.stack([record["image_labels"] for record in records])
    images = synthetic.render_images(labels, np.stack([record["key"] for record in records]), image_size)
    return caption_metrics(caption_images(images), labels) | {"num_images": num_images}
