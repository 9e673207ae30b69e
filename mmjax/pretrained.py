"""Pretrained checkpoints as one bundle: config, parameters, tokenizer and image preprocessing.

    model = mmjax.load_pretrained("hf:openai/clip-vit-base-patch32")
    image_emb = model.encode_image([PIL.Image.open("cat.jpg")])      # [1, 512], unnormalised
    text_emb = model.encode_text(["a photo of a cat", "a photo of a dog"])

Sources: `hf:ORG/NAME[@REVISION]` (downloaded with huggingface_hub), a local Hugging Face
directory (`CLIPModel`, `SiglipModel`: SigLIP and fixed-resolution SigLIP 2), an OpenCLIP directory
(`open_clip_config.json`), an OpenCLIP model name `open_clip:ViT-B-32-quickgelu` with `weights=FILE`, a
big_vision SigLIP or SigLIP 2 `.npz`, or an mmjax training workdir. The format modules live in `mmjax.convert`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Protocol

import jax
import numpy as np
from PIL import Image

from mmjax.convert.jsonfile import json_object, read_json
from mmjax.data.preprocess import ImagePreprocess
from mmjax.inference import check_batch_size
from mmjax.models import TwoTower, TwoTowerConfig


class TextTokenizer(Protocol):
    """What `mmjax.data.tokenizers.Tokenizer` provides: strings → int32 `[N, context_length]`."""

    context_length: int
    eot_id: int
    pad_id: int
    vocab_size: int

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A loaded checkpoint. `params` is the unboxed parameter dict (mmjax layout, unscanned)."""

    config: TwoTowerConfig
    params: dict
    tokenizer: TextTokenizer
    preprocess: ImagePreprocess
    source: str = ""
    format: str = ""

    def __post_init__(self):
        # Ids past the token table embed as NaN (JAX's out-of-bounds gather), with no error.
        if self.tokenizer.vocab_size > self.config.text.vocab_size:
            raise ValueError(f"{self.source or 'the checkpoint'}: its tokenizer has {self.tokenizer.vocab_size} "
                             f"tokens, more than the {self.config.text.vocab_size} rows of the model's token table "
                             f"(the tokenizer of another model?)")

    @property
    def model(self) -> TwoTower:
        return TwoTower(self.config)

    @property
    def logit_scale(self) -> float:
        """The stored (log) temperature parameter; similarities are multiplied by `exp(logit_scale)`."""
        return float(self.params["logit_scale"])

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's learned logit bias; None for CLIP."""
        return float(self.params["logit_bias"]) if "logit_bias" in self.params else None

    @functools.cached_property
    def _device_params(self):
        return jax.device_put(self.params)

    @functools.cached_property
    def _encoders(self):
        model = self.model
        images = jax.jit(lambda p, x: model.apply({"params": p}, x, method=TwoTower.encode_image))
        texts = jax.jit(lambda p, t: model.apply({"params": p}, t, method=TwoTower.encode_text))
        return images, texts

    def _batched(self, fn, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        check_batch_size(batch_size)
        outputs = []
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            size = batch_size if len(inputs) > batch_size else len(chunk)  # one compiled shape per call pattern
            padded = np.zeros((size, *chunk.shape[1:]), chunk.dtype)
            padded[:len(chunk)] = chunk
            outputs.append(np.asarray(fn(self._device_params, padded))[:len(chunk)])
        return np.concatenate(outputs) if outputs else np.zeros((0, self.config.embed_dim), np.float32)

    def encode_image(self, images: Sequence[Image.Image | np.ndarray] | Image.Image | np.ndarray,
                     batch_size: int = 32) -> np.ndarray:
        """PIL images or uint8 `[H, W, 3]` arrays (any sizes; or one PIL image, or an array `[N, H, W, C]`) →
        projected, unnormalised float32 `[N, E]`, after the checkpoint's own preprocessing."""
        return self._batched(self._encoders[0], self.preprocess.batch(images), batch_size)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Strings → projected, unnormalised float32 `[N, E]`, after the checkpoint's own tokenizer."""
        if isinstance(texts, str):
            texts = [texts]
        return self._batched(self._encoders[1], self.tokenizer(list(texts)), batch_size)

    def with_image_size(self, image_size: int) -> Pretrained:
        """The same model for `image_size` px images: the learned position table is interpolated to the new
        patch grid, `image_size // patch_size` a side (OpenCLIP's antialiased bicubic; a class-token row is kept;
        pixels past the last whole patch are not read, as in `VisionConfig`) and the preprocessing re-sized."""
        from mmjax.convert.posemb import resize_position_table

        vision = self.config.vision
        if image_size == vision.image_size:
            return self
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not (
                vision.patch_size <= image_size):
            raise ValueError(f"image size {image_size!r} must be an int of at least the patch size {vision.patch_size}")
        params = dict(self.params)
        if vision.posemb == "learned":
            encoder = dict(params["image_encoder"])
            table = np.asarray(encoder["pos_embed"]["embedding"])
            encoder["pos_embed"] = {"embedding": resize_position_table(
                table, image_size // vision.patch_size, has_cls=vision.pool == "cls")}
            params["image_encoder"] = encoder
        config = dataclasses.replace(self.config, vision=dataclasses.replace(vision, image_size=image_size))
        return dataclasses.replace(self, config=config, params=params, preprocess=self.preprocess.with_size(image_size))


def download_hf(repo: str, allow_pickle: bool = False, *, weights: bool = True) -> str:
    """The local directory of Hugging Face Hub repository `repo` (`ORG/NAME[@REVISION]`), downloaded with
    huggingface_hub: its configs, tokenizer files and weights (pickled ones only with `allow_pickle`; without
    `weights`, its JSON files only)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError("hf: sources need huggingface_hub (pip install huggingface_hub)") from None
    name, _, revision = repo.partition("@")
    patterns = ["*.json"]
    if weights:
        patterns += ["*.txt", "*.model", "*.safetensors", "*.npz", "*.gz"]
    if weights and allow_pickle:
        patterns += ["*.bin", "*.pt", "*.pth"]
    try:
        return snapshot_download(name, revision=revision or None, allow_patterns=patterns)
    except Exception as error:  # network, authentication, missing repository: one line
        raise ValueError(f"could not download {repo} from the Hugging Face Hub: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def _directory_format(path: str):
    """The `mmjax.convert` module that reads directory `path` (`hf_clip`, `hf_siglip`, `open_clip`), or None for an
    mmjax workdir; a one-line error for anything else."""
    if os.path.isfile(os.path.join(path, "open_clip_config.json")):
        from mmjax.convert import open_clip
        return open_clip
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path} has neither config.json (Hugging Face, mmjax workdir) "
                                "nor open_clip_config.json (OpenCLIP)")
    config = read_json(config_path)
    model_type = config.get("model_type")
    if model_type == "clip":
        from mmjax.convert import hf_clip
        return hf_clip
    if model_type == "siglip":
        from mmjax.convert import hf_siglip
        return hf_siglip
    if model_type == "siglip2":
        raise ValueError(f"{config_path}: SigLIP 2 NaFlex (model_type 'siglip2', native aspect ratio) is not supported; "
                         f"the fixed-resolution SigLIP 2 checkpoints (model_type 'siglip', e.g. "
                         f"google/siglip2-base-patch16-224) load")
    if model_type is not None:
        raise ValueError(f"{config_path}: model_type {model_type!r} is not supported (clip, siglip)")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return None
    raise ValueError(f"{config_path} is neither a Hugging Face config (no model_type) nor an mmjax workdir's "
                     "(no checkpoints/)")


def _load_directory(path: str, allow_pickle: bool) -> Pretrained:
    converter = _directory_format(path)
    return _load_workdir(path) if converter is None else converter.load(path, allow_pickle=allow_pickle)


def _check_hf_before_weights(path: str, repo: str) -> str | None:
    """What Hub repository `repo` (JSON files downloaded to `path`) holds, checked before its weights download:
    its model and preprocessing config, and for an OpenCLIP SigLIP its tokenizer, which OpenCLIP's `hf-hub:` reads
    from the repository `text_cfg.hf_tokenizer_name` names (e.g. `timm/ViT-L-16-SigLIP-256` names
    `timm/ViT-B-16-SigLIP`; unpinned, as OpenCLIP reads it). Returns that tokenizer's directory (None for any other
    checkpoint)."""
    from mmjax.convert import open_clip, open_clip_siglip

    converter = _directory_format(path)
    if converter is None:  # an mmjax workdir
        return None
    config, _ = converter.describe(path)
    if converter is not open_clip:
        return None
    model_cfg, _, config_path = open_clip.read_spec(path)
    if not open_clip_siglip.is_siglip(model_cfg, config_path):
        return None
    name = json_object(model_cfg, "text_cfg", config_path).get("hf_tokenizer_name")
    tokenizer_dir = path
    if isinstance(name, str) and name and name != repo.partition("@")[0]:
        try:
            tokenizer_dir = download_hf(name, weights=False)
        except ValueError as error:
            raise ValueError(f"{config_path}: text_cfg.hf_tokenizer_name: {error}") from None
    open_clip_siglip.tokenizer_from_dir(tokenizer_dir, model_cfg, config.text.context_length, config_path)
    return tokenizer_dir


def describe_hf(source: str, image_size: int | None = None) -> tuple[TwoTowerConfig, ImagePreprocess]:
    """The model config and image preprocessing of `hf:ORG/NAME[@REVISION]` (at `image_size` px when given, as
    `load_pretrained` would resize it), from its JSON files alone: what a caller can check before the weights
    download."""
    path = download_hf(source[len("hf:"):], weights=False)
    converter = _directory_format(path)
    if converter is None:
        raise ValueError(f"{source} holds an mmjax workdir, which loads from a local directory only")
    config, preprocess = converter.describe(path)
    if image_size is None or image_size == config.vision.image_size:
        return config, preprocess
    return (dataclasses.replace(config, vision=dataclasses.replace(config.vision, image_size=image_size)),
            preprocess.with_size(image_size))


def _load_workdir(workdir: str) -> Pretrained:
    from mmjax.convert.layout import to_numpy, unscan
    from mmjax.train.workdir import check_kind, load_trained

    check_kind(workdir, captioner=False)
    trained = load_trained(workdir)
    config = trained.model.config
    if not isinstance(config, TwoTowerConfig):
        raise ValueError(f"{workdir} holds a FLAVA run ({trained.config.model}): loading and converting handle CLIP "
                         f"and SigLIP models; evaluate it with mmjax eval --model {workdir}")
    params = unscan(to_numpy(trained.params))
    config = dataclasses.replace(config, options=dataclasses.replace(config.options, scan_layers=False))
    return Pretrained(config, params, trained.tokenizer, trained.preprocess, workdir, "mmjax")


def is_pretrained_source(source: str) -> bool:
    """Whether `source` names a checkpoint other than an mmjax training workdir: `hf:` and `open_clip:` names, a
    `.npz` file, or a directory holding `open_clip_config.json` or a Hugging Face `config.json` (one with a
    `model_type`). Anything else is taken for a workdir (and a missing one reported as such)."""
    source = os.fspath(source)
    if source.startswith(("hf:", "open_clip:")) or source.endswith(".npz"):
        return True
    if os.path.isfile(os.path.join(source, "open_clip_config.json")):
        return True
    config_path = os.path.join(source, "config.json")
    if not os.path.isfile(config_path):
        return False
    try:
        config = read_json(config_path)
    except ValueError:  # a damaged config.json: the workdir path reports it
        return False
    return "model_type" in config


SOURCES_HELP = ("hf:ORG/NAME, a Hugging Face or OpenCLIP directory, open_clip:MODEL with weights=FILE, "
                "a big_vision .npz file, or an mmjax workdir")


def load_pretrained(source: str, *, image_size: int | None = None, allow_pickle: bool = False,
                    weights: str | None = None, tokenizer: str | None = None) -> Pretrained:
    """Load a checkpoint (see the module docstring for `source`).

    image_size: run at another resolution (position embeddings interpolated).
    allow_pickle: read `.bin` / `.pt` weights with `torch.load(weights_only=True)`; refused otherwise.
    weights: the weights file of an `open_clip:MODEL` source.
    tokenizer: the SentencePiece model of a big_vision `.npz` (default: the `.model` file beside it).
    """
    source = os.fspath(source)
    if weights is not None and not source.startswith("open_clip:"):  # checked before any download or load
        raise ValueError("weights= is only for open_clip:MODEL sources")
    if tokenizer is not None and not source.endswith(".npz"):
        raise ValueError("tokenizer= is only for big_vision .npz sources")
    if source.startswith("hf:"):
        tokenizer_dir = _check_hf_before_weights(download_hf(source[3:], weights=False), source[3:])
        path = download_hf(source[3:], allow_pickle)
        if tokenizer_dir is None:
            pretrained = _load_directory(path, allow_pickle)
        else:
            from mmjax.convert import open_clip
            pretrained = open_clip.load(path, allow_pickle=allow_pickle, tokenizer_dir=tokenizer_dir)
    elif source.startswith("open_clip:"):
        from mmjax.convert import open_clip
        if weights is None:
            raise ValueError(f"{source} needs a weights file (weights=FILE, --weights FILE)")
        pretrained = open_clip.load_named(source[len("open_clip:"):], weights, allow_pickle=allow_pickle)
    elif os.path.isdir(source):
        pretrained = _load_directory(source, allow_pickle)
    elif source.endswith(".npz"):
        from mmjax.convert import big_vision
        pretrained = big_vision.load(source, tokenizer=tokenizer)
    elif not os.path.exists(source):
        raise FileNotFoundError(f"{source} does not exist (expected {SOURCES_HELP})")
    else:
        raise ValueError(f"{source}: cannot tell the checkpoint format (expected {SOURCES_HELP})")
    pretrained = dataclasses.replace(pretrained, source=source)
    return pretrained if image_size is None else pretrained.with_image_size(image_size)
