"""Embedding search, index files, image loading, free-label classification, and the CLI end to end."""

import json
import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from mmjax.eval.classify import label_probabilities, model_label_probabilities
from mmjax.eval.contact_sheet import write_contact_sheet, write_search_sheet
from mmjax.eval.images import list_images, load_images
from mmjax.eval.search import Index, format_hits, load_index, save_index, search
from mmjax.eval.text_files import read_text_lines
from mmjax.train.workdir import load_trained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CONFIG = os.path.join(ROOT, "configs", "clip_tiny.py") + ":test"


def _normalised(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- search ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 7, 50])
def test_search_equals_naive_argsort_of_dense_cosine(k):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(37, 8))
    index = Index(base * rng.uniform(0.5, 3, size=(37, 1)), [f"id{i}" for i in range(37)], "image")
    queries = rng.normal(size=(5, 8)) * 4
    indices, scores = search(index, queries, k, block_size=8)  # several candidate and query blocks
    dense = _normalised(queries) @ _normalised(base).T
    expected = np.argsort(-dense, axis=1, kind="stable")[:, :min(k, 37)]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(dense, expected, axis=1), atol=1e-5)
    assert indices.shape == scores.shape == (5, min(k, 37))


def test_search_ties_rank_the_lower_index_first_and_dimension_mismatch_is_one_line():
    index = Index(np.array([[1.0, 0], [0, 1], [2.0, 0], [1, 0]]), ["a", "b", "c", "d"], "text")
    indices, scores = search(index, np.array([1.0, 0]), 3)
    np.testing.assert_array_equal(indices, [[0, 2, 3]])
    np.testing.assert_allclose(scores, [[1, 1, 1]], atol=1e-6)
    with pytest.raises(ValueError, match="dimension 3 but the index has 2"):
        search(index, np.ones((1, 3)), 1)


# --- index files -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extension", [".safetensors", ".npz"])
def test_index_round_trip(tmp_path, extension):
    rng = np.random.default_rng(1)
    ids = ["cat.jpg", "sub/dög ü.png", "a \"quoted\", text\twith tab", "x" * 300]
    index = Index(rng.normal(size=(4, 6)), ids, "image", "/runs/demo", "/data/images")
    path = str(tmp_path / f"index{extension}")
    save_index(path, index)
    loaded = load_index(path)
    assert os.listdir(tmp_path) == [f"index{extension}"]  # no temporary left, no extension appended
    assert loaded.ids == ids and (loaded.modality, loaded.model, loaded.root) == ("image", "/runs/demo", "/data/images")
    assert loaded.embeddings.dtype == np.float32
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    np.testing.assert_allclose(np.linalg.norm(loaded.embeddings, axis=1), 1, atol=1e-6)


def test_ids_too_large_for_a_safetensors_header_are_one_line_before_writing(tmp_path):
    embeddings = np.ones((1, 2), np.float32)
    # 990 000 ids of 94 characters: 99 MB in the header, which safetensors (100 MB at most) writes
    fits = Index(np.broadcast_to(embeddings, (990_000, 2)), ["x" * 94] * 990_000, "text", "m")
    save_index(str(tmp_path / "fits.safetensors"), fits)
    assert len(load_index(str(tmp_path / "fits.safetensors")).ids) == 990_000
    # 1 000 000 of 95: 99 MB as JSON, but 101 MB in the header, which holds the JSON as an escaped string;
    # safetensors refuses it after the embedding ("header too large")
    too_many = Index(np.broadcast_to(embeddings, (1_000_000, 2)), ["x" * 95] * 1_000_000, "text", "m")
    with pytest.raises(ValueError, match=r"too\.safetensors: its 1000000 ids take 101 MB, more than a \.safetensors "
                                         r"header holds \(100 MB\); write a \.npz index"):
        save_index(str(tmp_path / "too.safetensors"), too_many)
    assert sorted(os.listdir(tmp_path)) == ["fits.safetensors"]
    save_index(str(tmp_path / "too.npz"), too_many)


@pytest.mark.parametrize("extension", [".safetensors", ".npz"])
def test_truncated_or_missing_index_is_one_line(tmp_path, extension):
    path = str(tmp_path / f"index{extension}")
    save_index(path, Index(np.ones((50, 8)), [str(i) for i in range(50)], "text"))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError) as error:
        load_index(path)
    assert str(error.value).startswith(f"cannot read index {path}") and "\n" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_index(str(tmp_path / f"missing{extension}"))
    with pytest.raises(ValueError, match=r"must end in \.safetensors or \.npz"):
        load_index(str(tmp_path / "index.bin"))


# --- classification probabilities --------------------------------------------------------------------------------

def test_clip_probabilities_are_a_softmax_over_clamped_scaled_cosines():
    rng = np.random.default_rng(2)
    images, labels = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    cos = _normalised(images) @ _normalised(labels).T
    for logit_scale in (np.log(1 / 0.07), np.log(500.0)):  # the second is clamped to 100
        logits = min(np.exp(logit_scale), 100.0) * cos
        expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        probabilities = label_probabilities(images, labels, logit_scale)
        np.testing.assert_allclose(probabilities, expected, rtol=1e-5)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)


def test_siglip_probabilities_are_per_label_sigmoids():
    rng = np.random.default_rng(3)
    images, labels = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    logit_scale, logit_bias = np.log(300.0), -10.0  # SigLIP's scale is not clamped
    logits = 300.0 * (_normalised(images) @ _normalised(labels).T) + logit_bias
    np.testing.assert_allclose(label_probabilities(images, labels, logit_scale, logit_bias),
                               1 / (1 + np.exp(-logits)), rtol=1e-5)


def test_model_parameters_choose_softmax_or_sigmoid():
    rng = np.random.default_rng(4)
    images, labels = rng.normal(size=(2, 5)), rng.normal(size=(3, 5))
    clip = model_label_probabilities({"logit_scale": np.float32(2.0)}, images, labels)
    siglip = model_label_probabilities({"logit_scale": np.float32(2.0), "logit_bias": np.float32(-1.0)}, images, labels)
    np.testing.assert_allclose(clip, label_probabilities(images, labels, 2.0), rtol=1e-6)
    np.testing.assert_allclose(siglip, label_probabilities(images, labels, 2.0, -1.0), rtol=1e-6)
    assert not np.allclose(siglip.sum(axis=1), 1)


# --- image files -------------------------------------------------------------------------------------------------

def test_load_images_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    # 40 wide × 20 high: columns 0-9 red, 10-29 green, 30-39 blue. Shorter side 20 → size 10 halves it to 20 × 10;
    # the centre 10 × 10 is columns 5-14 of the half-size image = the green band.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10, 0] = pixels[:, 10:30, 1] = pixels[:, 30:, 2] = 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    Image.fromarray(pixels.transpose(1, 0, 2)).save(tmp_path / "tall.bmp")  # 20 wide × 40 high: stripes as rows
    (tmp_path / "notes.txt").write_text("not an image")
    paths = list_images(tmp_path)
    images, ids = load_images(paths, 10, root=str(tmp_path))
    assert ids == ["tall.bmp", "wide.png"] and images.shape == (2, 10, 10, 3) and images.dtype == np.uint8
    # Bicubic halving blends each band into its neighbours' edge pixels: the interior is pure green, red bleeds
    # in on the first column (row, for the tall image) and blue on the last.
    tall, wide = images[0].transpose(1, 0, 2).astype(int), images[1].astype(int)
    for image in (tall, wide):
        assert np.abs(image[:, 2:8] - [0, 255, 0]).max() <= 2
        assert image[:, 0, 0].min() > 0 == image[:, 0, 2].max() and image[:, 9, 2].min() > 0 == image[:, 9, 0].max()
    halved = np.asarray(Image.fromarray(pixels).resize((20, 10), Image.BICUBIC))
    np.testing.assert_array_equal(images[1], halved[:, 5:15])
    same_size, _ = load_images([tmp_path / "wide.png"], 20)  # no resize: the crop is exactly columns 10-29
    np.testing.assert_array_equal(same_size[0], pixels[:, 10:30])


def test_list_images_is_recursive_sorted_and_by_extension(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ["b/z.JPG", "b/a.webp", "a.jpeg", "c.png", "skip.gif", "b/skip.txt"]:
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="WEBP" if name.endswith("webp") else "PNG")
    assert [os.path.relpath(p, tmp_path) for p in list_images(tmp_path)] == ["a.jpeg", "b/a.webp", "b/z.JPG",
                                                                             "c.png"]
    with pytest.raises(ValueError, match="no image files"):
        list_images(_empty_dir(tmp_path))


def test_list_images_follows_linked_directories_once_and_passes_over_hidden_files(tmp_path):
    """A linked sub-directory was skipped without a word; macOS's `._NAME.jpg` resource files stopped `embed`."""
    (tmp_path / "photos" / "trip").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for name in ["photos/a.png", "photos/trip/b.png", "elsewhere/c.png"]:
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "photos" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    os.symlink(tmp_path / "elsewhere", tmp_path / "photos" / "linked")
    os.symlink(tmp_path / "elsewhere", tmp_path / "photos" / "trip" / "again")  # the same target: listed once
    os.symlink(tmp_path / "photos", tmp_path / "photos" / "trip" / "back")  # a cycle
    os.symlink(tmp_path / "photos" / "trip", tmp_path / "photos" / "+latest")  # inside, sorting before its target
    assert [os.path.relpath(p, tmp_path / "photos") for p in list_images(tmp_path / "photos")] == [
        "a.png", "linked/c.png", "trip/b.png"]


def test_text_files_with_a_byte_order_mark_or_not_utf8_and_ids_with_line_breaks(tmp_path):
    """Notepad's byte-order mark became part of the first text (an exact match ranked fourth); a Latin-1 file
    was an error naming neither file nor line; an id with a line break split a hit over two lines."""
    path = tmp_path / "texts.txt"
    path.write_bytes("a red circle\r\n\r\na blue square\u2028with a line separator\n".encode("utf-8-sig"))
    assert read_text_lines(str(path)) == ["a red circle", "a blue square\u2028with a line separator"]
    path.write_bytes("caf\u00e9\nau lait\n".encode("utf-8") + "cr\u00e8me\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"texts.txt is not UTF-8 \(line 3: invalid continuation byte\)$"):
        read_text_lines(str(path))
    quoted = "'two\\nlines'"  # as Python writes the string: one line
    ordinary = ["plain id", "Screenshot at 10.15.42\u202fAM.png", "\u5199\u771f\u3000\u65c5\u884c.jpg", "tab\tseparated"]
    assert format_hits([1, 0, 2, 3, 4], [0.9, 0.5, 0.4, 0.3, 0.2], [ordinary[0], "two\nlines", *ordinary[1:]]) == [
        f"   1   0.9000  {quoted}", "   2   0.5000  plain id",
        *(f"   {rank}   {score:.4f}  {name}" for rank, score, name in zip((3, 4, 5), (0.4, 0.3, 0.2), ordinary[1:]))]


def _empty_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_corrupt_image_is_one_line_naming_the_file(tmp_path):
    Image.new("RGB", (30, 30), (1, 2, 3)).save(tmp_path / "ok.png")
    truncated = (tmp_path / "ok.png").read_bytes()[:40]
    (tmp_path / "broken.png").write_bytes(truncated)
    (tmp_path / "text.jpg").write_bytes(b"plain text")
    for name in ["broken.png", "text.jpg"]:
        with pytest.raises(ValueError) as error:
            load_images([tmp_path / "ok.png", tmp_path / name], 8)
        message = str(error.value)
        assert message.startswith(f"cannot read image {tmp_path / name}") and "\n" not in message


def test_search_sheet_of_a_text_index_is_one_line(tmp_path):
    index = Index(np.eye(3), ["a", "b", "c"], "text")
    with pytest.raises(ValueError, match="--sheet needs an image index"):
        write_search_sheet(tmp_path / "s.png", index, "query", True, [0], [1.0])


def test_contact_sheet_writes_a_png(tmp_path):
    hits = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(7)]
    path = tmp_path / "sheet.png"
    size = write_contact_sheet(path, np.zeros((20, 10, 3), np.uint8), hits, [f"#{i}" for i in range(7)],
                               [f"id{i}" for i in range(7)], columns=3, cell=32)
    with Image.open(path) as sheet:
        assert sheet.size == size and sheet.format == "PNG"


def test_contact_sheet_shows_an_id_with_a_line_break_quoted_on_one_line():
    """`line\nbreak.png` was drawn over two lines, into the row below; `mmjax search` prints it quoted."""
    from mmjax.eval.contact_sheet import contact_sheet

    hits, query = [np.full((16, 16, 3), 90, np.uint8)], np.zeros((16, 16, 3), np.uint8)
    drawn = np.asarray(contact_sheet(query, hits, ["#0"], ["line\nbreak.png"], cell=96))
    quoted = np.asarray(contact_sheet(query, hits, ["#0"], ["'line\\nbreak.png'"], cell=96))
    np.testing.assert_array_equal(drawn, quoted)


# --- the command line --------------------------------------------------------------------------------------------

def mmjax(*args):
    return subprocess.run([sys.executable, "-m", "mmjax.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("search") / "run")
    result = mmjax("train", "--config", TEST_CONFIG, "--workdir", workdir)
    assert result.returncode == 0, result.stderr
    return workdir


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="on a GPU the run keeps cuDNN's attention")
def test_a_run_trained_with_cudnn_attention_loads_with_xla_attention_off_a_gpu(trained_workdir, tmp_path):
    copy = tmp_path / "cudnn"
    shutil.copytree(trained_workdir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model_options"].update(attention="cudnn", dtype="bfloat16")  # as a GPU run writes it
    (copy / "config.json").write_text(json.dumps(config))
    loaded, original = load_trained(str(copy)), load_trained(trained_workdir, dtype="bfloat16")
    assert loaded.model.config.options == original.model.config.options
    assert loaded.model.config.options.attention == "xla" and loaded.model.config.options.dtype == "bfloat16"
    assert load_trained(str(copy), dtype="float32").model.config.options.attention == "xla"
    jax.tree.map(np.testing.assert_array_equal, loaded.params, original.params)


def _write_images(directory, count):
    from mmjax.data.synthetic import render_image
    (directory / "sub").mkdir(parents=True)
    for i in range(count):
        record = {"image_labels": np.array([i % 3, i % 4, i % 2, i % 9]), "key": np.array([0, 0, i])}
        Image.fromarray(render_image(record, 24)).save(directory / ("sub" if i % 2 else "") / f"{i:02d}.png")


def test_cli_embed_search_sheet_and_classify(trained_workdir, tmp_path):
    _write_images(tmp_path / "images", 8)
    index = str(tmp_path / "images.safetensors")
    embedded = mmjax("embed", "--model", trained_workdir, "--images", str(tmp_path / "images"), "--out", index)
    assert embedded.returncode == 0, embedded.stderr
    sheet = str(tmp_path / "hits.png")
    searched = mmjax("search", "--index", index, "--text", "a red circle", "-k", "5", "--sheet", sheet)
    assert searched.returncode == 0, searched.stderr
    lines = searched.stdout.splitlines()
    assert len(lines) == 5
    ranks, scores, ids = zip(*(line.split(None, 2) for line in lines))
    assert ranks == ("1", "2", "3", "4", "5") and list(map(float, scores)) == sorted(map(float, scores))[::-1]
    assert set(ids) <= set(load_index(index).ids) and "sub/01.png" in load_index(index).ids
    with Image.open(sheet) as image:
        image.load()
        assert image.format == "PNG"

    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n\na blue square\na green triangle\n")
    text_index = str(tmp_path / "texts.npz")
    assert mmjax("embed", "--model", trained_workdir, str(texts), "--out", text_index).returncode == 0
    image_to_text = mmjax("search", "--index", text_index, "--image", str(tmp_path / "images" / "00.png"), "-k", "9")
    assert image_to_text.returncode == 0, image_to_text.stderr
    image_embeddings = dict(zip(load_index(index).ids, _unit(load_index(index).embeddings)))
    text_embeddings = dict(zip(load_index(text_index).ids, _unit(load_index(text_index).embeddings)))
    hits = [line.split(None, 2) for line in image_to_text.stdout.splitlines()]
    assert sorted(text for _, _, text in hits) == ["a blue square", "a green triangle", "a red circle"]
    for _, score, text in hits:  # the cosine of the image's and the text's embeddings, from the indexes
        assert float(score) == pytest.approx(float(image_embeddings["00.png"] @ text_embeddings[text]), abs=1e-4)
    resized = mmjax("search", "--index", text_index, "--text", "a cat", "--image_size", "24")
    assert resized.returncode == 2 and resized.stderr.strip().splitlines() == [  # the refusal alone
        f"mmjax: error: --image_size applies to a pretrained checkpoint; the training workdir {trained_workdir} runs "
        f"at the size it trained at"]

    # a directory as --out is refused before anything is embedded
    (tmp_path / "folder.npz").mkdir()
    refused = mmjax("embed", "--model", trained_workdir, str(texts), "--out", str(tmp_path / "folder.npz"))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        f"mmjax: error: --out {tmp_path / 'folder.npz'} is a directory; name the index file (.safetensors or .npz)")

    images = [str(tmp_path / "images" / "00.png"), str(tmp_path / "images" / "sub" / "01.png")]
    classified = mmjax("classify", "--model", trained_workdir, "--labels",
                       "a red circle,a blue square, a green triangle", *images)
    assert classified.returncode == 0, classified.stderr
    blocks = classified.stdout.split("\n" + images[1] + "\n")
    assert blocks[0].splitlines()[0] == images[0] and len(blocks) == 2
    # CLIP's softmax over the labels of the cosines times the run's scale (clamped at 100), in NumPy
    scale = min(math.exp(float(load_trained(trained_workdir).params["logit_scale"])), 100.0)
    for block, image_id in zip((blocks[0].splitlines()[1:], blocks[1].splitlines()), ("00.png", "sub/01.png")):
        got = {label: float(probability) for probability, label in (line.split(None, 1) for line in block)}
        logits = np.array([scale * image_embeddings[image_id] @ text_embeddings[label] for label in got])
        want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(list(got.values()), want, atol=1e-4)
        assert list(got.values()) == sorted(got.values(), reverse=True)


def test_search_warns_when_the_index_model_has_trained_on(trained_workdir, tmp_path):
    """An index embedded at step 6 and queried after the workdir trained on: the weights differ, and the results
    were silently wrong."""
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\na blue square\n")
    index = str(tmp_path / "texts.npz")
    assert mmjax("embed", "--model", str(workdir), str(texts), "--out", index).returncode == 0
    assert load_index(index).model_step == "6"
    fresh = mmjax("search", "--index", index, "--text", "a red circle")
    assert fresh.returncode == 0 and "warning" not in fresh.stderr
    trained_on = mmjax("train", "--config", TEST_CONFIG, "--workdir", str(workdir), "--config.total_steps=8")
    assert trained_on.returncode == 0, trained_on.stderr
    stale = mmjax("search", "--index", index, "--text", "a red circle")
    assert stale.returncode == 0 and (f"mmjax: warning: the index was embedded by {workdir} at step 6, which has "
                                      f"trained on to step 8") in stale.stderr


def test_an_index_without_a_model_and_eval_flags_that_do_not_apply_are_one_line(tmp_path):
    """An index saved without its model said "workdir  does not exist"; `eval --num_workers` / `--data_dir` were
    dropped without a word where they do not apply."""
    save_index(str(tmp_path / "texts.npz"), Index(np.eye(2, dtype=np.float32), ["a", "b"], "text"))
    done = mmjax("search", "--index", str(tmp_path / "texts.npz"), "--text", "a red circle")
    assert done.returncode == 2 and done.stderr.strip() == (
        f"mmjax: error: the index {tmp_path / 'texts.npz'} records no model; give --model WORKDIR|CHECKPOINT")
    for args, message in [(["--num_workers", "2"], "--num_workers applies to a TFDS benchmark or wds:DIR, not to the "
                                                   "synthetic benchmark"),
                          (["--benchmark", f"wds:{tmp_path}", "--data_dir", str(tmp_path)],
                           f"--data_dir applies to a TFDS benchmark, not to wds:{tmp_path}")]:
        done = mmjax("eval", "--model", str(tmp_path / "no_run"), *args)
        assert done.returncode == 2 and done.stderr.strip() == f"mmjax: error: {message}", done.stderr
