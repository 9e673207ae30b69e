"""SigLIP checkpoints vs transformers: a random `SiglipModel` saved as a Hugging Face directory and as a
big_vision `.npz` (named as transformers' `convert_siglip_to_hf.py` reads them) must embed images and texts
like transformers' `get_image_features` / `get_text_features`; export must load in transformers as it is."""

import dataclasses
import io
import json
import os
import random
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmjax.commands.convert import exporter  # noqa: E402
from mmjax.convert import big_vision, checks, hf_siglip  # noqa: E402
from mmjax.data.preprocess import ImagePreprocess, resize_bilinear_tf  # noqa: E402
from mmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer  # noqa: E402
from mmjax.data.tokenizers import Tokenizer  # noqa: E402
from mmjax.models import TwoTower, get_config  # noqa: E402
from mmjax.pretrained import Pretrained, load_pretrained  # noqa: E402

VOCAB, WIDTH, CONTEXT, IMAGE, PATCH = 320, 32, 12, 32, 8
TEXTS = ["a photo of a cat", "A DOG, running!", "", "zebra " * 20, "the bird's nest; über café?"]


def _normalized(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _assert_same_direction(actual, expected):
    assert actual.shape == expected.shape
    np.testing.assert_allclose(_normalized(actual), _normalized(expected), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def spiece_path(tmp_path_factory):
    return train_t5_spiece(tmp_path_factory.mktemp("spm"))


def train_t5_spiece(directory) -> str:
    """`directory/spiece.model`, a T5-style (pad 0, </s> 1, <unk> 2, no <s>) unigram SentencePiece model trained
    here."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyzäöüé") for _ in range(rng.randint(1, 8)))
             for _ in range(500)] + ["photo", "cat", "dog", "zebra", "bird", "nest", "über", "café", "running"]
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(2000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=VOCAB,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, num_threads=1, minloglevel=2)
    path = directory / "spiece.model"
    path.write_bytes(model.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def torch_model():
    return random_siglip(VOCAB, CONTEXT, pad_id=1, eos_id=1, bos_id=None, seed=0)


def random_siglip(vocab_size, context_length, *, pad_id, eos_id, bos_id, seed, text_act="gelu_pytorch_tanh",
                  vision_act="gelu_pytorch_tanh"):
    """A random SiglipModel (width 32, 2 layers, 32 px images of 8 px patches) with every parameter (biases,
    probe, scale, bias) perturbed."""
    torch.manual_seed(seed)
    config = transformers.SiglipConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=context_length, pad_token_id=pad_id,
                         eos_token_id=eos_id, bos_token_id=bos_id, hidden_act=text_act),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=IMAGE, patch_size=PATCH, hidden_act=vision_act))
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, torch_model, spiece_path):
    path = str(tmp_path_factory.mktemp("hf_siglip"))
    torch_model.save_pretrained(path)
    transformers.SiglipTokenizer(vocab_file=spiece_path, model_max_length=CONTEXT).save_pretrained(path)
    transformers.SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE}).save_pretrained(path)
    return path


def _images(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(37, 53, 3), (90, 41, 3), (32, 32, 3), (21, 70, 4)]
    return [Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)) for shape in shapes]


def _torch_embeddings(model, directory, images, texts):
    processor = transformers.AutoImageProcessor.from_pretrained(directory, backend="pil")
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    pixels = torch.tensor(processor(images=images, return_tensors="np")["pixel_values"])
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=CONTEXT, return_tensors="pt")
    with torch.no_grad():
        image_emb = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        text_emb = model.get_text_features(input_ids=ids["input_ids"]).pooler_output.numpy()
    return image_emb, text_emb


def test_hf_directory_embeds_like_transformers(hf_dir, torch_model):
    pretrained = load_pretrained(hf_dir)
    assert pretrained.format == "hf_siglip"
    image_ref, text_ref = _torch_embeddings(torch_model, hf_dir, _images(), TEXTS)
    _assert_same_direction(pretrained.encode_image(_images()), image_ref)
    _assert_same_direction(pretrained.encode_text(TEXTS), text_ref)
    np.testing.assert_allclose(pretrained.encode_text(TEXTS), text_ref, rtol=0, atol=1e-4)  # unnormalised too
    assert pretrained.logit_scale == pytest.approx(torch_model.logit_scale.item(), abs=0)
    assert pretrained.logit_bias == pytest.approx(torch_model.logit_bias.item(), abs=0)


def test_export_loads_in_transformers_and_reimports_bit_identical(hf_dir, torch_model, tmp_path):
    pretrained = load_pretrained(hf_dir)
    out = str(tmp_path / "exported")
    hf_siglip.export(pretrained, out)
    reloaded_torch = transformers.SiglipModel.from_pretrained(out).eval()
    image_ref, text_ref = _torch_embeddings(torch_model, hf_dir, _images(1), TEXTS)
    image_out, text_out = _torch_embeddings(reloaded_torch, out, _images(1), TEXTS)
    np.testing.assert_array_equal(image_out, image_ref)
    np.testing.assert_array_equal(text_out, text_ref)
    again = load_pretrained(out)
    for path, value in checks.flatten(pretrained.params).items():
        np.testing.assert_array_equal(checks.flatten(again.params)[path], value, err_msg=path)
    assert again.preprocess == pretrained.preprocess


def test_towers_with_their_own_activations_embed_and_export_as_transformers(spiece_path, tmp_path):
    """An exact-GELU image tower beside a tanh-GELU text tower (each its own `hidden_act`) loads, embeds as
    transformers does, and exports with each tower's activation."""
    torch_model = random_siglip(VOCAB, CONTEXT, pad_id=1, eos_id=1, bos_id=None, seed=3, vision_act="gelu")
    path = str(tmp_path / "mixed")
    torch_model.save_pretrained(path)
    transformers.SiglipTokenizer(vocab_file=spiece_path, model_max_length=CONTEXT).save_pretrained(path)
    transformers.SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE}).save_pretrained(path)
    pretrained = load_pretrained(path)
    assert (pretrained.config.options.activation, pretrained.config.text_activation) == ("gelu", "gelu_tanh")
    image_ref, text_ref = _torch_embeddings(torch_model, path, _images(), TEXTS)
    np.testing.assert_allclose(pretrained.encode_image(_images()), image_ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(pretrained.encode_text(TEXTS), text_ref, rtol=0, atol=1e-4)
    out = str(tmp_path / "exported")
    hf_siglip.export(pretrained, out)
    with open(os.path.join(out, "config.json")) as f:
        written = json.load(f)
    assert (written["vision_config"]["hidden_act"], written["text_config"]["hidden_act"]) == (
        "gelu", "gelu_pytorch_tanh")
    assert load_pretrained(out).config == pretrained.config
    with pytest.raises(ValueError, match="^cannot export as a big_vision SigLIP: its image tower's activation 'gelu'"):
        big_vision.export(pretrained, str(tmp_path / "npz"))


@pytest.mark.parametrize("posemb", ["learned", "sincos2d"])
def test_mmjax_model_exports_to_transformers(tmp_path, posemb):
    """An mmjax-initialised (scanned) SigLIP with a word-level tokenizer and centre-crop preprocessing;
    a fixed sine-cosine position table is exported as the learned table it equals."""
    config = get_config("siglip-test", scan_layers=True)
    config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, posemb=posemb))
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    ids = np.random.default_rng(1).integers(0, 64, size=(2, 8))
    variables = nn.unbox(jax.jit(lambda rng: TwoTower(config).init(rng, image=images, text=ids))(jax.random.key(0)))
    params = jax.tree.map(np.asarray, variables["params"])
    tokenizer = Tokenizer.from_corpus(["a red square", "a blue circle"], context_length=8)
    preprocess = ImagePreprocess(16, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4), resize_size=18)
    hf_siglip.export(Pretrained(config, params, tokenizer, preprocess), str(tmp_path))
    model = transformers.SiglipModel.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        image_ref = model.get_image_features(pixel_values=torch.tensor(images).permute(0, 3, 1, 2)).pooler_output
        text_ref = model.get_text_features(input_ids=torch.tensor(ids)).pooler_output

    def apply(method, inputs):
        return jax.jit(lambda v, x: TwoTower(config).apply(v, x, method=method))(variables, inputs)

    _assert_same_direction(np.asarray(apply(TwoTower.encode_image, images)), image_ref.numpy())
    _assert_same_direction(np.asarray(apply(TwoTower.encode_text, ids)), text_ref.numpy())
    again = load_pretrained(str(tmp_path))
    # transformers crops at (side - S) // 2 and composites transparency onto white: that is what reloads
    assert again.preprocess == ImagePreprocess(16, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4), resize_size=18,
                                               crop_rounding="floor", alpha_on_white=True)
    np.testing.assert_array_equal(again.tokenizer(["a red square"]), tokenizer(["a red square"]))
    assert again.config == get_config("siglip-test")  # unscanned, learned position table
    scanned_layer0 = jax.tree.map(lambda x: x[0], params["text_encoder"]["encoder"]["layers"])
    for path, value in checks.flatten(scanned_layer0).items():
        np.testing.assert_array_equal(
            checks.flatten(again.params)[f"text_encoder/encoder/layers_0/{path}"], value)
    np.testing.assert_array_equal(again.params["logit_bias"], params["logit_bias"])


def test_a_siglip_with_open_clips_tokenizer_is_refused_before_anything_is_written(tmp_path):
    """transformers has no SigLIP tokenizer with OpenCLIP's cleaning that pads with its id 0, which the text tower's
    last-token pooling reads: the export wrote a tokenizer.json that tokenized "A Cat" as capitals."""
    from mmjax.data.clip_bpe import ClipBpeTokenizer

    tokenizer = ClipBpeTokenizer.open_clip(context_length=8)
    config = get_config("siglip-test")
    config = dataclasses.replace(config, text=dataclasses.replace(config.text, vocab_size=tokenizer.vocab_size))
    params = jax.tree.map(np.asarray, nn.unbox(TwoTower(config).init(
        jax.random.key(0), image=np.zeros((1, 16, 16, 3), np.float32), text=np.zeros((1, 8), np.int32)))["params"])
    pretrained = Pretrained(config, params, tokenizer, ImagePreprocess(16))
    with pytest.raises(ValueError, match=r"^cannot export as transformers SiglipModel: its tokenizer is OpenCLIP's"):
        hf_siglip.export(pretrained, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _smooth_images(seed=2):
    rng = np.random.default_rng(seed)
    shapes = [(37, 53), (90, 41), (300, 200), (17, 90)]
    return [Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)).resize(
        shape[::-1], Image.Resampling.BILINEAR) for shape in shapes]


def test_preprocessing_equals_transformers_processor(hf_dir):
    """Exact vs the PIL backend (odd sizes, an RGBA image); within one grey level vs the default
    torchvision-tensor backend on smooth images."""
    preprocess = load_pretrained(hf_dir).preprocess
    assert (preprocess.mode, preprocess.interpolation, preprocess.mean) == ("squash", "bicubic", (0.5, 0.5, 0.5))
    for backend, images, tolerance in (("pil", _images(3), 1e-6), ("torchvision", _smooth_images(), 2.01 / 255)):
        processor = transformers.AutoImageProcessor.from_pretrained(hf_dir, backend=backend)
        expected = processor(images=images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
        np.testing.assert_allclose(preprocess.batch(images), expected, rtol=0, atol=tolerance, err_msg=backend)


def test_one_number_for_the_processors_mean_and_std_is_every_channels(hf_dir, tmp_path):
    """transformers accepts `"image_mean": 0.5`; mmjax raised a TypeError traceback. Other values are one line."""
    path = tmp_path / "scalar"
    shutil.copytree(hf_dir, path)
    config = json.loads((path / "preprocessor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps(config | {"image_mean": 0.25, "image_std": 0.5}))
    image = _images(1)
    expected = transformers.AutoImageProcessor.from_pretrained(path, backend="pil")(
        images=image, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(load_pretrained(str(path)).preprocess.batch(image), expected, rtol=0, atol=1e-6)
    (path / "preprocessor_config.json").write_text(json.dumps(config | {"image_mean": [0.5, 0.5]}))
    with pytest.raises(ValueError, match=r"preprocessor_config.json: image_mean \[0.5, 0.5\] is not a number or a "
                                         r"list of 3 numbers$"):
        load_pretrained(str(path))


def test_wrong_shapes_name_the_parameter(hf_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(hf_dir):
        shutil.copy(os.path.join(hf_dir, name), broken / name)
    config = json.loads((broken / "config.json").read_text())
    config["vision_config"]["image_size"] = 48
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(
            "model.safetensors: tensor vision_model.embeddings.position_embedding.weight has shape (16, 32), "
            "which does not fit parameter image_encoder/pos_embed/embedding (36, 32) of the config")):
        load_pretrained(str(broken))


def _zero_hf_tensors(config):
    return hf_siglip.params_to_hf(jax.tree.map(np.zeros_like, checks.unflatten(
        {k: np.zeros(s, np.float32) for k, s in checks.expected_shapes(config).items()})), config)


def test_missing_tensor_is_named():
    config = get_config("siglip-test")
    tensors = _zero_hf_tensors(config)
    del tensors["vision_model.post_layernorm.weight"]
    with pytest.raises(ValueError, match="weights.safetensors: tensor vision_model.post_layernorm.weight is missing"):
        hf_siglip.params_from_hf(tensors, config, "weights.safetensors")


def test_tensor_the_model_does_not_use_is_named():
    """A checkpoint with a third text layer loaded with a two-layer config.json is refused, not truncated."""
    config = get_config("siglip-test")
    tensors = _zero_hf_tensors(config)
    tensors["text_model.embeddings.position_ids"] = np.arange(config.text.context_length)[None]  # a buffer: ignored
    hf_siglip.params_from_hf(tensors, config, "weights.safetensors")
    tensors["text_model.encoder.layers.2.mlp.fc1.bias"] = np.zeros(config.text.mlp_dim, np.float32)
    with pytest.raises(ValueError, match=re.escape("weights.safetensors: tensor text_model.encoder.layers.2.mlp.fc1."
                                                   "bias is not used by a SiglipModel with this config.json")):
        hf_siglip.params_from_hf(tensors, config, "weights.safetensors")


def _big_vision_npz(torch_model, scanned: bool) -> dict[str, np.ndarray]:
    """A big_vision checkpoint of `torch_model`: the key names of transformers' `convert_siglip_to_hf.py`
    (`create_rename_keys`, `read_in_q_k_v_head`) with its layout rules inverted (it maps a flax kernel
    `[W, H, Dh]` to `reshape(-1, W).T`, a conv `[p, p, 3, W]` by `transpose(3, 2, 0, 1)`, other weights
    by `.T`, position tables `[1, N, W]` by `reshape(-1, W)`)."""
    config = torch_model.config
    state = {key: value.detach().numpy() for key, value in torch_model.state_dict().items()}
    heads, width = config.vision_config.num_attention_heads, config.vision_config.hidden_size
    npz = {"img/embedding/kernel": state["vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
           "img/embedding/bias": state["vision_model.embeddings.patch_embedding.bias"],
           "img/pos_embedding": state["vision_model.embeddings.position_embedding.weight"][None],
           "txt/Embed_0/embedding": state["text_model.embeddings.token_embedding.weight"],
           "txt/pos_embedding": state["text_model.embeddings.position_embedding.weight"][None],
           "txt/head/kernel": state["text_model.head.weight"].T, "txt/head/bias": state["text_model.head.bias"],
           "t": state["logit_scale"], "b": state["logit_bias"]}

    def attention(prefix, hf, weights, biases):
        for part, weight, bias in zip(("query", "key", "value"), weights, biases):
            npz[f"{prefix}/{part}/kernel"] = weight.T.reshape(width, heads, width // heads)
            npz[f"{prefix}/{part}/bias"] = bias.reshape(heads, width // heads)
        npz[f"{prefix}/out/kernel"] = state[f"{hf}.out_proj.weight"].T.reshape(heads, width // heads, width)
        npz[f"{prefix}/out/bias"] = state[f"{hf}.out_proj.bias"]

    def norm_mlp(prefix, hf, norms):
        for bv_norm, hf_norm in norms:
            npz[f"{prefix}/{bv_norm}/scale"] = state[f"{hf}.{hf_norm}.weight"]
            npz[f"{prefix}/{bv_norm}/bias"] = state[f"{hf}.{hf_norm}.bias"]
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            npz[f"{prefix}/MlpBlock_0/{dense}/kernel"] = state[f"{hf}.mlp.{fc}.weight"].T
            npz[f"{prefix}/MlpBlock_0/{dense}/bias"] = state[f"{hf}.mlp.{fc}.bias"]

    for tower, encoder, depth in (("vision_model", "img/Transformer", config.vision_config.num_hidden_layers),
                                  ("text_model", "txt/Encoder_0", config.text_config.num_hidden_layers)):
        for i in range(depth):
            hf = f"{tower}.encoder.layers.{i}"
            attention(f"{encoder}/encoderblock_{i}/MultiHeadDotProductAttention_0", f"{hf}.self_attn",
                      [state[f"{hf}.self_attn.{p}_proj.weight"] for p in "qkv"],
                      [state[f"{hf}.self_attn.{p}_proj.bias"] for p in "qkv"])
            norms = [("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")]
            norm_mlp(f"{encoder}/encoderblock_{i}", hf, norms)
    npz["img/Transformer/encoder_norm/scale"] = state["vision_model.post_layernorm.weight"]
    npz["img/Transformer/encoder_norm/bias"] = state["vision_model.post_layernorm.bias"]
    npz["txt/Encoder_0/encoder_norm/scale"] = state["text_model.final_layer_norm.weight"]
    npz["txt/Encoder_0/encoder_norm/bias"] = state["text_model.final_layer_norm.bias"]
    npz["img/MAPHead_0/probe"] = state["vision_model.head.probe"]
    attention("img/MAPHead_0/MultiHeadDotProductAttention_0", "vision_model.head.attention",
              np.split(state["vision_model.head.attention.in_proj_weight"], 3),
              np.split(state["vision_model.head.attention.in_proj_bias"], 3))
    norm_mlp("img/MAPHead_0", "vision_model.head", [("LayerNorm_0", "layernorm")])
    if scanned:  # like webli_en_so400m_224: one stacked `encoderblock` per tower, and a `params/` prefix
        stacked = {}
        for key in sorted(npz):
            match = re.match(r"(.*)/encoderblock_(\d+)/(.*)", key)
            if match:
                stacked.setdefault(f"{match[1]}/encoderblock/{match[3]}", []).append((int(match[2]), npz.pop(key)))
        npz.update({key: np.stack([v for _, v in sorted(layers)]) for key, layers in stacked.items()})
        npz = {f"params/{key}": value for key, value in npz.items()}
    return npz


def _torch_big_vision_reference(torch_model, spiece_path, images, texts):
    """transformers' forward on big_vision's inputs: value_range(-1, 1) pixels (resized as big_vision resizes,
    `resize_bilinear_tf`, which test_preprocess checks by hand and against JAX), ids of lower-cased text,
    `</s>`-appended and padded."""
    sp = spm.SentencePieceProcessor(model_file=spiece_path)
    ids = np.full((len(texts), CONTEXT), 1, np.int64)
    for row, text in enumerate(texts):
        pieces = sp.encode(text.lower())[:CONTEXT - 1] + [1]
        ids[row, :len(pieces)] = pieces
    pixels = np.stack([resize_bilinear_tf(np.asarray(image.convert("RGB")), (IMAGE, IMAGE))
                       for image in images]).astype(np.float32) / 127.5 - 1
    with torch.no_grad():
        image_emb = torch_model.get_image_features(pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2))
        text_emb = torch_model.get_text_features(input_ids=torch.tensor(ids))
    return image_emb.pooler_output.numpy(), text_emb.pooler_output.numpy()


@pytest.mark.parametrize("scanned", [False, True])
def test_big_vision_npz_embeds_like_transformers(torch_model, spiece_path, tmp_path, scanned):
    path = tmp_path / "webli_test.npz"
    np.savez(path, **_big_vision_npz(torch_model, scanned))
    shutil.copy(spiece_path, tmp_path / "webli_test.model")
    pretrained = load_pretrained(str(path))
    assert pretrained.format == "big_vision"
    assert (pretrained.preprocess.mode, pretrained.preprocess.interpolation) == ("squash", "bilinear_tf")
    texts = ["A Photo of a CAT", "zebra " * 20, "über café"]
    image_ref, text_ref = _torch_big_vision_reference(torch_model, spiece_path, _images(), texts)
    _assert_same_direction(pretrained.encode_image(_images()), image_ref)
    _assert_same_direction(pretrained.encode_text(texts), text_ref)
    assert pretrained.logit_scale == torch_model.logit_scale.item()
    assert pretrained.logit_bias == torch_model.logit_bias.item()
    hf_siglip.export(pretrained, str(tmp_path / "hf"))  # big_vision → transformers: the same tensors
    exported = transformers.SiglipModel.from_pretrained(str(tmp_path / "hf")).state_dict()
    for key, value in torch_model.state_dict().items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)


def test_big_vision_export_is_the_npz_of_transformers_naming_and_loads_back_bit_identical(hf_dir, torch_model,
                                                                                         spiece_path, tmp_path):
    pretrained = load_pretrained(hf_dir)
    out = tmp_path / "bv"
    big_vision.export(pretrained, str(out))
    assert sorted(os.listdir(out)) == ["siglip_32.model", "siglip_32.npz"]
    written, reference = dict(np.load(out / "siglip_32.npz")), _big_vision_npz(torch_model, scanned=False)
    assert sorted(written) == sorted(reference)
    for key, value in reference.items():
        assert (written[key].dtype, written[key].shape) == (np.float32, value.shape), key
        np.testing.assert_array_equal(written[key], value, err_msg=key)
    assert (out / "siglip_32.model").read_bytes() == open(spiece_path, "rb").read()
    reloaded = load_pretrained(str(out / "siglip_32.npz"))
    assert (reloaded.config.vision, reloaded.config.text, reloaded.config.options) == (
        pretrained.config.vision, pretrained.config.text, pretrained.config.options)
    assert jax.tree.structure(reloaded.params) == jax.tree.structure(pretrained.params)
    jax.tree.map(np.testing.assert_array_equal, reloaded.params, pretrained.params)
    # an export into an earlier one of the other format replaces it whole, both ways; other files stay
    (out / "notes.txt").write_text("mine")
    hf_siglip.export(pretrained, str(out))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "notes.txt", "preprocessor_config.json",
                                       "special_tokens_map.json", "spiece.model", "tokenizer_config.json"]
    big_vision.export(pretrained, str(out))
    assert sorted(os.listdir(out)) == ["notes.txt", "siglip_32.model", "siglip_32.npz"]


def _model_without_an_end_piece() -> bytes:
    model = io.BytesIO()
    corpus = ["the quick brown fox jumps over the lazy dog", "a red square beside a blue circle"] * 50
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=28,
                                   model_type="unigram", eos_id=-1, bos_id=-1, pad_id=-1, unk_id=0, num_threads=1,
                                   minloglevel=2)
    return model.getvalue()


def test_a_model_big_vision_would_read_otherwise_is_refused_before_anything_is_written(hf_dir, tmp_path):
    pretrained = load_pretrained(hf_dir)
    config, tokenizer = pretrained.config, pretrained.tokenizer
    for changed, message in [
            (dict(config=dataclasses.replace(config, options=dataclasses.replace(config.options, activation="gelu"))),
             "its image tower's activation 'gelu', not 'gelu_tanh'"),
            (dict(config=dataclasses.replace(config, text_activation="gelu")),
             "its text tower's activation 'gelu', not 'gelu_tanh'"),
            (dict(config=dataclasses.replace(config, options=dataclasses.replace(config.options, norm_eps=1e-5))),
             "LayerNorm eps 1e-05, not 1e-06"),
            (dict(preprocess=dataclasses.replace(pretrained.preprocess, mean=(0.48, 0.46, 0.41))),
             r"it reads images resized with mode 'squash', mean \(0.48, 0.46, 0.41\)"),
            (dict(tokenizer=type(tokenizer)(tokenizer.model_proto, CONTEXT, pad_token="<pad>")),
             "its tokenizer ends texts with '</s>' and pads with '<pad>', big_vision with '</s>' and '</s>'"),
            (dict(tokenizer=type(tokenizer)(tokenizer.model_proto, CONTEXT, eot_token="<unk>")),
             "its tokenizer ends texts with '<unk>' and pads with '<unk>', big_vision with '</s>' and '</s>'"),
            (dict(tokenizer=Tokenizer.for_synthetic(CONTEXT)), "its tokenizer is a Tokenizer, not a SentencePiece "
                                                               "model$"),
            (dict(tokenizer=SentencePieceTokenizer(_model_without_an_end_piece(), CONTEXT, eot_token="<unk>")),
             "its SentencePiece model has no end-of-sentence piece"),
            (dict(config=dataclasses.replace(config, vision=dataclasses.replace(config.vision, image_size=36))),
             "its image size 36 is not a whole number of 8 px patches"),
            (dict(config=dataclasses.replace(config, vision=dataclasses.replace(config.vision, pool="cls"))),
             "its image pooling is 'cls', not 'map'")]:
        with pytest.raises(ValueError, match=f"^cannot export as a big_vision SigLIP: {message}"):
            big_vision.export(dataclasses.replace(pretrained, **changed), str(tmp_path / "out"))
        assert not (tmp_path / "out").exists()
    clip = get_config("clip-test")
    with pytest.raises(ValueError, match="^--to big_vision writes SigLIP models only; use --to hf or --to open_clip"):
        exporter(Pretrained(clip, {}, Tokenizer.for_synthetic(8), ImagePreprocess(16)), "big_vision")


def test_a_sine_cosine_position_table_exports_to_big_vision_as_the_learned_table_it_equals(spiece_path, tmp_path):
    config = get_config("siglip-test")
    config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, posemb="sincos2d"),
                                 text=dataclasses.replace(config.text, vocab_size=VOCAB),
                                 options=dataclasses.replace(config.options, activation="gelu_tanh", norm_eps=1e-6))
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    ids = np.random.default_rng(1).integers(0, VOCAB, size=(2, 8))
    variables = nn.unbox(jax.jit(lambda rng: TwoTower(config).init(rng, image=images, text=ids))(jax.random.key(0)))
    tokenizer = SentencePieceTokenizer.from_file(spiece_path, context_length=8, normalization="big_vision")
    preprocess = ImagePreprocess(16, (0.5,) * 3, (0.5,) * 3, mode="squash", interpolation="bilinear_tf")
    big_vision.export(Pretrained(config, jax.tree.map(np.asarray, variables["params"]), tokenizer, preprocess),
                      str(tmp_path))
    again = load_pretrained(str(tmp_path / "siglip_16.npz"))
    assert again.config.vision.posemb == "learned"
    embed = jax.jit(lambda v, x: TwoTower(config).apply(v, x, method=TwoTower.encode_image))(variables, images)
    reloaded = jax.jit(lambda p, x: again.model.apply({"params": p}, x, method=TwoTower.encode_image))(again.params,
                                                                                                      images)
    np.testing.assert_allclose(np.asarray(reloaded), np.asarray(embed), rtol=1e-5, atol=1e-5)


def test_big_vision_errors_are_one_line(torch_model, spiece_path, tmp_path):
    npz = _big_vision_npz(torch_model, scanned=False)
    np.savez(tmp_path / "alone.npz", **npz)
    with pytest.raises(FileNotFoundError, match="pass tokenizer=PATH"):
        load_pretrained(str(tmp_path / "alone.npz"))
    del npz["img/MAPHead_0/probe"]
    np.savez(tmp_path / "broken.npz", **npz)
    with pytest.raises(ValueError, match="broken.npz: tensor img/MAPHead_0/probe is missing"):
        load_pretrained(str(tmp_path / "broken.npz"), tokenizer=spiece_path)
    # A 2-D query kernel failed unpacking its shape, a `t` of two numbers inside a reshape: neither was named.
    for key, value, message in [
            ("img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel", np.zeros((WIDTH, WIDTH)),
             f"has shape \\({WIDTH}, {WIDTH}\\), not 3 dimensions"),
            ("t", np.zeros(2), "has shape \\(2,\\) but the config needs \\(\\)")]:
        np.savez(tmp_path / "bad.npz", **{**_big_vision_npz(torch_model, scanned=False), key: value})
        with pytest.raises(ValueError, match=f"bad.npz: tensor {key} {message}$"):
            load_pretrained(str(tmp_path / "bad.npz"), tokenizer=spiece_path)
    # A tokenizer with more pieces than the token table has rows: its last ids embedded as NaN, with no error.
    npz = _big_vision_npz(torch_model, scanned=False)
    npz["txt/Embed_0/embedding"] = npz["txt/Embed_0/embedding"][:VOCAB - 40]
    np.savez(tmp_path / "english.npz", **npz)
    with pytest.raises(ValueError, match=f"english.npz: its tokenizer has {VOCAB} tokens, more than the {VOCAB - 40} "
                                         "rows of the model's token table \\(the tokenizer of another model\\?\\)$"):
        load_pretrained(str(tmp_path / "english.npz"), tokenizer=spiece_path)


def test_big_vision_image_size_when_the_patch_does_not_divide_it():
    assert big_vision.image_size_from_name("/ckpt/webli_en_so400m_384_58765454.npz", 14, 27) == 384
    assert big_vision.image_size_from_name("webli_en_b16_224_63724782.npz", 16, 14) == 224
    assert big_vision.image_size_from_name("/data/123/model.npz", 14, 27) == 378  # no hint: grid * patch


@pytest.mark.parametrize("text, vision, message", [
    ({}, {"image_size": None}, r"a value of the wrong type \(int\(\) argument"),
    ({"layer_norm_eps": None}, {"layer_norm_eps": None}, r"a value of the wrong type \(float\(\) argument"),
    ({}, {"hidden_act": ["gelu"]}, r"hidden_act \['gelu'\] is not one of"),
])
def test_siglip_config_values_of_the_wrong_type_are_one_line_naming_the_file(text, vision, message):
    """A JSON null or list where transformers writes a number or a name was a raw TypeError traceback."""
    from mmjax.convert import hf_siglip

    config = {"model_type": "siglip", "text_config": text, "vision_config": vision}
    with pytest.raises(ValueError, match=f"^config.json: {message}") as error:
        hf_siglip.config_from_hf(config)
    assert "\n" not in str(error.value)
