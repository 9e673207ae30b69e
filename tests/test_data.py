"""Tests of mmjax.data: the synthetic world, the tokenizer and the grain pipelines.

Expectations come from outside the code under test where possible: captions are
parsed here word by word, colours are checked against textbook RGB values,
positions against the image thirds, shapes against their geometric fill ratio.
"""
import itertools

import grain
import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, processors

from mmjax.data import pipeline, synthetic
from mmjax.data.tokenizers import Tokenizer

SEED = 7
SHAPE_WORDS = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOUR_WORDS = ("red", "yellow", "green", "cyan", "blue", "purple", "pink")
SIZE_WORDS = ("small", "medium", "large")
REFERENCE_RGB = {"red": (255, 0, 0), "yellow": (255, 255, 0), "green": (0, 200, 0),
                 "cyan": (0, 255, 255), "blue": (0, 0, 255), "purple": (128, 0, 128),
                 "pink": (255, 105, 180)}


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.for_synthetic(context_length=16)


@pytest.fixture(scope="module")
def train_records():
    source = synthetic.SyntheticSource("train", SEED)
    return [source[i] for i in range(3000)]


def parse_caption(caption: str) -> np.ndarray:
    """The (shape, colour, size, position) ids a caption names, −1 where it names none."""
    words = caption.lower().replace(".", " ").split()
    def find(vocabulary):
        found = [vocabulary.index(w) for w in words if w in vocabulary]
        assert len(found) <= 1, caption
        return found[0] if found else -1
    position = -1
    if {"top", "bottom", "left", "right", "center"} & set(words):
        row = 0 if "top" in words else 2 if "bottom" in words else 1
        column = 0 if "left" in words else 2 if "right" in words else 1
        position = 3 * row + column
    return np.array([find(SHAPE_WORDS), find(COLOUR_WORDS), find(SIZE_WORDS), position])


def shape_pixels(image: np.ndarray) -> np.ndarray:
    """bool `[S, S]`: strongly saturated pixels (the backgrounds are near grey)."""
    image = image.astype(np.int32)
    return image.max(-1) - image.min(-1) > 80


# --- the synthetic world -------------------------------------------------------------------

def test_attribute_names_match_the_documented_order():
    assert synthetic.SHAPES == SHAPE_WORDS and synthetic.COLOURS == COLOUR_WORDS
    assert synthetic.SIZES == SIZE_WORDS and synthetic.GREY == 7
    assert len(set(synthetic.CLASSNAMES)) == 42
    for shape, colour in itertools.product(range(6), range(7)):
        assert synthetic.CLASSNAMES[synthetic.class_id(shape, colour)] == (
            f"{COLOUR_WORDS[colour]} {SHAPE_WORDS[shape]}")


def test_records_depend_only_on_seed_split_and_index():
    a, b = synthetic.SyntheticSource("train", SEED), synthetic.SyntheticSource("train", SEED)
    other = synthetic.SyntheticSource("train", SEED + 1)
    for i in (0, 5, 123_456):
        ra, rb = a[i], b[i]
        assert ra["caption"] == rb["caption"]
        np.testing.assert_array_equal(ra["image_labels"], rb["image_labels"])
        np.testing.assert_array_equal(synthetic.render_image(ra), synthetic.render_image(rb))
    # Any order of access gives the same record.
    assert [a[i]["caption"] for i in (3, 2, 1)] == [b[i]["caption"] for i in (1, 2, 3)][::-1]
    differing = sum(a[i]["caption"] != other[i]["caption"] for i in range(20))
    assert differing >= 15
    images = [synthetic.render_image(s[0]) for s in (a, other)]
    assert not np.array_equal(*images)


def test_heldout_pairs_never_appear_in_training(train_records):
    heldout = synthetic.heldout_shapes(SEED)
    assert heldout.shape == (7,) and set(heldout) == set(range(6))
    assert not np.array_equal(heldout, synthetic.heldout_shapes(SEED + 1))
    pairs = {(int(r["image_labels"][0]), int(r["image_labels"][1])) for r in train_records}
    heldout_pairs = {(int(heldout[c]), c) for c in range(7)}
    assert not pairs & heldout_pairs
    trained_pairs = {(s, c) for s in range(6) for c in range(7)} - heldout_pairs
    assert trained_pairs <= pairs  # every other coloured pair is trained
    assert {(s, 7) for s in range(6)} <= pairs  # and every grey shape

    source = synthetic.SyntheticSource("heldout", SEED, 200)
    heldout_seen = {(int(source[i]["image_labels"][0]), int(source[i]["image_labels"][1]))
                    for i in range(len(source))}
    assert heldout_seen == heldout_pairs


def test_train_caption_statistics(train_records):
    labels = np.stack([r["image_labels"] for r in train_records])
    text_labels = np.stack([r["text_labels"] for r in train_records])
    grey = labels[:, 1] == synthetic.GREY
    assert 0.2 < grey.mean() < 0.3
    nameable = np.ones_like(text_labels, bool)
    nameable[grey, 1] = False
    full = ((text_labels >= 0) == nameable).all(1)
    assert 0.5 <= full.mean() < 0.6
    assert (text_labels >= 0).any(1).all()  # no caption names nothing
    assert len({r["caption"].split(" a ")[0] for r in train_records}) >= 4  # several templates


def test_text_labels_are_what_the_caption_says(train_records):
    for record in train_records:
        parsed = parse_caption(record["caption"])
        np.testing.assert_array_equal(parsed, record["text_labels"], err_msg=record["caption"])
        named = parsed >= 0
        np.testing.assert_array_equal(record["image_labels"][named], parsed[named])
        if record["image_labels"][1] == synthetic.GREY:
            assert not set(record["caption"].split()) & set(COLOUR_WORDS)


def test_retrieval_captions_are_distinct_full_and_unlike_train():
    source = synthetic.SyntheticSource("retrieval", SEED)
    records = [source[i] for i in range(len(source))]
    assert len(records) == 1000
    captions = [r["caption"] for r in records]
    assert len(set(captions)) == len(captions)
    for record in records:
        np.testing.assert_array_equal(parse_caption(record["caption"]), record["image_labels"])
    assert len({tuple(r["image_labels"]) for r in records}) == 1000
    train_image = synthetic.render_image(synthetic.SyntheticSource("train", SEED)[0])
    assert not np.array_equal(synthetic.render_image(records[0]), train_image)


def test_rendered_shape_is_where_and_what_the_labels_say(train_records):
    counts = {size: [] for size in range(3)}
    for record in train_records[:300]:
        image = synthetic.render_image(record, image_size=32)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        shape, colour, size, position = record["image_labels"]
        if colour == synthetic.GREY:
            assert shape_pixels(image).sum() == 0
            continue
        mask = shape_pixels(image)
        ys, xs = np.nonzero(mask)
        row, column = int(ys.mean() // (32 / 3)), int(xs.mean() // (32 / 3))
        assert 3 * row + column == position, record["caption"]
        median_rgb = np.median(image[mask], axis=0)
        nearest = min(REFERENCE_RGB, key=lambda n: np.sum((median_rgb - REFERENCE_RGB[n]) ** 2))
        assert nearest == COLOUR_WORDS[colour], (record["caption"], median_rgb)
        counts[int(size)].append(mask.sum())
    means = [np.mean(counts[size]) for size in range(3)]
    assert means[0] < means[1] < means[2]


@pytest.mark.parametrize("shape, low, high", [
    ("square", 0.85, 1.0), ("circle", 0.7, 0.85), ("diamond", 0.4, 0.6),
    ("triangle", 0.4, 0.6), ("cross", 0.45, 0.65), ("star", 0.3, 0.55)])
def test_shapes_fill_their_bounding_box_as_geometry_says(shape, low, high):
    """Large shapes at 64 px: fraction of the bounding box that the shape covers."""
    record = synthetic.SyntheticSource("train", SEED)[0]
    record["image_labels"] = np.array([SHAPE_WORDS.index(shape), 0, 2, 4], np.int32)
    ys, xs = np.nonzero(shape_pixels(synthetic.render_image(record, image_size=64)))
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert low < len(ys) / box < high


def reference_render_image(record: dict, image_size: int) -> np.ndarray:
    """The demo images drawn one at a time, the shape sampled only inside its bounding box (the renderer before it
    drew whole batches): what `render_images` must still give, pixel for pixel."""
    shape, colour, size, position = (int(v) for v in record["image_labels"])
    rng = np.random.default_rng([*record["key"].tolist(), 1])
    u = rng.random(16, dtype=np.float32)
    row, column = divmod(position, 3)
    centre_y = (synthetic.CELL_CENTRES[row] + 0.08 * u[0] - 0.04) * image_size
    centre_x = (synthetic.CELL_CENTRES[column] + 0.08 * u[1] - 0.04) * image_size
    radius = synthetic.SIZE_RADII[size] * image_size * (0.92 + 0.16 * u[2])
    extent = 1.2 * radius
    top, left = max(int(centre_y - extent), 0), max(int(centre_x - extent), 0)
    bottom, right = min(int(np.ceil(centre_y + extent)), image_size), min(int(np.ceil(centre_x + extent)), image_size)
    coords = (np.arange(image_size * 2, dtype=np.float32) + 0.5) / 2
    dy = (coords[top * 2:bottom * 2, None] - centre_y) / radius
    dx = (coords[None, left * 2:right * 2] - centre_x) / radius
    alpha = np.zeros((image_size, image_size), np.float32)
    alpha[top:bottom, left:right] = synthetic._shape_mask(shape, dy, dx).reshape(
        bottom - top, 2, right - left, 2).mean((1, 3), dtype=np.float32)
    b = u[6:]
    pixel_centres = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
    y, x = pixel_centres[:, None], pixel_centres[None, :]
    gradient = np.cos(2 * np.pi * b[0]) * y + np.sin(2 * np.pi * b[0]) * x
    texture = np.sin(2 * np.pi * ((1 + 3 * b[2]) * y + (1 + 3 * b[3]) * x) + 2 * np.pi * b[1])
    background = (15 + 55 * b[4] + 40 * b[5] * gradient + 8 * b[6] * texture)[..., None] + (16 * b[7:10] - 8)
    image = background * (1 - alpha[..., None]) + (synthetic.PALETTE[colour] + 24 * u[3:6] - 12) * alpha[..., None]
    image += 4 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("image_size", [32, 64, 13])
def test_a_batch_is_drawn_as_each_image_alone_would_be(image_size):
    """Every split, shape, colour, size and position; a batch whose largest shape is small samples a small window."""
    records = [synthetic.SyntheticSource(split, SEED, 300)[i] for split in ("train", "heldout", "retrieval")
               for i in range(300)]
    small = [r for r in records if r["image_labels"][2] == 0][:20]
    for batch in (records, small, records[:1]):
        images = synthetic.render_images(np.stack([r["image_labels"] for r in batch]),
                                         np.stack([r["key"] for r in batch]), image_size)
        np.testing.assert_array_equal(images, np.stack([reference_render_image(r, image_size) for r in batch]))
    assert synthetic.render_images(np.zeros((0, 4), np.int32), np.zeros((0, 3), np.int64), image_size).shape == (
        0, image_size, image_size, 3)


# --- tokenizer -----------------------------------------------------------------------------

def test_tokenizer_layout(tokenizer):
    captions = ["a photo of a small red circle at the top left.", "a star", "a b c d " * 10]
    ids = tokenizer(captions)
    assert ids.shape == (3, 16) and ids.dtype == np.int32
    assert tokenizer.pad_id == 0 and tokenizer.eot_id == tokenizer.vocab_size - 1
    assert ids.max() == tokenizer.eot_id
    for row, caption in zip(ids, captions):
        num_words = len(caption.replace(".", " .").split())
        length = min(num_words + 2, 16)
        assert row[length - 1] == tokenizer.eot_id  # right after the last (kept) word
        assert np.argmax(row) == length - 1
        assert (row[length:] == 0).all() and (row[:length] != 0).all()
        assert row[0] not in (tokenizer.eot_id, 0)
    assert tokenizer(["A RED Circle"]).tolist() == tokenizer(["a red circle"]).tolist()


def test_every_world_word_is_in_vocabulary(tokenizer):
    unk_id = tokenizer.backend.token_to_id("<unk>")
    texts = list(synthetic.CLASSNAMES) + [t.format(c) for t in synthetic.PROMPT_TEMPLATES
                                          for c in synthetic.CLASSNAMES]
    source = synthetic.SyntheticSource("train", SEED)
    texts += [source[i]["caption"] for i in range(300)]
    ids = tokenizer(texts)
    assert not (ids == unk_id).any()
    assert (ids[:, -1] == tokenizer.pad_id).all()  # nothing is truncated at 16 tokens
    assert (tokenizer(["a zebra"]) == unk_id).any()


def test_tokenizer_save_load_round_trip(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = Tokenizer.load(path)
    texts = ["a photo of a large blue star in the center", "there is a shape."]
    np.testing.assert_array_equal(loaded(texts), tokenizer(texts))
    assert (loaded.context_length, loaded.eot_id, loaded.pad_id, loaded.vocab_size) == (
        tokenizer.context_length, tokenizer.eot_id, tokenizer.pad_id, tokenizer.vocab_size)


def test_unknown_fraction_counts_unknown_words_among_the_words_only():
    words = Tokenizer.from_corpus(["red circle"], context_length=6)
    # "red dog": red + 1 unknown; "blue cat circle bird": 3 unknown + circle; "": no word at all
    assert words.unknown_fraction(words(["red dog", "blue cat circle bird", ""])) == pytest.approx(4 / 6)
    assert words.unknown_fraction(words(["red circle", ""])) == 0

    bert_like = tokenizers.Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "hello": 3, "[SEP]": 4},
                                                      unk_token="[UNK]"))
    bert_like.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    bert_like.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bert_like.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 4)])
    bert_like.enable_padding(pad_id=0, pad_token="[PAD]", length=6)
    other = Tokenizer(bert_like, eot_token="[SEP]")
    assert other(["hello world"]).tolist() == [[2, 3, 1, 4, 0, 0]]
    assert other.unknown_fraction(other(["hello world", "hello hello"])) == pytest.approx(1 / 4)

    # transformers' CLIP files make end-of-text the unknown token as well: its positions are no unknown words
    clip_like = tokenizers.Tokenizer(models.WordLevel({"[PAD]": 0, "[CLS]": 1, "hello": 2, "[SEP]": 3},
                                                      unk_token="[SEP]"))
    clip_like.add_special_tokens(["[PAD]", "[CLS]", "[SEP]"])
    clip_like.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    clip_like.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 1), ("[SEP]", 3)])
    clip_like.enable_padding(pad_id=3, pad_token="[SEP]", length=6)
    shared = Tokenizer(clip_like, eot_token="[SEP]")
    assert shared.unk_id == shared.eot_id == shared.pad_id == 3
    assert shared.unknown_fraction(shared(["hello hello", "hello"])) == 0  # was 7/10: every end and pad


# --- pipelines -----------------------------------------------------------------------------

def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_batches_are_rendered_shuffled_source_records(tokenizer):
    dataset = pipeline.train_dataset(SEED, 8, 32, tokenizer, process_index=0, process_count=1,
                                     num_examples=50)
    batches = take(iter(dataset), 7)  # 56 examples: crosses into the second epoch
    expected = {"image": (8, 32, 32, 3, np.uint8), "text": (8, 16, np.int32),
                "image_labels": (8, 4, np.int32), "text_labels": (8, 4, np.int32)}
    for batch in batches:
        assert {k: (*v.shape, v.dtype) for k, v in batch.items()} == expected
    source = synthetic.SyntheticSource("train", SEED, 50)
    order = list(grain.MapDataset.range(50).shuffle(seed=SEED).repeat()[:56])
    assert sorted(order[:50]) == list(range(50)) and order[50:] != order[:6]
    for position, index in enumerate(order):
        record = source[index]
        batch, row = batches[position // 8], position % 8
        np.testing.assert_array_equal(batch["image"][row], synthetic.render_image(record))
        np.testing.assert_array_equal(batch["text"][row], tokenizer([record["caption"]])[0])
        np.testing.assert_array_equal(batch["text_labels"][row], record["text_labels"])


def test_resume_from_state_continues_the_stream(tokenizer):
    dataset = pipeline.train_dataset(SEED, 16, 32, tokenizer, process_index=0, process_count=1)
    iterator = iter(dataset)
    take(iterator, 3)
    state = iterator.get_state()
    expected = take(iterator, 3)
    resumed = iter(dataset)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 3), expected)


def test_process_shards_stacked_in_process_order_are_the_single_process_batch(tokenizer):
    """Row for row, not only as a set: FLAVA draws its masks and hard negatives per row of the global batch."""
    def stream(index, count):
        dataset = pipeline.train_dataset(SEED, 16, 32, tokenizer, process_index=index,
                                         process_count=count)
        return take(iter(dataset), 2)
    single, first, second = stream(0, 1), stream(0, 2), stream(1, 2)
    for whole, a, b in zip(single, first, second):
        assert a["image"].shape[0] == b["image"].shape[0] == 8
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), whole[key], err_msg=key)


def test_worker_processes_give_the_same_resumable_stream(tokenizer):
    def dataset(num_workers):
        return pipeline.train_dataset(SEED, 8, 32, tokenizer, num_workers=num_workers,
                                      process_index=0, process_count=1)
    reference = take(iter(dataset(0)), 4)
    iterator = iter(dataset(2))
    try:
        assert_batches_equal(take(iterator, 2), reference[:2])
        state = iterator.get_state()
    finally:
        iterator.close()
    resumed = iter(dataset(2))
    try:
        resumed.set_state(state)
        assert_batches_equal(take(resumed, 2), reference[2:])
    finally:
        resumed.close()


def test_orbax_checkpoint_of_the_iterator(tokenizer, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    dataset = pipeline.train_dataset(SEED, 8, 32, tokenizer, process_index=0, process_count=1)
    iterator = iter(dataset)
    take(iterator, 2)
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
        expected = take(iterator, 2)
        fresh = iter(dataset)
        manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_batches_equal(take(fresh, 2), expected)


@pytest.mark.parametrize("split", ["heldout", "retrieval"])
def test_eval_dataset_is_finite_ordered_and_complete(split, tokenizer):
    dataset = pipeline.eval_dataset(split, SEED, 32, 32, tokenizer, num_examples=70)
    batches = list(dataset)
    assert len(dataset) == len(batches) == 3
    assert [b["image"].shape[0] for b in batches] == [32, 32, 6]
    source = synthetic.SyntheticSource(split, SEED, 70)
    labels = np.concatenate([b["image_labels"] for b in batches])
    np.testing.assert_array_equal(labels, np.stack([source[i]["image_labels"]
                                                    for i in range(70)]))
    np.testing.assert_array_equal(batches[2]["image"][5], synthetic.render_image(source[69]))
    np.testing.assert_array_equal(batches[1]["text"][0], tokenizer([source[32]["caption"]])[0])
