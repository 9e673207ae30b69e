"""HF CLIPModel and OpenCLIP checkpoints: load → same embeddings as the torch references, export → the
reference libraries load the files as they are, mmjax → export → import is bit-identical, and bad files give
one-line errors. Reference models are tiny random-weight ones built here (real 49 408-token CLIP BPE)."""

import dataclasses
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

from mmjax.convert import hf_clip  # noqa: E402
from mmjax.convert import open_clip as oc_convert  # noqa: E402
from mmjax.convert.checks import expected_shapes, flatten, unflatten  # noqa: E402
from mmjax.convert.image_processor import (  # noqa: E402
    CLIP as CLIP_PROCESSOR, colour_caveat, crop_caveat, preprocess_to_hf)
from mmjax.convert.layout import unscan  # noqa: E402
from mmjax.data.clip_bpe import ClipBpeTokenizer, bytes_to_unicode  # noqa: E402
from mmjax.data.preprocess import ImagePreprocess  # noqa: E402
from mmjax.data.tokenizers import Tokenizer  # noqa: E402
from mmjax.models import TwoTower, get_config  # noqa: E402
from mmjax.pretrained import Pretrained, load_pretrained  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["a photo of a cat", "A DOG on the   beach!!", "naïve café, 3.14 o'clock 🐱", "x " * 90, "",
         "<b>bold</b> and [brackets]; it's fine"]
SIZES = [(40, 57), (57, 40), (33, 32), (64, 64)]


def _l2(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _assert_close_normalised(ours, reference):
    assert ours.shape == reference.shape
    assert np.abs(_l2(ours) - _l2(reference)).max() <= 1e-5


def _features(output):
    """transformers 5 returns a ModelOutput from get_*_features; older versions a tensor."""
    output = getattr(output, "pooler_output", output)
    return output.detach().numpy()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


@pytest.fixture(scope="module")
def bpe_merges():
    with gzip.open(open_clip.tokenizer.default_bpe()) as f:
        return f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]


def _hf_tokenizer(merges):
    symbols = list(bytes_to_unicode().values())
    words = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges),
             "<|startoftext|>", "<|endoftext|>"]
    return transformers.CLIPTokenizer(vocab={w: i for i, w in enumerate(words)},
                                      merges=[tuple(m.split()) for m in merges])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, bpe_merges):
    """A tiny random transformers CLIPModel saved as on the Hub: safetensors, tokenizer, preprocessor config."""
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16, logit_scale_init_value=2.0)
    model = transformers.CLIPModel(config).eval()
    path = str(tmp_path_factory.mktemp("hf_clip"))
    model.save_pretrained(path)
    _hf_tokenizer(bpe_merges).save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _hf_reference(path, images, texts):
    model = transformers.CLIPModel.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    processor = CLIPImageProcessorPil.from_pretrained(path)
    with torch.no_grad():
        pixels = torch.from_numpy(processor(images, return_tensors="np")["pixel_values"])
        tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return (_features(model.get_image_features(pixel_values=pixels)),
                _features(model.get_text_features(input_ids=tokens["input_ids"])), tokens["input_ids"].numpy())


def _open_clip_dir(root, quick_gelu: bool):
    """With quick GELU, also what OpenCLIP reads and mmjax once did not: a `[8, 8]` patch size (a raw traceback) and
    a preprocessing `size` other than the model's, which OpenCLIP replaces by the model's (mmjax read 48 px)."""
    torch.manual_seed(1)
    model_cfg = dict(embed_dim=16, quick_gelu=quick_gelu,
                     vision_cfg=dict(image_size=32, layers=2, width=48, patch_size=[8, 8] if quick_gelu else 8,
                                     head_width=24),
                     text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))
    model = open_clip.model.CLIP(**model_cfg)
    with torch.no_grad():
        model.logit_scale.fill_(1.5)
    path = str(root / ("quickgelu" if quick_gelu else "gelu"))
    os.makedirs(path)
    preprocess_cfg = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.25], **({"size": 48} if quick_gelu else {})}
    with open(os.path.join(path, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, f)
    save_file(model.state_dict(), os.path.join(path, "open_clip_model.safetensors"))
    return path


@pytest.fixture(scope="module")
def open_clip_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip")
    return {quick: _open_clip_dir(root, quick) for quick in (False, True)}


def _open_clip_reference(path, images, texts, **kwargs):
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + path, **kwargs)
    tokenizer = open_clip.get_tokenizer("local-dir:" + path)
    model.eval()
    with torch.no_grad():
        tokens = tokenizer(texts)
        return (model.encode_image(torch.stack([preprocess(image) for image in images])).numpy(),
                model.encode_text(tokens).numpy(), tokens.numpy(), model)


def test_hf_clip_matches_transformers(hf_dir, images):
    pretrained = load_pretrained(hf_dir)
    image_ref, text_ref, ids_ref = _hf_reference(hf_dir, images, TEXTS)
    assert pretrained.format == "hf_clip" and pretrained.config.options.activation == "quick_gelu"
    np.testing.assert_array_equal(pretrained.tokenizer(TEXTS), ids_ref)
    _assert_close_normalised(pretrained.encode_image(images), image_ref)
    _assert_close_normalised(pretrained.encode_text(TEXTS), text_ref)
    np.testing.assert_allclose(pretrained.encode_text(TEXTS), text_ref, atol=1e-5)  # unnormalised too
    assert pretrained.logit_scale == pytest.approx(2.0) and pretrained.logit_bias is None
    processor = CLIPImageProcessorPil.from_pretrained(hf_dir)
    pixels = processor(images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(pretrained.preprocess.batch(images), pixels, atol=1e-6)


def test_hf_clip_special_tokens_map_overrides_the_config_as_transformers_reads_it(hf_dir, tmp_path):
    """transformers reads special_tokens_map.json over tokenizer_config.json, unless the config lists its added
    tokens (`added_tokens_decoder`): then it ignores the map."""
    path = str(tmp_path / "tokenizer")
    os.makedirs(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(hf_dir, name), path)
    with open(os.path.join(path, "special_tokens_map.json"), "w") as f:
        json.dump({"pad_token": {"content": "<|startoftext|>", "special": True}}, f)
    with open(os.path.join(path, "tokenizer_config.json")) as f:
        config = json.load(f)
    assert "added_tokens_decoder" not in config
    for listed in (False, True):
        if listed:
            with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
                json.dump({**config, "added_tokens_decoder": {}}, f)
        reference = transformers.AutoTokenizer.from_pretrained(path)
        expected = reference(TEXTS[:2], padding="max_length", max_length=77, truncation=True)["input_ids"]
        assert reference.pad_token == ("<|endoftext|>" if listed else "<|startoftext|>")
        np.testing.assert_array_equal(hf_clip.load_tokenizer(path, 77)(TEXTS[:2]), expected)


def test_hf_clip_towers_with_their_own_activations_embed_and_export_as_transformers(bpe_merges, images, tmp_path):
    """An exact-GELU image tower beside a quick-GELU text tower (each its own `hidden_act`): transformers'
    embeddings; the transformers export keeps each tower's activation; OpenCLIP's CLIP, with one, is refused."""
    torch.manual_seed(2)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act="gelu"),
        projection_dim=16)
    path = str(tmp_path / "mixed")
    transformers.CLIPModel(config).eval().save_pretrained(path)
    _hf_tokenizer(bpe_merges).save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    pretrained = load_pretrained(path)
    assert (pretrained.config.options.activation, pretrained.config.text_activation) == ("gelu", "quick_gelu")
    image_ref, text_ref, _ = _hf_reference(path, images, TEXTS)
    np.testing.assert_allclose(pretrained.encode_image(images), image_ref, atol=1e-5)
    np.testing.assert_allclose(pretrained.encode_text(TEXTS), text_ref, atol=1e-5)
    out = str(tmp_path / "exported")
    hf_clip.export(pretrained, out)
    written = transformers.CLIPConfig.from_pretrained(out)
    assert (written.vision_config.hidden_act, written.text_config.hidden_act) == ("gelu", "quick_gelu")
    assert load_pretrained(out).config == pretrained.config
    with pytest.raises(ValueError, match=r"cannot be written as an OpenCLIP CLIP \(needs: one activation in both"):
        oc_convert.export(pretrained, str(tmp_path / "oc"))


@pytest.mark.parametrize("processor_kwargs", [
    dict(size={"height": 32, "width": 32}, do_center_crop=False),
    dict(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}),
    dict(size={"shortest_edge": 35}, crop_size={"height": 32, "width": 32}, resample=2),
])
def test_hf_clip_preprocessing_equals_the_processor_for_each_size_form(processor_kwargs, images, tmp_path):
    """`size: {height, width}` resizes straight to that size (no aspect-preserving step), as transformers does;
    the non-square test images tell it apart from a shortest-edge resize and crop."""
    CLIPImageProcessorPil(**processor_kwargs).save_pretrained(str(tmp_path))
    preprocess = hf_clip.load_preprocess(str(tmp_path), 32)
    assert preprocess.mode == ("shortest" if "shortest_edge" in processor_kwargs["size"] else "squash")
    expected = CLIPImageProcessorPil.from_pretrained(str(tmp_path))(images, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(preprocess.batch(images), expected.transpose(0, 2, 3, 1), atol=1e-6)


@pytest.mark.parametrize("preprocess", [ImagePreprocess(32, mode="squash", interpolation="bilinear"),
                                        ImagePreprocess(32, resize_size=36)])
def test_hf_clip_export_writes_a_processor_that_gives_the_same_pixels(preprocess, images, tmp_path):
    config = get_config("clip-test")
    pretrained = Pretrained(config, _random_params(config), Tokenizer.for_synthetic(config.text.context_length),
                            preprocess, "test", "mmjax")
    hf_clip.export(pretrained, str(tmp_path))
    expected = CLIPImageProcessorPil.from_pretrained(str(tmp_path))(images, return_tensors="np")["pixel_values"]
    # transformers floors the crop offset where torchvision rounds: the reloaded spec says which one it uses
    reloaded = load_pretrained(str(tmp_path)).preprocess
    assert reloaded == dataclasses.replace(preprocess, crop_rounding="floor" if preprocess.mode == "shortest" else
                                           "round", alpha_on_white=True)
    np.testing.assert_allclose(reloaded.batch(images), expected.transpose(0, 2, 3, 1), atol=1e-6)


def test_a_rounded_crop_written_as_a_transformers_processor_is_warned_of():
    """OpenCLIP → HF: the processor floors the crop offset where OpenCLIP rounds it (half to even), so a 40 × 59
    image (resized to 32 × 47: 15 pixels to crop, offset 7.5) came out one pixel apart with no word said; with 13
    (offset 6.5) or 14 pixels to crop, both crop alike."""
    rounded = ImagePreprocess(32, mean=(0.5,) * 3, std=(0.5,) * 3)
    processor = CLIPImageProcessorPil.from_dict(preprocess_to_hf(rounded, CLIP_PROCESSOR))
    rng = np.random.default_rng(0)
    for width, apart in ((59, True), (56, False), (57, False)):  # resized to 47, 44 and 45 pixels wide
        image = Image.fromarray(rng.integers(0, 256, (40, width, 3), dtype=np.uint8))
        theirs = processor([image], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
        assert (np.abs(rounded.batch([image]) - theirs).max() > 0.1) == apart, width
    assert crop_caveat(rounded, "hf") == (
        "rounds the centre-crop offset; the transformers processor written floors it: an image whose resized side "
        "minus the crop is 3 more than a multiple of 4 is cropped one pixel apart")
    assert crop_caveat(rounded, "open_clip") is None
    floored = dataclasses.replace(rounded, crop_rounding="floor")  # as a transformers processor loads
    assert crop_caveat(floored, "hf") is None and crop_caveat(floored, "open_clip").startswith("floors")
    # shortest_edge 36 before a 32-pixel crop, to OpenCLIP: the resize is the larger difference and is named
    assert crop_caveat(dataclasses.replace(floored, resize_size=36), "open_clip") == (
        "resizes the shorter side to 36 before a 32-pixel centre crop; OpenCLIP's transform resizes it to 32, so "
        "every image is cropped otherwise there")
    assert crop_caveat(dataclasses.replace(rounded, mode="squash"), "hf") is None


def test_a_processor_that_makes_transparent_images_rgb_otherwise_is_warned_of():
    """OpenCLIP → HF: OpenCLIP resizes a transparent image as RGBA and drops the alpha last, the transformers
    processor puts it on white first; an RGBA image came out otherwise with no word said (RGB images alike)."""
    open_clip_style = ImagePreprocess(32, mean=(0.5,) * 3, std=(0.5,) * 3, crop_rounding="floor", rgb_after_resize=True)
    processor = CLIPImageProcessorPil.from_dict(preprocess_to_hf(open_clip_style, CLIP_PROCESSOR))
    rng = np.random.default_rng(0)
    for mode, apart in (("RGB", False), ("RGBA", True)):
        image = Image.fromarray(rng.integers(0, 256, (40, 56, len(mode)), dtype=np.uint8), mode)
        theirs = processor([image], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
        assert (np.abs(open_clip_style.batch([image]) - theirs).max() > 0.1) == apart, mode
    assert colour_caveat(open_clip_style, "hf") == (
        "resizes an image that is not RGB in its own mode and converts it to RGB last; the transformers processor "
        "written puts a transparent image on white before converting it to RGB: palette and transparent images are "
        "preprocessed otherwise there")
    assert colour_caveat(open_clip_style, "open_clip") is None
    mmjax_style = ImagePreprocess(32)  # a training workdir's: the alpha dropped, as the training data decodes
    assert colour_caveat(mmjax_style, "open_clip").startswith("converts an image to RGB first, dropping its "
                                                              "transparency; OpenCLIP's transform resizes")
    assert colour_caveat(dataclasses.replace(mmjax_style, alpha_on_white=True), "hf") is None


def test_hf_clip_pools_at_the_first_eos_token(hf_dir):
    """transformers pools at the first `eos_token_id`; an id above it later in the row must not move the pool."""
    pretrained = load_pretrained(hf_dir)
    reference = transformers.CLIPModel.from_pretrained(hf_dir).eval()
    reference.text_model.eos_token_id = 500
    config = dataclasses.replace(pretrained.config, text=dataclasses.replace(pretrained.config.text, eot_id=500))
    ids = np.zeros((2, 77), np.int64)
    ids[0, :5] = [49406, 320, 500, 40000, 49407]
    ids[1, :4] = [49406, 2368, 1125, 500]
    with torch.no_grad():
        expected = _features(reference.get_text_features(input_ids=torch.from_numpy(ids)))
    ours = TwoTower(config).apply({"params": pretrained.params}, ids.astype(np.int32), method=TwoTower.encode_text)
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5)


@pytest.mark.parametrize("quick_gelu", [False, True], ids=["gelu", "quick_gelu"])
def test_open_clip_matches_open_clip(open_clip_dirs, images, quick_gelu):
    path = open_clip_dirs[quick_gelu]
    pretrained = load_pretrained(path)
    image_ref, text_ref, ids_ref, _ = _open_clip_reference(path, images, TEXTS + ["a &amp; b"])
    assert pretrained.config.options.activation == ("quick_gelu" if quick_gelu else "gelu")
    np.testing.assert_array_equal(pretrained.tokenizer(TEXTS + ["a &amp; b"]), ids_ref)
    _assert_close_normalised(pretrained.encode_image(images), image_ref)
    _assert_close_normalised(pretrained.encode_text(TEXTS + ["a &amp; b"]), text_ref)
    assert pretrained.logit_scale == pytest.approx(1.5)


def test_open_clip_other_image_size_interpolates_like_open_clip(open_clip_dirs, images):
    path = open_clip_dirs[False]
    pretrained = load_pretrained(path, image_size=48)
    image_ref, _, _, _ = _open_clip_reference(path, images, [], force_image_size=48)
    assert pretrained.config.vision.image_size == 48 and pretrained.preprocess.size == 48
    _assert_close_normalised(pretrained.encode_image(images), image_ref)


def test_open_clip_named_model_with_weights_file(open_clip_dirs, images, monkeypatch, tmp_path):
    path = open_clip_dirs[True]
    with open(os.path.join(path, "open_clip_config.json")) as f:
        monkeypatch.setitem(oc_convert.MODEL_CONFIGS, "tiny-quickgelu", json.load(f)["model_cfg"])
    weights = str(tmp_path / "tiny.safetensors")
    shutil.copy(os.path.join(path, "open_clip_model.safetensors"), weights)
    pretrained = load_pretrained("open_clip:tiny-quickgelu", weights=weights)
    model = open_clip.create_model("local-dir:" + path).eval()
    transform = open_clip.image_transform(32, is_train=False)  # the named models use OpenAI's mean/std
    with torch.no_grad():
        expected = model.encode_image(torch.stack([transform(image) for image in images])).numpy()
    _assert_close_normalised(pretrained.encode_image(images), expected)
    with pytest.raises(ValueError, match="needs a weights file"):
        load_pretrained("open_clip:tiny-quickgelu")


def test_open_clip_config_keys_left_out_take_open_clips_defaults():
    """OpenCLIP fills a `model_cfg` from its `CLIPVisionCfg` / `CLIPTextCfg` defaults (text heads 8, …): mmjax
    builds the same model from the same dict, counted parameter by parameter."""
    model_cfg = dict(embed_dim=16, vision_cfg=dict(width=64, layers=1, patch_size=8, image_size=[32, 32],
                                                   act_kwargs={}, norm_kwargs={}),  # no keyword: as left out
                     text_cfg=dict(width=64, layers=1, vocab_size=100))
    model = open_clip.model.CLIP(**model_cfg)
    config = oc_convert.config_from_open_clip(model_cfg, "open_clip_config.json")
    assert config.text.num_heads == 8 and config.vision.num_heads == 1 and config.vision.image_size == 32
    assert sum(int(np.prod(s)) for s in expected_shapes(config).values()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_cfg, message", [
    (dict(embed_dim=16, text_cfg=dict(width=30, heads=4)), "TextConfig: width 30 does not split into 4 heads"),
    (dict(embed_dim=16, vision_cfg=dict(width=100)), "vision_cfg.width 100 is not a multiple of head_width 64"),
    (dict(text_cfg=dict(width=32)), "embed_dim is missing"),
    (dict(embed_dim=16, vision_cfg=dict(image_size=[32, 48])), r"vision_cfg.image_size \[32, 48\] is not square"),
    (dict(embed_dim=16, vision_cfg=dict(patch_size=[8, 16])), r"vision_cfg.patch_size \[8, 16\] is not square"),
    # these were raw TypeErrors ('<' between str and int) or AttributeErrors
    (dict(embed_dim=16, text_cfg=dict(layers="2")), "TextConfig: depth '2' is not an int"),
    (dict(embed_dim=16, vision_cfg=[768]), "vision_cfg is not a JSON object"),
    # raw TypeErrors from a JSON null
    (dict(embed_dim=16, vision_cfg=dict(head_width=None)), r"a value of the wrong type \(unsupported operand"),
    (dict(embed_dim=16, text_cfg=dict(mlp_ratio=None)), r"a value of the wrong type \(unsupported operand"),
])
def test_open_clip_config_errors_name_the_file(model_cfg, message):
    with pytest.raises(ValueError, match=f"^cfg.json: .*{message}") as error:
        oc_convert.config_from_open_clip(model_cfg, "cfg.json")
    assert "\n" not in str(error.value)


def test_open_clip_tokenizer_options_of_a_null_or_odd_text_cfg():
    """`text_cfg: null` (OpenCLIP's defaults) was an AttributeError in the tokenizer options."""
    assert oc_convert.tokenizer_clean({"text_cfg": None}, "cfg.json") == "lower"
    with pytest.raises(ValueError, match="^cfg.json: text_cfg is not a JSON object$"):
        oc_convert.tokenizer_clean({"text_cfg": "big"}, "cfg.json")


def test_open_clip_name_table_matches_open_clip():
    for name, config in oc_convert.MODEL_CONFIGS.items():
        assert config == {k: v for k, v in open_clip.get_model_config(name).items() if k != "custom_text"}, name


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-g-14"])  # plain; head_width 88 with mlp_ratio 4.3637
def test_open_clip_named_configs_have_open_clips_parameter_count(name):
    reference = open_clip.get_model_config(name)
    with torch.device("meta"):
        model = open_clip.model.CLIP(**reference)
    shapes = expected_shapes(oc_convert.config_from_open_clip(reference, name))
    assert sum(int(np.prod(s)) for s in shapes.values()) == sum(p.numel() for p in model.parameters())


def test_export_hf_loads_in_transformers(open_clip_dirs, images, tmp_path):
    """OpenCLIP → mmjax → transformers directory: CLIPModel.from_pretrained gives OpenCLIP's embeddings."""
    path = open_clip_dirs[True]
    image_ref, text_ref, ids_ref, _ = _open_clip_reference(path, images, TEXTS)
    out = str(tmp_path / "hf")
    hf_clip.export(load_pretrained(path), out)
    model = transformers.CLIPModel.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    plain = TEXTS[:4]  # transformers' tokenizer does not unescape HTML as OpenCLIP's does
    tokens = tokenizer(plain, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _assert_close_normalised(_features(model.get_text_features(input_ids=tokens)), text_ref[:4])
        pixels = torch.from_numpy(np.stack([load_pretrained(path).preprocess(image) for image in images]))
        _assert_close_normalised(_features(model.get_image_features(pixel_values=pixels.permute(0, 3, 1, 2))),
                                 image_ref)
    content = ids_ref[:4] != 0  # equal ids up to end-of-text; then transformers pads with <|endoftext|>, OpenCLIP 0
    np.testing.assert_array_equal(tokens.numpy()[content], ids_ref[:4][content])
    assert (tokens.numpy()[~content] == 49407).all()


def test_export_open_clip_loads_in_open_clip(hf_dir, images, tmp_path):
    """transformers → mmjax → OpenCLIP local-dir: create_model_and_transforms gives transformers' embeddings."""
    image_ref, text_ref, _ = _hf_reference(hf_dir, images, TEXTS)
    out = str(tmp_path / "oc")
    oc_convert.export(load_pretrained(hf_dir), out)
    hf_pixels = load_pretrained(hf_dir).preprocess.batch(images)
    _, _, ids, model = _open_clip_reference(out, images[:1], TEXTS)
    with torch.no_grad():
        image_emb = model.encode_image(torch.from_numpy(hf_pixels).permute(0, 3, 1, 2)).numpy()
        text_emb = model.encode_text(torch.from_numpy(ids)).numpy()
    _assert_close_normalised(image_emb, image_ref)
    _assert_close_normalised(text_emb, text_ref)


def _assert_bit_identical(params, reloaded):
    flat, again = flatten(params), flatten(reloaded)
    assert list(flat) == list(again) or set(flat) == set(again)
    for key, value in flat.items():
        assert np.array_equal(np.asarray(value), np.asarray(again[key])), key


def _random_params(config, seed=3):
    rng = np.random.default_rng(seed)
    return unflatten({path: rng.standard_normal(shape).astype(np.float32)
                      for path, shape in expected_shapes(config).items()})


def test_unscan_splits_stacked_layers():
    scanned = _random_params(get_config("clip-test", scan_layers=True))
    layers = unscan(scanned)
    assert expected_shapes(get_config("clip-test")) == {k: v.shape for k, v in flatten(layers).items()}
    stacked = scanned["text_encoder"]["encoder"]["layers"]["attn"]["query"]["kernel"]
    np.testing.assert_array_equal(layers["text_encoder"]["encoder"]["layers_1"]["attn"]["query"]["kernel"], stacked[1])


@pytest.mark.parametrize("scanned", [False, True])
@pytest.mark.parametrize("target", ["hf", "open_clip"])
def test_mmjax_model_export_import_is_bit_identical(target, scanned, tmp_path):
    """Scanned layers (one stacked `encoder/layers`) are written as the reference libraries' numbered layers."""
    config = get_config("clip-test", scan_layers=scanned)
    params = _random_params(config)
    pretrained = Pretrained(config, params, Tokenizer.for_synthetic(config.text.context_length),
                            ImagePreprocess(config.vision.image_size), "test", "mmjax")
    out = str(tmp_path / target)
    (hf_clip if target == "hf" else oc_convert).export(pretrained, out)
    reloaded = load_pretrained(out)
    _assert_bit_identical(unscan(params) if scanned else params, reloaded.params)
    if scanned:  # layer 1 of the stack is the reloaded layers_1, not a copy of another layer
        np.testing.assert_array_equal(reloaded.params["image_encoder"]["encoder"]["layers_1"]["mlp"]["fc1"]["kernel"],
                                      params["image_encoder"]["encoder"]["layers"]["mlp"]["fc1"]["kernel"][1])
    texts = ["a red circle", "a small blue square"]
    np.testing.assert_array_equal(reloaded.tokenizer(texts), pretrained.tokenizer(texts))
    np.testing.assert_array_equal(reloaded.encode_text(texts), pretrained.encode_text(texts))
    if target == "open_clip":  # the CLI warns that OpenCLIP's own tokenizer cannot read this model
        assert not oc_convert.is_clip_bpe(pretrained.tokenizer) and oc_convert.is_clip_bpe(ClipBpeTokenizer.open_clip())
    if target == "hf":  # and transformers runs the exported word-level model like mmjax does
        model = transformers.CLIPModel.from_pretrained(out).eval()
        with torch.no_grad():
            expected = _features(model.get_text_features(
                input_ids=torch.from_numpy(pretrained.tokenizer(texts).astype(np.int64))))
        _assert_close_normalised(pretrained.encode_text(texts), expected)


def test_sharded_hf_checkpoint_loads_like_the_single_file(hf_dir, images, tmp_path):
    """`save_pretrained` above `max_shard_size` writes `model.safetensors.index.json` + shards (as large Hub
    checkpoints are); a missing shard, or a tensor its shard lacks, is named in one line."""
    path = str(tmp_path / "sharded")
    shutil.copytree(hf_dir, path)
    os.remove(os.path.join(path, "model.safetensors"))
    transformers.CLIPModel.from_pretrained(hf_dir).save_pretrained(path, max_shard_size="1MB")
    index_path = os.path.join(path, "model.safetensors.index.json")
    with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    assert len(set(weight_map.values())) > 1 and not os.path.exists(os.path.join(path, "model.safetensors"))
    image_ref, text_ref, _ = _hf_reference(hf_dir, images, TEXTS)
    sharded = load_pretrained(path)
    _assert_close_normalised(sharded.encode_image(images), image_ref)
    _assert_close_normalised(sharded.encode_text(TEXTS), text_ref)
    _assert_bit_identical(load_pretrained(hf_dir).params, sharded.params)

    name, shard = next(iter(weight_map.items()))
    with open(index_path, "w") as f:
        json.dump({"weight_map": {**weight_map, name: "model-extra.safetensors"}}, f)
    with pytest.raises(FileNotFoundError, match=r"shard .*model-extra.safetensors named by .*index.json"):
        load_pretrained(path)
    other = next(s for s in sorted(set(weight_map.values())) if s != shard)
    with open(index_path, "w") as f:
        json.dump({"weight_map": {**weight_map, name: other}}, f)
    with pytest.raises(ValueError, match=f"puts tensor {name} in {other}, which does not hold it"):
        load_pretrained(path)


def test_pickle_weights_are_refused_unless_allowed(hf_dir, tmp_path):
    path = str(tmp_path / "pickled")
    shutil.copytree(hf_dir, path)
    state = transformers.CLIPModel.from_pretrained(hf_dir).state_dict()
    os.remove(os.path.join(path, "model.safetensors"))
    torch.save(state, os.path.join(path, "pytorch_model.bin"))
    with pytest.raises(ValueError, match="--allow_pickle") as error:
        load_pretrained(path)
    assert "\n" not in str(error.value) and "weights_only=True" in str(error.value)
    allowed = load_pretrained(path, allow_pickle=True)
    _assert_bit_identical(load_pretrained(hf_dir).params, allowed.params)


@pytest.mark.parametrize("edit, message", [
    (lambda config: config.update(text_config=[512]), "text_config is not a JSON object"),
    (lambda config: config["vision_config"].update(num_hidden_layers=2.0), "VisionConfig: depth 2.0 is not an int"),
])
def test_hf_config_of_the_wrong_types_is_one_line_naming_the_file(hf_dir, tmp_path, edit, message):
    path = str(tmp_path / "odd")
    shutil.copytree(hf_dir, path)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    edit(config)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=f"^{re.escape(path)}/config.json: {message}$"):
        load_pretrained(path)


def test_shape_mismatch_names_the_first_tensor(hf_dir, tmp_path):
    path = str(tmp_path / "mismatch")
    shutil.copytree(hf_dir, path)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["vision_config"]["image_size"] = 48
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"model.safetensors: tensor vision_model.embeddings.position_embedding.weight "
                                         r"has shape \(17, 48\) but the config needs \(37, 48\)$"):
        load_pretrained(path)


@pytest.mark.parametrize("key, shape", [("text_model.encoder.layers.0.self_attn.q_proj.weight", (31, 32)),
                                        ("vision_model.embeddings.patch_embedding.weight", (48, 3, 8)),
                                        ("logit_scale", (2,))])
def test_a_tensor_of_another_shape_is_named_before_its_layout_is_changed(hf_dir, tmp_path, key, shape):
    """Such a tensor failed inside a reshape or transpose, in a line that named neither it nor its file
    ("cannot reshape array of size 992 into shape (32,2,15)")."""
    path = str(tmp_path / "bad")
    shutil.copytree(hf_dir, path)
    weights = os.path.join(path, "model.safetensors")
    tensors = load_file(weights)
    expected = tuple(tensors[key].shape)
    tensors[key] = torch.zeros(shape)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=f"model.safetensors: tensor {key} has shape {re.escape(str(shape))} but the "
                                         f"config needs {re.escape(str(expected))}$"):
        load_pretrained(path)


def test_missing_or_truncated_weights_give_one_line(hf_dir, tmp_path):
    path = str(tmp_path / "broken")
    shutil.copytree(hf_dir, path)
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "rb") as f:
        data = f.read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors") as error:
        load_pretrained(path)
    assert "\n" not in str(error.value)
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_pretrained(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(str(tmp_path / "nowhere"))


def test_open_clip_dir_with_a_transformers_tokenizer_json_reads_open_clips_tokenizer(open_clip_dirs, bpe_merges,
                                                                                     tmp_path):
    """Repositories that hold both formats put transformers' tokenizer.json beside open_clip_config.json;
    OpenCLIP passes it over (ftfy and HTML unescaping, padding with 0), so mmjax must too."""
    path = str(tmp_path / "both")
    shutil.copytree(open_clip_dirs[False], path)
    _hf_tokenizer(bpe_merges).save_pretrained(path)
    assert os.path.isfile(os.path.join(path, "tokenizer.json"))
    texts = ["Tom &amp; Jerry", "a photo of a cat"]
    ids_ref = open_clip.get_tokenizer("local-dir:" + path)(texts).numpy()
    assert ids_ref[0, :5].tolist() == [49406, 2435, 261, 9164, 49407]  # "&amp;" unescaped to "&"
    np.testing.assert_array_equal(load_pretrained(path).tokenizer(texts), ids_ref)


def test_open_clip_tokenizer_kwargs_are_read_and_written(open_clip_dirs, tmp_path):
    """`text_cfg.tokenizer_kwargs.clean` picks SimpleTokenizer's cleaning; an export writes it back for OpenCLIP;
    a transformers export, whose tokenizer always lower-cases, and other options are refused in one line."""
    path = str(tmp_path / "cased")
    shutil.copytree(open_clip_dirs[False], path)
    config_file = os.path.join(path, "open_clip_config.json")
    with open(config_file) as f:
        config = json.load(f)
    config["model_cfg"]["text_cfg"]["tokenizer_kwargs"] = {"clean": "whitespace"}
    with open(config_file, "w") as f:
        json.dump(config, f)
    texts = ["A Red CAR, parked.", "a red car, parked."]
    ids_ref = open_clip.get_tokenizer("local-dir:" + path)(texts).numpy()
    assert (ids_ref[0] != ids_ref[1]).any()  # cased: the two texts differ
    pretrained = load_pretrained(path)
    np.testing.assert_array_equal(pretrained.tokenizer(texts), ids_ref)
    oc_convert.export(pretrained, str(tmp_path / "again"))
    np.testing.assert_array_equal(open_clip.get_tokenizer("local-dir:" + str(tmp_path / "again"))(texts).numpy(),
                                  ids_ref)
    with pytest.raises(ValueError, match="clean='whitespace' cannot be written as transformers' CLIPTokenizer"):
        hf_clip.export(pretrained, str(tmp_path / "hf"))
    config["model_cfg"]["text_cfg"]["tokenizer_kwargs"] = {"reduction_mask": "random"}
    with open(config_file, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"text_cfg.tokenizer_kwargs \{'reduction_mask': 'random'\} is not supported"):
        load_pretrained(path)


def test_an_export_replaces_an_earlier_one_whole_and_a_refused_one_writes_nothing(hf_dir, open_clip_dirs, tmp_path):
    """An earlier export's tokenizer.json, left beside a new export's vocab.json + merges.txt, was the tokenizer
    mmjax and transformers loaded; a refused export had already written its weights and config."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    config = get_config("clip-test")
    word_level = Pretrained(config, _random_params(config), Tokenizer.for_synthetic(config.text.context_length),
                            ImagePreprocess(config.vision.image_size), "test", "mmjax")
    hf_clip.export(word_level, str(out))
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert "tokenizer.json" in before

    cased = str(tmp_path / "cased")
    shutil.copytree(open_clip_dirs[False], cased)
    with open(os.path.join(cased, "open_clip_config.json")) as f:
        cased_config = json.load(f)
    cased_config["model_cfg"]["text_cfg"]["tokenizer_kwargs"] = {"clean": "whitespace"}
    with open(os.path.join(cased, "open_clip_config.json"), "w") as f:
        json.dump(cased_config, f)
    with pytest.raises(ValueError, match="cannot be written as transformers' CLIPTokenizer"):
        hf_clip.export(load_pretrained(cased), str(out))
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["cased", "out"]  # no staging directory left

    source = load_pretrained(hf_dir)
    hf_clip.export(source, str(out))
    assert sorted(os.listdir(out)) == ["config.json", "merges.txt", "model.safetensors", "notes.txt",
                                       "preprocessor_config.json", "tokenizer_config.json", "vocab.json"]
    texts = TEXTS[:3]
    ids = source.tokenizer(texts)
    np.testing.assert_array_equal(load_pretrained(str(out)).tokenizer(texts), ids)
    reference = transformers.AutoTokenizer.from_pretrained(str(out))
    np.testing.assert_array_equal(reference(texts, padding="max_length", max_length=77)["input_ids"], ids)

    oc_convert.export(word_level, str(out))
    assert sorted(os.listdir(out)) == ["notes.txt", "open_clip_config.json", "open_clip_model.safetensors",
                                       "tokenizer.json"]
    assert (out / "notes.txt").read_text() == "mine"


def test_an_export_stages_inside_out_and_removes_only_an_earlier_exports_files(tmp_path):
    """Staged beside a symlinked --out on another file system, the final rename failed (EXDEV) after the earlier
    export's files were gone; a killed export's staging directory stayed; a vocabulary file in a directory that
    held no export (OpenCLIP reads its BPE beside the weights) was removed as an earlier export's."""
    config = get_config("clip-test")
    word_level = Pretrained(config, _random_params(config), Tokenizer.for_synthetic(config.text.context_length),
                            ImagePreprocess(config.vision.image_size), "test", "mmjax")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "merges.txt").write_text("mine")
    (downloads / ".mmjax-export-killed").mkdir()
    (downloads / ".mmjax-export-killed" / "model.safetensors").write_bytes(b"partial")
    hf_clip.export(word_level, str(downloads))
    assert sorted(os.listdir(downloads)) == ["config.json", "merges.txt", "model.safetensors",
                                             "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert (downloads / "merges.txt").read_text() == "mine"

    cased = ClipBpeTokenizer.open_clip(context_length=config.text.context_length, clean="whitespace")
    cased_config = dataclasses.replace(config, text=dataclasses.replace(config.text, vocab_size=cased.vocab_size))
    with pytest.raises(ValueError, match="clean='whitespace' cannot be written as transformers' CLIPTokenizer"):
        hf_clip.export(Pretrained(cased_config, _random_params(cased_config), cased,
                                  ImagePreprocess(config.vision.image_size)), str(tmp_path / "new" / "hf"))
    assert sorted(os.listdir(tmp_path)) == ["downloads"]  # the directories the failed export made are gone

    other_device = "/dev/shm"
    if os.path.isdir(other_device) and os.stat(other_device).st_dev != os.stat(tmp_path).st_dev:
        target = tempfile.mkdtemp(dir=other_device)
        try:
            os.symlink(target, tmp_path / "link")
            hf_clip.export(word_level, str(tmp_path / "link"))
            oc_convert.export(word_level, str(tmp_path / "link"))
            assert sorted(os.listdir(target)) == ["open_clip_config.json", "open_clip_model.safetensors",
                                                  "tokenizer.json"]
        finally:
            shutil.rmtree(target)


def test_truncated_tokenizer_files_are_one_line_naming_them(hf_dir, open_clip_dirs, tmp_path):
    def truncate(file):
        with open(file, "rb") as f:
            data = f.read()
        with open(file, "wb") as f:
            f.write(data[: len(data) // 2])

    hf = str(tmp_path / "hf")
    shutil.copytree(hf_dir, hf)
    truncate(os.path.join(hf, "tokenizer.json"))
    with pytest.raises(ValueError, match=r"hf/tokenizer\.json is not a readable tokenizer file \(") as error:
        load_pretrained(hf)
    assert "\n" not in str(error.value)
    open_clip_copy = str(tmp_path / "open_clip")
    shutil.copytree(open_clip_dirs[False], open_clip_copy)
    shutil.copy(open_clip.tokenizer.default_bpe(), open_clip_copy)
    truncate(os.path.join(open_clip_copy, "bpe_simple_vocab_16e6.txt.gz"))
    with pytest.raises(ValueError, match=r"bpe_simple_vocab_16e6\.txt\.gz is not a readable tokenizer file") as error:
        load_pretrained(open_clip_copy)
    assert "\n" not in str(error.value)


def _mmjax(*args):
    return subprocess.run([sys.executable, "-m", "mmjax.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_convert_open_clip_to_hf_and_refuses_pickles(open_clip_dirs, tmp_path):
    out = str(tmp_path / "hf")
    result = _mmjax("convert", open_clip_dirs[False], "--to", "hf", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "-> " + out in result.stdout and "CLIP" in result.stdout
    assert transformers.CLIPConfig.from_pretrained(out).vision_config.hidden_act == "gelu"
    pickled = str(tmp_path / "pickled")
    shutil.copytree(open_clip_dirs[False], pickled)
    os.rename(os.path.join(pickled, "open_clip_model.safetensors"), os.path.join(pickled, "open_clip_pytorch_model.bin"))
    refused = _mmjax("convert", pickled, "--to", "open_clip", "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("mmjax: error: ") and "--allow_pickle" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
