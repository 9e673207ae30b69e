"""`ImagePreprocess` equals the reference processors pixel for pixel: OpenCLIP's torchvision transform and
transformers' CLIPImageProcessor (PIL backend), on odd sizes, both orientations, grey and RGBA inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmjax.data.preprocess import ImagePreprocess, resize_bilinear_tf

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")
from transformers.models.clip.image_processing_clip import CLIPImageProcessor  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

# (224, 227) and (259, 240): a centre crop leaves 4k + 3 pixels to split, where rounding half to even and
# rounding down put the crop one pixel apart (OpenCLIP rounds, transformers floors).
SIZES = [(300, 451), (451, 300), (97, 130), (225, 224), (224, 224), (37, 1000), (1001, 53), (224, 227), (259, 240)]


def _images():
    rng = np.random.default_rng(0)
    def smooth(h, w):  # gradients, where interpolation differences would show most clearly as offsets
        x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
        return np.stack([x, y, np.full((h, w), 90.0)], -1).astype(np.uint8)

    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]
    images += [Image.fromarray(smooth(h, w)) for h, w in SIZES[:3]]
    images.append(Image.fromarray(rng.integers(0, 256, (80, 120), dtype=np.uint8)))  # grey
    return images


def _images_in_other_modes():
    """Palette, bilevel and transparent images: PIL resizes the first two nearest-neighbour and the others with
    premultiplied alpha, so converting to RGB before or after the resize gives other pixels."""
    rng = np.random.default_rng(2)
    x, y = np.meshgrid(np.linspace(0, 255, 301), np.linspace(0, 255, 257))
    gradient = Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))
    alpha = Image.fromarray(rng.integers(0, 256, (257, 301), dtype=np.uint8))
    rgba, la = gradient.copy(), gradient.convert("L")
    rgba.putalpha(alpha)
    la.putalpha(alpha)
    return [gradient.convert("P"), gradient.convert("1"), rgba, la]


@pytest.mark.parametrize("interpolation,mode", [("bicubic", "shortest"), ("bilinear", "shortest"),
                                                ("bicubic", "squash")])
def test_matches_open_clip_transform(interpolation, mode):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
    reference = open_clip.image_transform(224, is_train=False, mean=mean, std=std, resize_mode=mode,
                                          interpolation=interpolation)
    ours = ImagePreprocess(224, mean, std, mode=mode, interpolation=interpolation, rgb_after_resize=True)
    for image in _images() + _images_in_other_modes():
        expected = reference(image).numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(ours(image), expected, atol=2e-6, err_msg=str(image.size))


def test_matches_transformers_pil_processor_and_uint8_arrays():
    reference = CLIPImageProcessorPil(size={"shortest_edge": 240}, crop_size={"height": 224, "width": 224})
    ours = ImagePreprocess(224, tuple(reference.image_mean), tuple(reference.image_std), resize_size=240,
                           crop_rounding="floor", alpha_on_white=True)
    images = _images() + _images_in_other_modes()
    rgba = np.random.default_rng(1).integers(0, 256, (90, 70, 4), dtype=np.uint8)
    images.append(Image.fromarray(rgba, "RGBA"))
    for image in images:
        expected = reference(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        np.testing.assert_allclose(ours(image), expected, atol=2e-6, err_msg=str(image.size))
        if image.mode == "RGB":
            np.testing.assert_array_equal(ours(np.asarray(image)), ours(image))


def test_transformers_torchvision_backend_is_within_two_grey_levels():
    """transformers 5's default CLIPImageProcessor resizes tensors with torchvision, not PIL: we follow PIL
    (OpenAI's and the PIL backend's choice); the default backend differs by at most 2/255 per pixel."""
    reference = CLIPImageProcessor()
    ours = ImagePreprocess(224, tuple(reference.image_mean), tuple(reference.image_std), crop_rounding="floor")
    for image in _images()[:4]:
        expected = reference(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        assert np.abs((ours(image) - expected) * np.asarray(reference.image_std)).max() <= 2.0 / 255 + 1e-6


def test_big_vision_resize_is_tensorflows_bilinear_without_antialiasing_truncated():
    """big_vision's `resize`: tf.image.resize(bilinear, antialias=False), then a truncating cast to uint8."""
    # By hand: 2 × 4 → 1 × 2 samples between rows and columns, the mean of each 2 × 2 block, truncated.
    block = np.array([[0, 1, 10, 20], [1, 1, 30, 41]], np.uint8)[..., None]
    np.testing.assert_array_equal(resize_bilinear_tf(block, (2, 1))[..., 0], [[0, 25]])  # 0.75 → 0, 25.25 → 25
    # Shrinking 9 → 3 columns samples columns 1, 4 and 7 exactly: no antialiasing (PIL averages them away).
    stripes = np.tile(np.array([0, 255, 0], np.uint8), 3)[None, :, None].repeat(3, axis=0).repeat(3, axis=2)
    np.testing.assert_array_equal(resize_bilinear_tf(stripes, (3, 3))[0, :, 0], [255, 255, 255])
    # TensorFlow 2.21's own output (tf.image.resize + clip + cast, run once outside the suite, which does not
    # depend on TensorFlow) for an 11 × 13 ramp, shrunk to 5 × 6 and stretched to 9 × 17.
    ramp = (np.arange(11 * 13) * 37 % 256).astype(np.uint8).reshape(11, 13, 1)
    np.testing.assert_array_equal(resize_bilinear_tf(ramp, (6, 5))[..., 0], [
        [66, 83, 163, 128, 67, 147], [190, 66, 95, 175, 153, 79], [122, 202, 48, 107, 187, 160],
        [54, 134, 214, 38, 119, 199], [152, 66, 146, 213, 50, 131]])
    stretched = resize_bilinear_tf(ramp, (17, 9))[..., 0]
    np.testing.assert_array_equal(stretched[0], [24, 30, 48, 77, 105, 133, 161, 190, 218, 72, 32, 47, 75, 104, 132,
                                                 160, 184])
    np.testing.assert_array_equal(stretched[-1], [205, 210, 135, 29, 58, 86, 114, 143, 171, 199, 212, 160, 28, 56,
                                                  85, 113, 137])
    # Against JAX's half-pixel linear resize without antialiasing, the same sampling: equal but for rounding
    # (a float a hair either side of an integer truncates to two values).
    rng = np.random.default_rng(0)
    for (h, w), (out_h, out_w) in [((256, 256), (224, 224)), ((512, 300), (224, 224)), ((37, 50), (224, 224))]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        jax_resized = jax.image.resize(jnp.asarray(image, jnp.float32), (out_h, out_w, 3), "linear", antialias=False)
        want = np.clip(np.asarray(jax_resized), 0, 255).astype(np.uint8)
        difference = np.abs(resize_bilinear_tf(image, (out_w, out_h)).astype(int) - want)
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    preprocess = ImagePreprocess(3, (0.5,) * 3, (0.5,) * 3, mode="squash", interpolation="bilinear_tf")
    np.testing.assert_array_equal(preprocess.resized(Image.fromarray(stripes)), resize_bilinear_tf(stripes, (3, 3)))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="uint8"):
        ImagePreprocess(32)(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="interpolation 'lanczos'"):
        ImagePreprocess(32, interpolation="lanczos")
    with pytest.raises(ValueError, match="excludes rgb_after_resize"):
        ImagePreprocess(32, alpha_on_white=True, rgb_after_resize=True)


def test_one_image_is_one_image_in_a_batch():
    """An `[H, W, 3]` array was taken as H images of `[W, 3]` (24 embeddings for one picture); one PIL image
    raised a TypeError."""
    pixels = np.random.default_rng(0).integers(0, 256, (24, 20, 3), np.uint8)
    preprocess = ImagePreprocess(16)
    want = preprocess(pixels)[None]
    np.testing.assert_array_equal(preprocess.batch(Image.fromarray(pixels)), want)
    np.testing.assert_array_equal(preprocess.batch([pixels]), want)
    np.testing.assert_array_equal(preprocess.batch(pixels[None]), want)
    with pytest.raises(ValueError, match=r"an array of images must be \[N, H, W, C\], got shape \[24, 20, 3\]: "
                                         r"pass one image as \[image\], greyscale images with a channel axis"):
        preprocess.batch(pixels)
    grey = pixels[..., 0]
    np.testing.assert_array_equal(preprocess.batch(np.stack([grey, grey])[..., None]),
                                  np.concatenate([preprocess(grey)[None]] * 2))
    mixed = np.empty(2, object)  # images of different sizes in an object array, as a list
    mixed[0], mixed[1] = pixels, pixels[:10]
    np.testing.assert_array_equal(preprocess.batch(mixed), np.stack([preprocess(pixels), preprocess(pixels[:10])]))
