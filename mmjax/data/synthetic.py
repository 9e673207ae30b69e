"""A procedurally generated image–caption world for the embedded demo.

Each image shows one shape on a dark, low-contrast background. An example is
labelled by four attributes, in this order (`ATTRIBUTES`):

  shape     `SHAPES`     6   circle, square, triangle, diamond, cross, star
  colour    `COLOURS`    7   (+ id `GREY` = 7: a grey shape; captions never name it)
  size      `SIZES`      3   small, medium, large
  position  `POSITIONS`  9   row-major 3×3 grid, id = 3 * row + column

One (shape, colour) pair per colour is held out of training (`heldout_shapes`);
the `heldout` split shows only those pairs, for zero-shot classification over
the 42 `CLASSNAMES` (class id = `class_id(shape, colour)` = colour * 6 + shape).
The `retrieval` split shows distinct (shape, colour, size, position) combinations,
one full caption each, so its captions are pairwise distinct.

Everything about example `index` of a split is a function of
(seed, split, index) only, so any worker can produce any example. Reading a
source is cheap (labels + caption); `render_images` draws the pixels of a batch.
"""
from __future__ import annotations

import itertools

import numpy as np

ATTRIBUTES = ("shape", "colour", "size", "position")
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = ("red", "yellow", "green", "cyan", "blue", "purple", "pink")
GREY = len(COLOURS)
SIZES = ("small", "medium", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
SPLITS = ("train", "heldout", "retrieval")
NUM_COMBINATIONS = len(SHAPES) * len(COLOURS) * len(SIZES) * len(POSITIONS)  # 1 134 distinct full captions
DEFAULT_SIZES = {"train": 2**20, "heldout": 1000, "retrieval": 1000}  # examples per split

# RGB of each colour id; the last row is GREY.
PALETTE = np.array([(225, 35, 35), (235, 220, 40), (40, 185, 60), (40, 215, 225),
                    (45, 85, 235), (135, 45, 200), (255, 125, 190), (140, 140, 140)],
                   np.float32)
SIZE_RADII = (0.11, 0.15, 0.19)  # half-extent as a fraction of the image side
CELL_CENTRES = (0.2, 0.5, 0.8)  # row / column centre as a fraction of the side

CLASSNAMES = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
PROMPT_TEMPLATES = ("a {}.", "a photo of a {}.", "an image of a {}.", "a picture of a {}.")
CAPTION_TEMPLATES = ("{}", "a photo of {}", "an image of {}", "a picture of {}",
                     "there is {}")
GENERIC_NOUN = "shape"  # stands in for the shape when a caption does not name it


def class_id(shape: int, colour: int) -> int:
    """Zero-shot class of a (shape, colour) pair: index into `CLASSNAMES`."""
    return colour * len(SHAPES) + shape


def heldout_shapes(seed: int) -> np.ndarray:
    """The held-out shape of each colour: int32 `[7]`; every shape is held out at least once."""
    rng = np.random.default_rng([seed, len(SPLITS)])
    shapes = np.concatenate([rng.permutation(len(SHAPES)), rng.integers(len(SHAPES), size=1)])
    return rng.permutation(shapes).astype(np.int32)


def position_phrase(position: int) -> str:
    """'at the top left', 'on the left', 'in the center', …"""
    name = POSITIONS[position]
    preposition = {"center": "in", "left": "on", "right": "on"}.get(name, "at")
    return f"{preposition} the {name}"


def caption(text_labels: np.ndarray, template: int = 0, period: bool = False) -> str:
    """The caption naming the attributes of `text_labels` (int `[4]`, −1 = unnamed).

    E.g. (0, 0, 0, 0) → 'a small red circle at the top left';
    (−1, 0, −1, −1) → 'a red shape'.
    """
    shape, colour, size, position = (int(v) for v in text_labels)
    words = ["a"]
    if size >= 0:
        words.append(SIZES[size])
    if colour >= 0:
        words.append(COLOURS[colour])
    words.append(SHAPES[shape] if shape >= 0 else GENERIC_NOUN)
    if position >= 0:
        words.append(position_phrase(position))
    return CAPTION_TEMPLATES[template].format(" ".join(words)) + ("." if period else "")


def corpus() -> list[str]:
    """Every text a tokenizer for this world must cover (captions, prompts, class names)."""
    texts = [template.format("") for template in CAPTION_TEMPLATES + PROMPT_TEMPLATES]
    texts += [*SHAPES, *COLOURS, *SIZES, GENERIC_NOUN, *CLASSNAMES]
    texts += [position_phrase(p) for p in range(len(POSITIONS))]
    return texts


class SyntheticSource:
    """A grain random-access source of one split: index → labels and caption.

    Records are dicts with
      `caption`       str
      `image_labels`  int32 `[4]` (shape, colour, size, position) of the image; colour 7 = grey
      `text_labels`   int32 `[4]` the attributes the caption names, −1 where it names none
      `key`           int64 `[3]` (seed, split id, index): the seed of `render_images`
    """

    def __init__(self, split: str, seed: int, num_examples: int | None = None,
                 grey_fraction: float = 0.25, full_caption_fraction: float = 0.55):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        num_examples = DEFAULT_SIZES[split] if num_examples is None else num_examples
        if split == "retrieval" and num_examples > NUM_COMBINATIONS:
            raise ValueError(f"retrieval has at most {NUM_COMBINATIONS} distinct captions")
        self.split, self.seed, self.num_examples = split, seed, num_examples
        self.split_id = SPLITS.index(split)
        self.grey_fraction, self.full_caption_fraction = grey_fraction, full_caption_fraction
        self.heldout = heldout_shapes(seed)
        self._trained_shapes = np.array([np.delete(np.arange(len(SHAPES)), shape)
                                         for shape in self.heldout])  # [7, 5]
        self._combinations = np.random.default_rng([seed, self.split_id]).permutation(
            NUM_COMBINATIONS)[:num_examples] if split == "retrieval" else None

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        rng = np.random.default_rng([self.seed, self.split_id, index, 0])
        labels = self._image_labels(rng, index)
        named = self._named_attributes(rng, labels) if self.split == "train" else np.ones(4, bool)
        text_labels = np.where(named, labels, -1).astype(np.int32)
        template = int(rng.integers(len(CAPTION_TEMPLATES)))
        period = self.split == "train" and bool(rng.integers(2))
        return {"caption": caption(text_labels, template, period),
                "image_labels": labels,
                "text_labels": text_labels,
                "key": np.array([self.seed, self.split_id, index], np.int64)}

    def _image_labels(self, rng: np.random.Generator, index: int) -> np.ndarray:
        """int32 `[4]`: train avoids the held-out pairs, heldout shows only them."""
        if self.split == "retrieval":
            dims = (len(SHAPES), len(COLOURS), len(SIZES), len(POSITIONS))
            return np.array(np.unravel_index(self._combinations[index], dims), np.int32)
        if self.split == "train" and rng.random() < self.grey_fraction:
            shape, colour = rng.integers(len(SHAPES)), GREY
        else:
            colour = rng.integers(len(COLOURS))
            shape = (self.heldout[colour] if self.split == "heldout" else
                     self._trained_shapes[colour, rng.integers(len(SHAPES) - 1)])
        return np.array([shape, colour, rng.integers(len(SIZES)),
                         rng.integers(len(POSITIONS))], np.int32)

    def _named_attributes(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        """bool `[4]`: all nameable attributes, or a random non-empty proper subset of them."""
        is_grey = int(labels[1] == GREY)
        if rng.random() < self.full_caption_fraction:
            return _NAMEABLE[is_grey]
        subsets = _PARTIAL_SUBSETS[is_grey]
        return subsets[rng.integers(len(subsets))]


def _partial_subsets(nameable: np.ndarray) -> np.ndarray:
    """bool `[n, 4]`: the non-empty proper subsets of `nameable` (bool `[4]`)."""
    subsets = np.array(list(itertools.product((False, True), repeat=4)))
    keep = subsets.any(1) & ~(subsets & ~nameable).any(1) & (subsets != nameable).any(1)
    return subsets[keep]


# Indexed by "is grey": a grey image's caption never names its colour.
_NAMEABLE = (np.array([True, True, True, True]), np.array([True, False, True, True]))
_PARTIAL_SUBSETS = tuple(_partial_subsets(nameable) for nameable in _NAMEABLE)


def _shape_mask(shape: int, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """bool mask of `SHAPES[shape]` on coordinates in radius units (y points down).

    `dy` `[h, 1]` and `dx` `[1, w]` broadcast to the mask `[h, w]`; every shape
    fits in the square of half-side 1.15.
    """
    ady, adx = np.abs(dy), np.abs(dx)
    name = SHAPES[shape]
    if name == "circle":
        return dy * dy + dx * dx <= 1.0
    if name == "square":
        return np.maximum(ady, adx) <= 0.85
    if name == "triangle":
        return (dy <= 0.8) & (adx <= (dy + 1.0) / 1.8)
    if name == "diamond":
        return ady + adx <= 1.15
    if name == "cross":
        return ((adx <= 0.33) & (ady <= 1.0)) | ((ady <= 0.33) & (adx <= 1.0))
    # star: five points, the first pointing up; radius goes linearly 1.15 → 0.5 → 1.15
    angle = np.arctan2(dx, -dy) % (2 * np.pi / 5) / (2 * np.pi / 5)
    return np.hypot(dy, dx) <= 0.5 + 0.65 * np.abs(2 * angle - 1)


def _coverage(shapes: np.ndarray, centre_y: np.ndarray, centre_x: np.ndarray, radius: np.ndarray,
              image_size: int, supersample: int) -> np.ndarray:
    """Fraction of each pixel that shape `SHAPES[shapes[i]]` at `centre_y[i], centre_x[i]` (pixels) of half-extent
    `radius[i]` covers: float32 `[B, S, S]`, sampled `supersample`² times per pixel.

    Every shape fits in the square of half-side 1.15 radii, so only a square window around each centre is
    sampled, as wide as the batch's largest shape needs (the shape's bounding box, cut at the image's edges, lies
    inside it)."""
    k, extent = supersample, 1.2 * radius
    window = min(int(np.ceil(2 * extent.max())) + 2, image_size)
    top = np.minimum(np.maximum((centre_y - extent).astype(np.int64), 0), image_size - window)  # [B]
    left = np.minimum(np.maximum((centre_x - extent).astype(np.int64), 0), image_size - window)
    coords = (np.arange(image_size * k, dtype=np.float32) + 0.5) / k
    samples = np.arange(window * k)
    dy = (coords[top[:, None] * k + samples][:, :, None] - centre_y[:, None, None]) / radius[:, None, None]
    dx = (coords[left[:, None] * k + samples][:, None, :] - centre_x[:, None, None]) / radius[:, None, None]
    mask = np.zeros((len(shapes), window * k, window * k), bool)
    for shape in np.unique(shapes):
        chosen = shapes == shape
        mask[chosen] = _shape_mask(int(shape), dy[chosen], dx[chosen])
    coverage = np.zeros((len(shapes), image_size, image_size), np.float32)
    pixels = np.arange(window)
    coverage[np.arange(len(shapes))[:, None, None], (top[:, None] + pixels)[:, :, None],
             (left[:, None] + pixels)[:, None, :]] = mask.reshape(-1, window, k, window, k).mean((2, 4), dtype=np.float32)
    return coverage


def _background(u: np.ndarray, image_size: int) -> np.ndarray:
    """Dark tinted linear gradient plus a faint sinusoidal texture: float32 `[B, S, S, 3]`.

    `u`: float32 `[B, 10]` uniform [0, 1) numbers; row `i` chooses image `i`'s background.
    """
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
    y, x = coords[None, :, None], coords[None, None, :]
    u = u[:, :, None, None]  # [B, 10, 1, 1]: each number broadcasts over its image
    direction, phase = 2 * np.pi * u[:, 0], 2 * np.pi * u[:, 1]
    gradient = np.cos(direction) * y + np.sin(direction) * x
    texture = np.sin(2 * np.pi * ((1 + 3 * u[:, 2]) * y + (1 + 3 * u[:, 3]) * x) + phase)
    luminance = 15 + 55 * u[:, 4] + 40 * u[:, 5] * gradient + 8 * u[:, 6] * texture
    tint = 16 * u[:, 7:10, 0, 0] - 8
    return luminance[..., None] + tint[:, None, None, :]


def render_images(image_labels: np.ndarray, keys: np.ndarray, image_size: int = 32,
                  supersample: int = 2) -> np.ndarray:
    """Draws the images of `SyntheticSource` records (their `image_labels` int `[B, 4]` and `key` int64 `[B, 3]`):
    uint8 `[B, S, S, 3]`.

    The shape gets ± 12 colour jitter, ± 4 % (of the side) position jitter and
    ± 8 % size jitter, is anti-aliased over `supersample`² samples per pixel and
    blended onto `_background`; then Gaussian pixel noise (σ = 4) is added. Each image's
    random numbers come from its own key, so an image does not depend on the batch it is drawn in;
    the arithmetic is done for the whole batch at once.
    """
    if not len(image_labels):
        return np.zeros((0, image_size, image_size, 3), np.uint8)
    shapes, colours, sizes, positions = np.asarray(image_labels, np.int64).T
    generators = [np.random.default_rng([*key.tolist(), 1]) for key in np.asarray(keys)]
    u = np.stack([rng.random(16, dtype=np.float32) for rng in generators])
    noise = np.stack([rng.standard_normal((image_size, image_size, 3), dtype=np.float32) for rng in generators])
    rows, columns = np.divmod(positions, 3)
    # The dtypes of the per-image code (Python numbers met float32 ones), so the pixels are the same to the bit.
    centres = np.asarray(CELL_CENTRES, np.float32)
    centre_y = (centres[rows] + 0.08 * u[:, 0] - 0.04) * image_size
    centre_x = (centres[columns] + 0.08 * u[:, 1] - 0.04) * image_size
    radius = (np.asarray(SIZE_RADII)[sizes] * image_size).astype(np.float32) * (0.92 + 0.16 * u[:, 2])
    alpha = _coverage(shapes, centre_y, centre_x, radius, image_size, supersample)[..., None]
    shape_rgb = (PALETTE[colours] + 24 * u[:, 3:6] - 12)[:, None, None, :]
    image = _background(u[:, 6:], image_size)
    image *= 1 - alpha  # in place: each new [B, S, S, 3] array costs as much as the arithmetic
    image += shape_rgb * alpha
    noise *= 4
    image += noise
    return np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8)


def render_image(record: dict, image_size: int = 32, supersample: int = 2) -> np.ndarray:
    """The image of one `SyntheticSource` record: uint8 `[S, S, 3]` (`render_images` of a batch of one)."""
    return render_images(np.asarray(record["image_labels"])[None], np.asarray(record["key"])[None], image_size,
                         supersample)[0]
