"""`mmjax eval --model SOURCE` on a pretrained checkpoint (here a SigLIP saved as a transformers directory): the
metrics equal clip_benchmark's zero-shot classification written out over the checkpoint's own embeddings, and the
benchmark images reach the model through the checkpoint's own resize (a squash, not the centre crop of a run)."""

import io
import json
import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image
from test_benchmarks import naive_zero_shot_metrics, write_shard
from test_cli import _assert_one_line_error, mmjax
from test_data_convert import read_records
from test_data_pipeline import record, write_data_dir

from mmjax.convert import hf_siglip
from mmjax.data.preprocess import ImagePreprocess
from mmjax.data.tokenizers import Tokenizer
from mmjax.eval import benchmarks
from mmjax.eval.search import load_index
from mmjax.models import TwoTower, get_config
from mmjax.pretrained import Pretrained, is_pretrained_source, load_pretrained

CLASSNAMES = ["cat", "dog", "bird", "fish", "horse", "frog"]  # ≥ 5: acc5 is defined
TEMPLATES = ["a photo of a {c}.", "a {c}"]
LABELS = [0, 1, 2, 3, 4, 5, 0, 0, 1, 3, 5, 2, 1, 0]
SIZES = [(40, 24), (24, 40), (31, 17), (16, 16), (50, 20)]  # wide and tall: a squash and a crop differ


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    config = get_config("siglip-test")
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    variables = nn.unbox(jax.jit(lambda key: TwoTower(config).init(key, image=images, text=np.zeros((2, 8), int)))(
        jax.random.key(3)))
    params = jax.tree.map(np.asarray, variables["params"])
    words = [t.replace("{c}", c) for c in CLASSNAMES for t in TEMPLATES]
    tokenizer = Tokenizer.from_corpus(words, context_length=config.text.context_length)
    preprocess = ImagePreprocess(16, (0.5,) * 3, (0.5,) * 3, mode="squash", interpolation="bilinear")
    path = str(tmp_path_factory.mktemp("siglip_hf"))
    hf_siglip.export(Pretrained(config, params, tokenizer, preprocess), path)
    return path


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory):
    """clip_benchmark-layout shards of noise images of several shapes (two shards); every fourth is transparent
    (RGBA), which a transformers checkpoint puts on white before it resizes."""
    root = tmp_path_factory.mktemp("wds_pets")
    (root / "test").mkdir()
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, size=(*SIZES[i % len(SIZES)][::-1], 3 + (i % 4 == 3)),
                                           dtype=np.uint8)) for i in range(len(LABELS))]
    samples = []
    for i, (image, label) in enumerate(zip(images, LABELS)):
        png = io.BytesIO()
        image.save(png, format="PNG")
        samples.append((f"s{i:03d}", {"png": png.getvalue(), "cls": str(label).encode()}))
    write_shard(root / "test" / "0000.tar", samples[:6])
    write_shard(root / "test" / "0001.tar", samples[6:])
    (root / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return root, images


def test_cli_eval_of_a_pretrained_checkpoint_equals_the_written_out_metrics(siglip_dir, benchmark_dir, tmp_path):
    root, images = benchmark_dir
    done = mmjax("eval", "--model", siglip_dir, "--benchmark", f"wds:{root}", "--batch_size", "4", cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / f"eval_wds_{root.name}_{os.path.basename(siglip_dir)}.json") as f:
        results = json.load(f)
    assert (results["model"], results["pretrained"], results["task"]) == (siglip_dir, "hf_siglip",
                                                                          "zeroshot_classification")
    pretrained = load_pretrained(siglip_dir)
    expected = naive_zero_shot_metrics(pretrained.encode_image(images), pretrained.encode_text, CLASSNAMES,
                                       TEMPLATES, np.array(LABELS))
    assert results["metrics"]["num_images"] == len(LABELS)
    for key, value in expected.items():
        assert results["metrics"][key] == pytest.approx(value), key
    assert "(hf_siglip SigLIP): wds:" in done.stdout and "acc1" in done.stdout


def test_a_pretrained_checkpoint_evaluates_at_another_image_size(siglip_dir, benchmark_dir, tmp_path):
    root, images = benchmark_dir
    done = mmjax("eval", "--model", siglip_dir, "--benchmark", f"wds:{root}", "--image_size", "24", "--batch_size",
                 "4", cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / f"eval_wds_{root.name}_{os.path.basename(siglip_dir)}_24px.json") as f:
        results = json.load(f)
    assert results["image_size"] == 24 and "(hf_siglip SigLIP at 24 px)" in done.stdout
    resized, native = load_pretrained(siglip_dir, image_size=24), load_pretrained(siglip_dir)
    assert (resized.config.vision.image_size, resized.preprocess.size, native.preprocess.size) == (24, 24, 16)
    assert np.abs(resized.encode_image(images) - native.encode_image(images)).max() > 1e-3  # the size matters
    expected = naive_zero_shot_metrics(resized.encode_image(images), resized.encode_text, CLASSNAMES, TEMPLATES,
                                       np.array(LABELS))
    for key, value in expected.items():
        assert results["metrics"][key] == pytest.approx(value), key


@pytest.mark.parametrize("num_workers", [0, 1])
def test_the_benchmark_images_get_the_checkpoints_own_resize(siglip_dir, benchmark_dir, num_workers):
    root, images = benchmark_dir
    pretrained = load_pretrained(siglip_dir)
    seen = []

    def encode_images(batch):
        seen.extend(batch)
        return np.ones((len(batch), 4))

    benchmarks.run_benchmark(f"wds:{root}", encode_images, lambda texts: np.ones((len(texts), 4)), image_size=16,
                             preprocess=pretrained.preprocess, batch_size=4, num_workers=num_workers)
    assert pretrained.preprocess.mode == "squash" and pretrained.preprocess.alpha_on_white
    for image, got in zip(images, seen, strict=True):
        np.testing.assert_array_equal(got, pretrained.preprocess.resized(image))
    assert any((got != ImagePreprocess(16).resized(image)).any() for image, got in zip(images, seen))
    with pytest.raises(ValueError, match="preprocess makes 16 px images, not image_size 32"):
        benchmarks.run_benchmark(f"wds:{root}", encode_images, encode_images, image_size=32,
                                 preprocess=pretrained.preprocess)


def test_eval_arguments_for_pretrained_checkpoints_are_one_line(siglip_dir, benchmark_dir, tmp_path):
    benchmark = f"wds:{benchmark_dir[0]}"
    _assert_one_line_error(mmjax("eval", "--model", siglip_dir),
                           f"a pretrained checkpoint ({siglip_dir}) needs --benchmark")
    _assert_one_line_error(mmjax("eval", "--model", str(tmp_path / "run"), "--weights", "w.safetensors"),
                           "--weights applies to a pretrained checkpoint")
    for command in ("eval", "classify"):
        _assert_one_line_error(mmjax(command, "--model", str(tmp_path / "run"), "--image_size", "24", "--labels", "a",
                                     "x.png")
                               if command == "classify" else mmjax(command, "--model", str(tmp_path / "run"),
                                                                   "--image_size", "24"),
                               f"--image_size applies to a pretrained checkpoint; the training workdir "
                               f"{tmp_path}/run runs at the size it trained at")
    _assert_one_line_error(mmjax("eval", "--model", "open_clip:ViT-B-32", "--benchmark", f"wds:{tmp_path}"),
                           f"no webdataset shards {tmp_path}/test/*.tar")  # the benchmark is checked first
    _assert_one_line_error(mmjax("eval", "--model", "open_clip:ViT-B-32", "--benchmark", benchmark),
                           "open_clip:ViT-B-32 needs a weights file (weights=FILE, --weights FILE)")
    assert is_pretrained_source("hf:org/name") and is_pretrained_source(siglip_dir)
    assert not is_pretrained_source(str(tmp_path)) and not is_pretrained_source(os.path.join(siglip_dir, "x.json"))


def _unit(x):
    return np.asarray(x, np.float64) / np.linalg.norm(x, axis=-1, keepdims=True)


def test_embed_search_and_classify_take_a_pretrained_checkpoint(siglip_dir, benchmark_dir, tmp_path):
    """The image files get the checkpoint's squash; the hits and probabilities are written out from
    `Pretrained.encode_image` / `encode_text` and SigLIP's `sigmoid(exp(t) · cos + b)`."""
    _, images = benchmark_dir
    (tmp_path / "photos").mkdir()
    for i, image in enumerate(images[:5]):
        image.save(tmp_path / "photos" / f"{i}.png")
    index = str(tmp_path / "index.npz")
    embedded = mmjax("embed", "--model", siglip_dir, "--images", str(tmp_path / "photos"), "--out", index)
    assert embedded.returncode == 0, embedded.stderr
    pretrained = load_pretrained(siglip_dir)
    image_emb = pretrained.encode_image(images[:5])
    query = "a photo of a dog."
    cosine = _unit(image_emb) @ _unit(pretrained.encode_text([query]))[0]
    found = mmjax("search", "--index", index, "--text", query, "-k", "5", "--image_size", "16")
    assert found.returncode == 0, found.stderr
    assert "warning" not in found.stderr  # the index records the directory it was embedded by, and its 16 px
    assert load_index(index).model_image_size == "16"
    hits = [line.split() for line in found.stdout.strip().splitlines()]
    assert [hit[2] for hit in hits] == [f"{i}.png" for i in np.argsort(-cosine)]
    np.testing.assert_allclose([float(hit[1]) for hit in hits], np.sort(cosine)[::-1], atol=1e-4)

    labels = ["a cat", "a fish"]
    classified = mmjax("classify", "--model", siglip_dir, "--labels", ",".join(labels),
                       *(str(tmp_path / "photos" / f"{i}.png") for i in range(2)))
    assert classified.returncode == 0, classified.stderr
    cos = _unit(image_emb[:2]) @ _unit(pretrained.encode_text(labels)).T
    expected = 1 / (1 + np.exp(-(np.exp(pretrained.logit_scale) * cos + pretrained.logit_bias)))
    lines = classified.stdout.strip().splitlines()
    for i in range(2):
        block = lines[3 * i:3 * i + 3]
        assert block[0].endswith(f"{i}.png")
        got = {" ".join(line.split()[1:]): float(line.split()[0]) for line in block[1:]}
        assert got == pytest.approx(dict(zip(labels, expected[i])), abs=1e-4)


def test_embed_search_and_classify_run_a_pretrained_checkpoint_at_another_image_size(siglip_dir, benchmark_dir,
                                                                                    tmp_path):
    """`--image_size 24` on a 16 px checkpoint: the index holds `load_pretrained(image_size=24)`'s image
    embeddings (which differ from the 16 px ones) and records the size, an image query is embedded at that size
    without the flag, another size is warned about, and classify's probabilities are the 24 px model's."""
    _, images = benchmark_dir
    (tmp_path / "photos").mkdir()
    for i, image in enumerate(images[:5]):
        image.save(tmp_path / "photos" / f"{i}.png")
    index = str(tmp_path / "index.safetensors")
    embedded = mmjax("embed", "--model", siglip_dir, "--images", str(tmp_path / "photos"), "--out", index,
                     "--image_size", "24")
    assert embedded.returncode == 0, embedded.stderr
    resized, native = load_pretrained(siglip_dir, image_size=24), load_pretrained(siglip_dir)
    image_emb = resized.encode_image(images[:5])
    assert np.abs(_unit(image_emb) - _unit(native.encode_image(images[:5]))).max() > 1e-3
    written = load_index(index)
    assert written.model_image_size == "24"
    np.testing.assert_allclose(written.embeddings, _unit(image_emb), atol=1e-5)

    found = mmjax("search", "--index", index, "--image", str(tmp_path / "photos" / "3.png"), "-k", "5")
    assert found.returncode == 0 and "warning" not in found.stderr, found.stderr
    cosine = _unit(image_emb) @ _unit(image_emb[3])
    hits = [line.split() for line in found.stdout.strip().splitlines()]
    assert [hit[2] for hit in hits] == [f"{i}.png" for i in np.argsort(-cosine)]
    np.testing.assert_allclose([float(hit[1]) for hit in hits], np.sort(cosine)[::-1], atol=1e-4)
    other = mmjax("search", "--index", index, "--text", "a cat", "--image_size", "16")
    assert other.returncode == 0, other.stderr
    assert "mmjax: warning: the index was embedded at 24 px, not 16 px" in other.stderr

    labels = ["a cat", "a fish"]
    classified = mmjax("classify", "--model", siglip_dir, "--labels", ",".join(labels), "--image_size", "24",
                       str(tmp_path / "photos" / "0.png"))
    assert classified.returncode == 0, classified.stderr
    cos = _unit(image_emb[:1]) @ _unit(resized.encode_text(labels)).T
    expected = 1 / (1 + np.exp(-(np.exp(resized.logit_scale) * cos + resized.logit_bias)))
    got = {" ".join(line.split()[1:]): float(line.split()[0]) for line in classified.stdout.strip().splitlines()[1:]}
    assert got == pytest.approx(dict(zip(labels, expected[0])), abs=1e-4)


def test_data_filter_scores_with_a_pretrained_checkpoint(siglip_dir, benchmark_dir, tmp_path):
    """DataComp's CLIP score with a pretrained model: the scores written equal the cosine of
    `Pretrained.encode_image` (the checkpoint's squash) and `encode_text`, and the best half is kept."""
    _, images = benchmark_dir
    captions = [[t.replace("{c}", c)] for c, t in zip(CLASSNAMES * 3, TEMPLATES * 9)][:len(images)]
    encoded = []
    for image in images:
        png = io.BytesIO()
        image.save(png, format="PNG")
        encoded.append(png.getvalue())
    write_data_dir(tmp_path / "data", [[record(f"k{i}", captions[i], encoded[i]) for i in range(len(images))]])
    out = tmp_path / "kept"
    done = mmjax("data", "filter", str(tmp_path / "data"), "--model", siglip_dir, "--out", str(out),
                 "--top_fraction", "0.5", "--batch_size", "4")
    assert done.returncode == 0, done.stderr
    pretrained = load_pretrained(siglip_dir)
    scores = np.sum(_unit(pretrained.encode_image(images)) * _unit(pretrained.encode_text([c[0] for c in captions])),
                    axis=1)
    written = read_records(out)
    assert sorted(r["key"] for r in written) == sorted(f"k{i}" for i in np.argsort(-scores)[:len(images) // 2])
    for r in written:
        np.testing.assert_allclose(r["meta"]["clip_score"], [scores[int(r["key"][1:])]], atol=1e-4)
    refused = mmjax("data", "filter", str(tmp_path / "data"), "--model", siglip_dir, "--out", str(tmp_path / "o2"),
                    "--top_fraction", "0.5", "--weights", "w.safetensors")
    _assert_one_line_error(refused, "weights= is only for open_clip:MODEL sources")


def test_pretrained_eval_in_two_processes_gives_one_process_metrics(siglip_dir, benchmark_dir, tmp_path):
    """Each process loads the checkpoint itself and embeds every other batch; the gathered metrics are one
    process's. A host whose copy of the checkpoint is damaged stops both in one line."""
    from test_multihost_eval import _mmjax_processes, free_port

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    args = ["eval", "--model", siglip_dir, "--benchmark", f"wds:{benchmark_dir[0]}", "--batch_size", "3"]
    [single] = _mmjax_processes([[*args, "--output", str(tmp_path / "one.json")]], [env])
    assert single.returncode == 0, single.stderr[-3000:]
    port = free_port()
    envs = [dict(env, MMJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", MMJAX_NUM_PROCESSES="2",
                 MMJAX_PROCESS_ID=str(i)) for i in range(2)]
    done = _mmjax_processes([[*args, "--output", str(tmp_path / f"two{i}.json")] for i in range(2)], envs)
    assert [result.returncode for result in done] == [0, 0], done[0].stderr[-3000:] + done[1].stderr[-3000:]
    want = json.loads((tmp_path / "one.json").read_text())["metrics"]
    for i in range(2):
        got = json.loads((tmp_path / f"two{i}.json").read_text())
        assert got["processes"] == 2
        assert {k: v for k, v in got["metrics"].items() if k != "images_per_s"} == {
            k: v for k, v in want.items() if k != "images_per_s"}

    damaged = tmp_path / "damaged"
    shutil.copytree(siglip_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    port = free_port()
    envs = [dict(env, MMJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", MMJAX_NUM_PROCESSES="2",
                 MMJAX_PROCESS_ID=str(i)) for i in range(2)]
    done = _mmjax_processes([[*args, "--output", str(tmp_path / "ok.json")],
                             ["eval", "--model", str(damaged), *args[3:], "--output", str(tmp_path / "bad.json")]],
                            envs)
    lines = [result.stderr.strip().splitlines() for result in done]
    assert [result.returncode for result in done] == [2, 2], lines
    assert lines[1][-1].startswith(f"mmjax: error: {weights}"), lines[1][-3:]
    assert lines[0][-1].startswith(f"mmjax: error: process 1: {weights}"), lines[0][-3:]
