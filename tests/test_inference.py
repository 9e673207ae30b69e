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
    params = nn.unbox(model.init(jax.random.key(0), image=images, text=tokens))["params"]
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
