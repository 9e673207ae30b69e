"""The model a command (`eval`, `embed`, `search`, `classify`, `data filter`) runs: an mmjax training workdir, or
a pretrained checkpoint (`mmjax.load_pretrained`'s sources: hf:ORG/NAME, a Hugging Face or OpenCLIP directory,
open_clip:MODEL with --weights, a big_vision .npz).

A workdir runs as it trained (its checkpoint's step, its data's mean and std, the centre crop of its evaluation; a
run fine-tuned from a pretrained checkpoint, that checkpoint's resize and crop); a pretrained checkpoint as its
reference library runs it (its own resize, crop, mean, std and tokenizer).
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

from mmjax.data.preprocess import ImagePreprocess

# The flags only a pretrained checkpoint reads (as `mmjax convert` spells them).
PRETRAINED_FLAGS = ("weights", "tokenizer", "allow_pickle", "image_size")
DEFAULT_BATCH_SIZE = 64  # a pretrained checkpoint's; a workdir's is its config.eval.batch_size


def define_source_flags() -> None:
    """The flags only a pretrained checkpoint reads (`PRETRAINED_FLAGS`)."""
    flags.DEFINE_string("weights", None, "Weights file of an open_clip:MODEL --model.")
    flags.DEFINE_string("tokenizer", None, "SentencePiece model of a big_vision .npz --model "
                        "(default: the .model file beside it).")
    flags.DEFINE_bool("allow_pickle", False, "Read pickle-based .bin/.pt weights (with torch.load(weights_only=True)).")
    flags.DEFINE_integer("image_size", None, "Run a pretrained checkpoint at this image size (its position "
                         "embeddings interpolated, its resize made to this size).", lower_bound=1)


def define_flags() -> None:
    """`define_source_flags` and --batch_size."""
    define_source_flags()
    flags.DEFINE_integer("batch_size", None, "Images (and texts) per jitted batch (default: a workdir's "
                         f"config.eval.batch_size; {DEFAULT_BATCH_SIZE} for a pretrained checkpoint).", lower_bound=1)


def model_name(source: str) -> str:
    """What an index records as its model: a local path made absolute, a name (hf:…, open_clip:…) as it is."""
    from mmjax.pretrained import is_pretrained_source

    source = os.fspath(source)
    if is_pretrained_source(source) and not os.path.exists(source):
        return source
    return os.path.abspath(source)


def refuse_pretrained_flags(workdir: str) -> None:
    """A one-line ValueError when a flag only a pretrained checkpoint reads is given with a training workdir."""
    given = [name for name in PRETRAINED_FLAGS if flags.FLAGS[name].present]
    if given == ["image_size"]:
        raise ValueError(f"--image_size applies to a pretrained checkpoint; the training workdir {workdir} runs at "
                         f"the size it trained at")
    if given:
        raise ValueError(f"--{given[0]} applies to a pretrained checkpoint (open_clip:MODEL, a big_vision .npz, "
                         f"pickled weights), not to the training workdir {workdir}")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """encoder: an `mmjax.inference.Encoder`; preprocess: the resize and crop (`preprocess.resized`) its images
    get; params: the parameters (`logit_scale`, SigLIP's `logit_bias`); name: `model_name(source)`; step: a
    workdir's checkpoint step ("" for a pretrained checkpoint); format: "mmjax" for a workdir, else
    `Pretrained.format` (`hf_clip`, `hf_siglip`, `open_clip`, `big_vision`); files: the absolute paths of the
    `weights` and `tokenizer` files a pretrained checkpoint was loaded with (those given); image_size: the size
    a pretrained checkpoint was asked to run at (`--image_size`, or the size an index recorded; None: its own)."""

    encoder: object
    preprocess: ImagePreprocess
    params: dict
    name: str
    step: str
    format: str
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    image_size: int | None = None


def load_workdir(workdir: str, *, dtype: str | None = None, progress: bool = False, step: int | None = None,
                 batch_size: int | None = None):
    """`(Encoder, TrainedModel)` of a training workdir at checkpoint `step` (default the latest), with its data's
    mean and std and `batch_size` (default its config.eval.batch_size)."""
    from mmjax.inference import Encoder
    from mmjax.train.workdir import check_kind, load_trained

    check_kind(workdir, captioner=False)
    trained = load_trained(workdir, dtype=dtype, step=step)
    data = trained.config.data
    encoder = Encoder(trained.model, trained.params, trained.tokenizer, data.image_mean, data.image_std,
                      batch_size=batch_size or trained.config.eval.batch_size, progress=progress)
    return encoder, trained


def load_model(source: str, *, dtype: str | None = None, progress: bool = False, step: int | None = None,
               batch_size: int | None = None, files: dict[str, str] | None = None,
               image_size: int | None = None) -> LoadedModel:
    """`source` ready to embed: a workdir at checkpoint `step` (default the latest), or a pretrained checkpoint
    (with the --weights, --tokenizer, --allow_pickle and --image_size flags; `files` gives `weights` /
    `tokenizer` paths and `image_size` a size to use where those flags are not given, e.g. the ones an index
    recorded; at another size, its position embeddings are interpolated: `Pretrained.with_image_size`)."""
    from mmjax.inference import Encoder
    from mmjax.models import TwoTower
    from mmjax.pretrained import is_pretrained_source, load_pretrained

    if not is_pretrained_source(source):
        refuse_pretrained_flags(source)
        encoder, trained = load_workdir(source, dtype=dtype, progress=progress, step=step, batch_size=batch_size)
        return LoadedModel(encoder, trained.preprocess, trained.params, model_name(source), str(trained.step),
                           "mmjax")
    files = {name: os.path.abspath(path) for name, path in
             {**(files or {}), **{name: flags.FLAGS[name].value for name in ("weights", "tokenizer")
                                  if flags.FLAGS[name].value}}.items() if path}
    image_size = flags.FLAGS.image_size or image_size
    pretrained = load_pretrained(source, weights=files.get("weights"), tokenizer=files.get("tokenizer"),
                                 allow_pickle=flags.FLAGS.allow_pickle, image_size=image_size)
    config = pretrained.config
    if dtype is not None:
        config = dataclasses.replace(config, options=dataclasses.replace(config.options, dtype=dtype))
    preprocess = pretrained.preprocess
    encoder = Encoder(TwoTower(config), pretrained.params, pretrained.tokenizer, preprocess.mean, preprocess.std,
                      batch_size=batch_size or DEFAULT_BATCH_SIZE, progress=progress)
    return LoadedModel(encoder, preprocess, pretrained.params, model_name(source), "", pretrained.format, files,
                       image_size)
