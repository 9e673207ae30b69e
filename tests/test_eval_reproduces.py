"""The benchmark path (webdataset shards) reproduces the synthetic evaluation's numbers
on the same images, class names and templates."""

import io
import os
import tarfile

import pytest
from PIL import Image

import flax.linen as nn
import jax

import mmjax.models as models
from mmjax.data import Tokenizer, synthetic
from mmjax.eval import evaluate_synthetic
from mmjax.eval.benchmarks import run_benchmark
from mmjax.inference import Encoder


def write_heldout_shards(directory, seed, image_size, count):
    """clip_benchmark-layout shards of the synthetic held-out split, with its class names and templates."""
    os.makedirs(directory / "test")
    source = synthetic.SyntheticSource("heldout", seed, count)
    with tarfile.open(directory / "test" / "0.tar", "w") as tar:
        for index in range(count):
            record = source[index]
            shape, colour = record["image_labels"][:2]
            png = io.BytesIO()
            Image.fromarray(synthetic.render_image(record, image_size)).save(png, format="PNG")
            for name, payload in [(f"{index:05d}.png", png.getvalue()),
                                  (f"{index:05d}.cls", str(synthetic.class_id(shape, colour)).encode())]:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (directory / "classnames.txt").write_text("\n".join(synthetic.CLASSNAMES) + "\n")
    (directory / "zeroshot_classification_templates.txt").write_text(
        "\n".join(t.replace("{}", "{c}") for t in synthetic.PROMPT_TEMPLATES) + "\n")


def test_webdataset_benchmark_reproduces_the_synthetic_zero_shot_numbers(tmp_path):
    # An untrained model: its predictions spread over the classes, so the numbers compared are not all 0 or 1
    # (a briefly trained one never predicts the held-out pairs at all).
    config = models.get_config("clip-test")
    model = models.TwoTower(config)
    images, tokens = models.example_inputs(config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(3), image=images, text=tokens))["params"]
    encoder = Encoder(model, params, Tokenizer.for_synthetic(config.text.context_length), (0.5,) * 3, (0.5,) * 3,
                      batch_size=32)
    size, count, seed = config.vision.image_size, 96, 0
    want = evaluate_synthetic(encoder.encode_images, encoder.encode_texts, seed=seed, image_size=size,
                              num_heldout=count, num_retrieval=32, batch_size=32)
    write_heldout_shards(tmp_path / "wds", seed, size, count)
    task, got = run_benchmark(f"wds:{tmp_path / 'wds'}", encoder.encode_images, encoder.encode_texts,
                              image_size=size, batch_size=32)
    assert task == "zeroshot_classification"
    assert 0.0 < want["acc5"] < 1.0  # a partly trained model: the comparison is not trivially 0 or 1
    for key in ["acc1", "acc5", "mean_per_class_recall"]:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert got["num_images"] == count
