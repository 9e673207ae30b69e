"""The sharded Encoder equals a plain per-example forward pass."""

import flax.linen as nn
import jax
import numpy as np
import pytest

import mmjax.models as models
from mmjax.data import Tokenizer
from mmjax.data.transforms import normalize_images
from mmjax.inference import Encoder
from mmjax.parallel import make_mesh


def test_sharded_padded_batches_equal_one_unsharded_forward():
    config = models.get_config("clip-test")
    model = models.TwoTower(config)
    images, tokens = models.example_inputs(config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), image=images, text=tokens))["params"]
    tokenizer = Tokenizer.for_synthetic(config.text.context_length)
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, size=(11, 16, 16, 3), dtype=np.uint8)
    texts = [f"a small red circle {'at the top' if i % 2 else ''}" for i in range(5)]

    encoder = Encoder(model, params, tokenizer, (0.5,) * 3, (0.5,) * 3, batch_size=4, mesh=make_mesh(data=8))
    assert encoder.batch_size == 8  # rounded up to the 8 devices
    got_images, got_texts = encoder.encode_images(pictures), encoder.encode_texts(texts)

    want_images = model.apply({"params": params}, normalize_images(pictures, (0.5,) * 3, (0.5,) * 3),
                              method=models.TwoTower.encode_image)
    want_texts = model.apply({"params": params}, tokenizer(texts), method=models.TwoTower.encode_text)
    np.testing.assert_allclose(got_images, want_images, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got_texts, want_texts, atol=1e-5, rtol=1e-5)
    assert encoder.encode_texts([]).shape == (0, config.embed_dim)  # as `Pretrained` gives: stacks with others
    np.testing.assert_array_equal(encoder.encode_texts(texts[0]), got_texts[:1])  # one string: one text
    # float pixels in [0, 1] would be cast to 0 and 1: refused, as are other integer types
    for wrong in (pictures / 255.0, pictures.astype(np.int16)):
        with pytest.raises(ValueError, match=f"images must be uint8 \\[N, 16, 16, 3\\], got {wrong.dtype} "):
            encoder.encode_images(wrong)
    # a Ctrl-C that Python dropped (raised inside a gc callback) stops the embedding at the next batch; `embed`
    # went on and wrote its file
    from mmjax import interrupts

    interrupts._dropped.set()
    with pytest.raises(KeyboardInterrupt):
        encoder.encode_texts(texts)
    assert not interrupts._dropped.is_set()


def _pretrained(config):
    from mmjax.data.preprocess import ImagePreprocess
    from mmjax.pretrained import Pretrained

    model = models.TwoTower(config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(1), *models.example_inputs(config)))["params"]
    return Pretrained(config, params, Tokenizer.for_synthetic(config.text.context_length),
                      ImagePreprocess(config.vision.image_size), "test", "mmjax")


def test_a_batch_size_below_one_is_refused_where_it_embedded_nothing():
    config = models.get_config("clip-test")
    pretrained = _pretrained(config)
    pictures = np.zeros((3, 16, 16, 3), np.uint8)
    for batch_size in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size must be a positive int, got {batch_size}$"):
            pretrained.encode_image(pictures, batch_size=batch_size)
        with pytest.raises(ValueError, match=f"batch_size must be a positive int, got {batch_size}$"):
            pretrained.encode_text(["a red circle"], batch_size=batch_size)
        with pytest.raises(ValueError, match=f"batch_size must be a positive int, got {batch_size}$"):
            Encoder(pretrained.model, pretrained.params, pretrained.tokenizer, (0.5,) * 3, (0.5,) * 3,
                    batch_size=batch_size)


def test_a_pretrained_model_takes_image_sizes_that_are_not_a_multiple_of_its_patch():
    """20 px with 8 px patches is the 2 × 2 grid of 16 px (the last 4 pixels are not read, as OpenCLIP's
    `force_image_size` and SigLIP So400m/14 at 384 px): the same table, so the embedding of the top-left
    16 × 16 pixels; it was refused as "not a multiple of the patch size"."""
    config = models.get_config("clip-test")
    pretrained = _pretrained(config)
    larger = pretrained.with_image_size(20)
    assert larger.config.vision.image_size == 20 and larger.preprocess.size == 20
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (2, 20, 20, 3)).astype(np.float32)
    embed = lambda p, x: p.model.apply({"params": p.params}, x, method=models.TwoTower.encode_image)
    np.testing.assert_allclose(embed(larger, pixels), embed(pretrained, pixels[:, :16, :16]), atol=1e-6)
    for size in (0, 7, 12.0):
        with pytest.raises(ValueError, match=f"image size {size!r} must be an int of at least the patch size 8$"):
            pretrained.with_image_size(size)
