"""big_vision SigLIP and SigLIP 2 checkpoints (`.npz`) → mmjax.

big_vision saves a two-tower model (`models/proj/image_text/two_towers.py`) as one `.npz`
whose keys are the '/'-joined parameter paths (`utils.tree_flatten_with_names`), with or
without a leading `params/`:

    img/embedding/{kernel,bias}           patch conv [p, p, 3, W]  (models/vit.py)
    img/pos_embedding                     [1, N, W]
    img/Transformer/encoderblock_{i}/...  LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out},
                                          LayerNorm_1, MlpBlock_0/Dense_{0,1}; scanned models store one
                                          `encoderblock/...` with a leading depth axis
    img/Transformer/encoder_norm          final LayerNorm
    img/MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}
    txt/Embed_0/embedding [V, W], txt/pos_embedding [1, L, W]   (models/proj/image_text/text_transformer.py)
    txt/Encoder_0/encoderblock_{i}/..., txt/Encoder_0/encoder_norm, txt/head/{kernel,bias}
    t [1] (log temperature), b [1] (bias)

Flax layouts equal mmjax's, so the mapping only renames and drops the leading 1 of the
position tables and scalars (`export` writes them back). The architecture is read from the
shapes (width, depth, heads, MLP size, patch, image size, vocabulary, context length);
activation (tanh GELU) and LayerNorm eps (1e-6) are big_vision's defaults. The SentencePiece model is not in the
checkpoint: pass it (`tokenizer=`), or keep it next to the `.npz`. SigLIP 2's fixed-resolution
checkpoints are SigLIP's architecture with a 256k Gemma vocabulary; the tokenizer tells them apart.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Mapping

import numpy as np

from mmjax.convert import checks, hf_siglip, layout
from mmjax.convert.export_dir import staged_export
from mmjax.convert.tensors import read_tensors
from mmjax.data.open_clip_hf_tokenizer import OpenClipHfTokenizer
from mmjax.data.preprocess import ImagePreprocess
from mmjax.data.sentencepiece_tokenizer import GEMMA_EOS, GEMMA_PAD, SentencePieceTokenizer
from mmjax.models.layers import sincos_2d
from mmjax.models.two_tower import TwoTowerConfig
from mmjax.pretrained import Pretrained

TOWERS = {"img": "img/Transformer", "txt": "txt/Encoder_0"}
GEMMA_VOCAB_SIZE = 256_000  # SigLIP 2's text table; SigLIP's are 32 000 (c4_en) and 250 000 (mc4)
_SCANNED = re.compile(r"^(img/Transformer|txt/Encoder_0)/encoderblock/(.*)$")
TOKENIZER_HELP = ("big_vision checkpoints do not contain their tokenizer; pass tokenizer=PATH (--tokenizer) with the "
                  "SentencePiece model the checkpoint was trained with (English SigLIP: c4_en, "
                  "gs://t5-data/vocabs/cc_en.32000/sentencepiece.model; i18n: mc4, "
                  "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model; SigLIP 2: gemma, "
                  "gs://big_vision/gemma_tokenizer.model), or put it next to the .npz")


def normalize_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops a leading `params/`, splits scanned `encoderblock/` stacks into `encoderblock_{i}/`
    and folds the second text position table some old checkpoints carry (`txt/Encoder_0/pos_embedding`)
    into `txt/pos_embedding`, as big_vision's own loader does."""
    out = {}
    for key, value in tensors.items():
        key = key.removeprefix("params/")
        if match := _SCANNED.match(key):
            for i, layer in enumerate(value):
                out[f"{match[1]}/encoderblock_{i}/{match[2]}"] = layer
        else:
            out[key] = value
    if "txt/Encoder_0/pos_embedding" in out and "txt/pos_embedding" in out:
        out["txt/pos_embedding"] = out["txt/pos_embedding"] + out.pop("txt/Encoder_0/pos_embedding")
    return out


def _depth(tensors: Mapping[str, np.ndarray], tower: str) -> int:
    prefix = f"{TOWERS[tower]}/encoderblock_"
    return len({key[len(prefix):].split("/")[0] for key in tensors if key.startswith(prefix)})


def image_size_from_name(path: str, patch: int, grid: int) -> int:
    """The input side of a checkpoint with `grid`×`grid` patches of `patch` px.

    Usually `grid * patch`, but a patch size that does not divide the side (So400m/14 at 384 px:
    27 patches, 6 px unused) is only told by the file name (`webli_en_so400m_384_58765454.npz`):
    the first 3-digit number in it with `number // patch == grid` wins."""
    for number in re.findall(r"(?<!\d)\d{3}(?!\d)", os.path.basename(path)):
        if int(number) // patch == grid:
            return int(number)
    return grid * patch


def infer_config(tensors: Mapping[str, np.ndarray], where: str) -> TwoTowerConfig:
    """The SigLIP architecture of a checkpoint, from its tensor shapes (and its name, for the image size)."""
    if "img/head/kernel" in tensors:
        raise ValueError(f"{where}: an image projection head (img/head) is not supported; SigLIP has none")

    def shape(key: str, rank: int) -> tuple[int, ...]:
        value = layout.take(tensors, key, where).shape
        if len(value) != rank:
            raise ValueError(f"{where}: tensor {key} has shape {value}, not {rank} dimensions")
        return value

    def tower(name: str) -> dict:
        block = f"{TOWERS[name]}/encoderblock_0"
        width, heads, _ = shape(f"{block}/MultiHeadDotProductAttention_0/query/kernel", 3)
        return dict(hidden_size=width, num_hidden_layers=_depth(tensors, name), num_attention_heads=heads,
                    intermediate_size=shape(f"{block}/MlpBlock_0/Dense_0/kernel", 2)[1],
                    hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)

    patch, _, _, _ = shape("img/embedding/kernel", 4)
    grid = round(shape("img/pos_embedding", 3)[-2] ** 0.5)
    vocab_size, text_width = shape("txt/Embed_0/embedding", 2)
    projection = shape("txt/head/kernel", 2)[1] if "txt/head/kernel" in tensors else text_width
    text = dict(tower("txt"), vocab_size=vocab_size, max_position_embeddings=shape("txt/pos_embedding", 3)[-2],
                projection_size=projection)
    vision = dict(tower("img"), image_size=image_size_from_name(where, patch, grid), patch_size=patch)
    return hf_siglip.config_from_hf(dict(model_type="siglip", text_config=text, vision_config=vision), where)


def _block(mm: str, bv: str) -> Iterator[tuple[str, str]]:
    yield f"{mm}/ln_1", f"{bv}/LayerNorm_0"
    yield f"{mm}/ln_2", f"{bv}/LayerNorm_1"
    yield from _attention_mlp(mm, bv)


def _attention_mlp(mm: str, bv: str) -> Iterator[tuple[str, str]]:
    for part in ("query", "key", "value", "out"):
        yield f"{mm}/attn/{part}", f"{bv}/MultiHeadDotProductAttention_0/{part}"
    yield f"{mm}/mlp/fc1", f"{bv}/MlpBlock_0/Dense_0"
    yield f"{mm}/mlp/fc2", f"{bv}/MlpBlock_0/Dense_1"


def modules(config: TwoTowerConfig) -> list[tuple[str, str]]:
    """`(mmjax module path, big_vision module path)`; every parameter below them keeps its name
    (`kernel`, `bias`; LayerNorm `scale`, `bias`)."""
    rows = [("image_encoder/patch_embed/conv", "img/embedding")]
    for tower, mm_tower, depth in (("img", "image_encoder", config.vision.depth),
                                   ("txt", "text_encoder", config.text.depth)):
        for i in range(depth):
            rows += _block(f"{mm_tower}/encoder/layers_{i}", f"{TOWERS[tower]}/encoderblock_{i}")
    rows += [("image_encoder/ln_post", "img/Transformer/encoder_norm"),
             ("image_encoder/map_head/ln", "img/MAPHead_0/LayerNorm_0"),
             *_attention_mlp("image_encoder/map_head", "img/MAPHead_0"),
             ("text_encoder/ln_final", "txt/Encoder_0/encoder_norm"),
             ("text_proj", "txt/head")]
    return rows


def params_from_big_vision(tensors: Mapping[str, np.ndarray], config: TwoTowerConfig, where: str) -> dict:
    """mmjax params (nested float32 NumPy) from normalised big_vision tensors (`normalize_names`).

    Raises a one-line ValueError naming the first missing tensor, a tensor the model does
    not use, or the first parameter whose shape does not fit."""
    if "txt/head/kernel" not in tensors:  # i18n B/16 256: no text head; the identity keeps the text features
        tensors = {**tensors, "txt/head/kernel": np.eye(config.text.width, dtype=np.float32),
                   "txt/head/bias": np.zeros(config.text.width, np.float32)}
    used = set()

    def take(key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        used.add(key)
        return layout.take(tensors, key, where, shape)

    expected = checks.expected_shapes(config)
    flat = {
        "image_encoder/pos_embed/embedding": take("img/pos_embedding")[0],
        "image_encoder/map_head/probe": take("img/MAPHead_0/probe"),
        "text_encoder/token_embed/embedding": take("txt/Embed_0/embedding"),
        "text_encoder/pos_embed/embedding": take("txt/pos_embedding")[0],
        "logit_scale": take("t", ()),
        "logit_bias": take("b", ()),
    }
    for mm, bv in modules(config):
        for name in ("kernel", "bias", "scale"):
            if f"{mm}/{name}" in expected:
                flat[f"{mm}/{name}"] = take(f"{bv}/{name}")
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"{where}: tensor {unused[0]} is not used by the SigLIP model")
    params = checks.unflatten(flat)
    checks.check_shapes(params, expected, where)
    return params


def find_tokenizer(npz_path: str) -> str:
    """The SentencePiece model next to a checkpoint: `NAME.model` for `NAME.npz`, else the only `*.model`."""
    stem = os.path.splitext(npz_path)[0] + ".model"
    if os.path.isfile(stem):
        return stem
    candidates = glob.glob(os.path.join(glob.escape(os.path.dirname(os.path.abspath(npz_path))), "*.model"))
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(f"{npz_path}: {TOKENIZER_HELP}")


def load(path: str, *, tokenizer: str | None = None, image_size: int | None = None,
         allow_pickle: bool = False) -> Pretrained:
    """A big_vision SigLIP `.npz` (+ its SentencePiece model) → `Pretrained`.

    Text: lower-cased (ASCII, as `tf.strings.lower`), SentencePiece, `</s>` appended and kept
    when truncated, padded with `</s>` (big_vision's `tokenize(eos="sticky", pad_value=1)`); with
    SigLIP 2's Gemma model, `<eos>` appended and kept, padded with `<pad>` (`tok(bos="no", eos="sticky")`).
    Images: resized to S×S (bilinear), scaled to [−1, 1] (`value_range(-1, 1)`).
    allow_pickle is accepted for a uniform signature; `.npz` files are read without pickles.
    """
    del allow_pickle
    path = os.fspath(path)
    tensors = normalize_names(read_tensors(path))
    config = infer_config(tensors, path)
    params = params_from_big_vision(tensors, config, path)
    spm_path = tokenizer if tokenizer is not None else find_tokenizer(path)
    text_tokenizer = SentencePieceTokenizer.for_siglip(spm_path, config.text.context_length, "big_vision")
    if config.text.vocab_size == GEMMA_VOCAB_SIZE and not text_tokenizer.is_gemma:
        raise ValueError(f"{path}: its {GEMMA_VOCAB_SIZE:,}-token table is Gemma's (SigLIP 2), but the tokenizer "
                         f"{spm_path} is not (no <eos> piece): pass gs://big_vision/gemma_tokenizer.model")
    preprocess = ImagePreprocess(config.vision.image_size, (0.5,) * 3, (0.5,) * 3, mode="squash",
                                 interpolation="bilinear_tf")
    pretrained = Pretrained(config=config, params=params, tokenizer=text_tokenizer, preprocess=preprocess,
                            source=path, format="big_vision")
    return pretrained.with_image_size(image_size) if image_size else pretrained


# --- export ---------------------------------------------------------------------------------------------------

ACTIVATION, NORM_EPS = "gelu_tanh", 1e-6  # what `load` assumes: big_vision's defaults


def export_stem(config: TwoTowerConfig) -> str:
    """The file name an export writes, without `.npz` / `.model`: `siglip_{image size}`, which tells `load` the
    image size when the patch size does not divide it (`image_size_from_name`)."""
    return f"siglip_{config.vision.image_size}"


def _big_vision_end_and_padding(tokenizer: SentencePieceTokenizer) -> tuple[str, str] | None:
    """The end-of-text and padding pieces big_vision (and `load`) use with `tokenizer`'s SentencePiece model: its
    own end-of-sentence piece, padded with itself, or with `<pad>` for Gemma's `<eos>` (`for_siglip`); None when
    the model has no end-of-sentence piece."""
    if tokenizer.backend.eos_id() < 0:
        return None
    end = tokenizer.backend.id_to_piece(tokenizer.backend.eos_id())
    return end, GEMMA_PAD if end == GEMMA_EOS else end


def check_exportable(pretrained: Pretrained) -> None:
    """A one-line ValueError when `load` would not read `pretrained`'s export as the same model: a SigLIP that
    transformers' `SiglipModel` can express, computing with tanh GELU and LayerNorm eps 1e-6, reading text with a
    SentencePiece model padded as big_vision pads, and images squashed to its size and scaled to [−1, 1]."""
    config, tokenizer, preprocess = pretrained.config, pretrained.tokenizer, pretrained.preprocess
    hf_siglip.check_exportable(config, "a big_vision SigLIP")
    vision = config.vision
    grid = vision.image_size // vision.patch_size
    sentencepiece = isinstance(tokenizer, SentencePieceTokenizer)
    own = (tokenizer.eot_token, tokenizer.pad_token) if sentencepiece else None
    expected = _big_vision_end_and_padding(tokenizer) if sentencepiece else None
    problems = [
        *[(opts.activation != ACTIVATION, f"its {tower} tower's activation {opts.activation!r}, not {ACTIVATION!r}")
          for tower, opts in (("image", config.options), ("text", config.text_options))],
        (config.options.norm_eps != NORM_EPS, f"LayerNorm eps {config.options.norm_eps}, not {NORM_EPS}"),
        (not sentencepiece, f"its tokenizer is a {type(tokenizer).__name__}, not a SentencePiece model"
                            + (" (a SigLIP 2 from a transformers directory reads its tokenizer.json: export its "
                               "big_vision .npz)" if config.text.vocab_size == GEMMA_VOCAB_SIZE
                               and not isinstance(tokenizer, OpenClipHfTokenizer) else "")),
        (sentencepiece and expected is None, "its SentencePiece model has no end-of-sentence piece, which big_vision "
                                             "ends every text with"),
        (own != expected, f"its tokenizer ends texts with {own and own[0]!r} and pads with {own and own[1]!r}, "
                          f"big_vision with {expected and expected[0]!r} and {expected and expected[1]!r}"),
        (preprocess.mode != "squash" or not (np.allclose(preprocess.mean, 0.5) and np.allclose(preprocess.std, 0.5)),
         f"it reads images resized with mode {preprocess.mode!r}, mean {tuple(preprocess.mean)} and std "
         f"{tuple(preprocess.std)}; big_vision's SigLIP squashes them and scales them to [-1, 1] (mean and std 0.5)"),
        (image_size_from_name(export_stem(config), vision.patch_size, grid) != vision.image_size,
         f"its image size {vision.image_size} is not a whole number of {vision.patch_size} px patches, which only a "
         f"3-digit size in the file name tells"),
    ]
    for bad, why in problems:
        if bad:
            raise ValueError(f"cannot export as a big_vision SigLIP: {why}")


def export_caveats(pretrained: Pretrained) -> list[str]:
    """What big_vision (and `load`) do otherwise than `pretrained` with its export, each as the end of a sentence
    about it: the resize filter and the clean-up of texts before SentencePiece (how images that are not RGB become
    RGB: `image_processor.colour_caveat(preprocess, "big_vision")`)."""
    caveats = []
    if pretrained.preprocess.interpolation != "bilinear_tf":
        caveats.append(f"resizes images with the {pretrained.preprocess.interpolation} filter; big_vision resizes "
                       f"with TensorFlow's bilinear one, so pixel values differ slightly there")
    cleaning = {"hf": "lower-cases texts and removes their punctuation (transformers' SiglipTokenizer)",
                "lowercase": "lower-cases every letter of a text (transformers' Siglip2Tokenizer)"}
    normalization = getattr(pretrained.tokenizer, "normalization", "big_vision")
    if normalization != "big_vision":
        caveats.append(f"{cleaning[normalization]}; big_vision lower-cases A-Z only, so texts with punctuation or "
                       f"other capitals get other ids there")
    return caveats


def params_to_big_vision(params, config: TwoTowerConfig) -> dict[str, np.ndarray]:
    """big_vision tensors (float32 NumPy, named as `load` and big_vision read them) from unscanned mmjax params;
    a fixed sine-cosine position table (`posemb="sincos2d"`) is written as the learned table it equals."""
    flat = {key: np.asarray(value, np.float32) for key, value in checks.flatten(params).items()}
    if config.vision.posemb == "sincos2d":
        flat["image_encoder/pos_embed/embedding"] = sincos_2d(config.vision.image_size // config.vision.patch_size,
                                                              config.vision.width)
    names = {"image_encoder/pos_embed/embedding": "img/pos_embedding", "image_encoder/map_head/probe":
             "img/MAPHead_0/probe", "text_encoder/token_embed/embedding": "txt/Embed_0/embedding",
             "text_encoder/pos_embed/embedding": "txt/pos_embedding", "logit_scale": "t", "logit_bias": "b"}
    for mm, bv in modules(config):
        names.update({f"{mm}/{name}": f"{bv}/{name}" for name in ("kernel", "bias", "scale") if f"{mm}/{name}" in flat})
    unnamed = sorted(set(flat) - set(names))
    if unnamed:
        raise ValueError(f"cannot export as a big_vision SigLIP: parameter {unnamed[0]} has no big_vision name")
    leading_one = {"img/pos_embedding", "txt/pos_embedding", "t", "b"}  # big_vision's [1, N, W] tables, [1] scalars
    return {bv: flat[mm][None] if bv in leading_one else flat[mm] for mm, bv in names.items()}


def export(pretrained: Pretrained, out_dir: str) -> None:
    """Writes `siglip_{image size}.npz` (the parameters as big_vision's released SigLIP checkpoints hold them,
    without a `params/` prefix) and the SentencePiece model beside it as `siglip_{image size}.model`, all at once
    (`staged_export`); `load` and big_vision's `utils.load_params` read the `.npz`."""
    check_exportable(pretrained)
    config = pretrained.config
    tensors = params_to_big_vision(layout.unscan(layout.to_numpy(pretrained.params)), config)
    stem = export_stem(config)
    with staged_export(out_dir) as staging:
        np.savez(os.path.join(staging, stem + ".npz"), **tensors)
        pretrained.tokenizer.save(os.path.join(staging, stem + ".model"))
