"""Fine-tuning: a run whose `config.model` names a pretrained checkpoint instead of a registered model.

    mmjax train --config configs/finetune.py --workdir runs/ft --config.model=hf:openai/clip-vit-base-patch32 ...

`config.model` takes what `mmjax.load_pretrained` loads: `hf:ORG/NAME`, a Hugging Face or OpenCLIP directory,
`open_clip:MODEL` (with `config.pretrained.weights`), a big_vision `.npz` (`config.pretrained.tokenizer`). The run
starts from the checkpoint's parameters (a fresh optimizer state) and trains with its tokenizer and its image mean
and std, at its image size or at `config.pretrained.image_size` (position embeddings interpolated). The config's
`model_options` (`scan_layers`, `remat_policy`, `dtype`, `attention`) apply on top of the checkpoint's own
activation and norm epsilon.

The workdir keeps what the run needs afterwards, so that resuming, evaluating and converting it read neither the
checkpoint nor the network:

    WORKDIR/pretrained.json                  the source, its format, the model's shape, the tokenizer's
                                             description and the checkpoint's image preprocessing
    WORKDIR/tokenizer.json | tokenizer.model the checkpoint's tokenizer (`mmjax.data.tokenizer_record`)
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np

from mmjax.convert.checks import check_shapes, flatten
from mmjax.convert.layout import scan
from mmjax.data.preprocess import ImagePreprocess
from mmjax.data.tokenizer_record import check_description, load_tokenizer, save_tokenizer
from mmjax.files import write_text_atomically
from mmjax.models import TwoTowerConfig, registry
from mmjax.models.layers import BlockOptions
from mmjax.models.text import TextConfig
from mmjax.models.vit import VisionConfig
from mmjax.parallel import check_tensor_split
from mmjax.parallel.distributed import raise_if_any_failed
from mmjax.train.config import block_options, validate_model
from mmjax.train.state import TrainState, train_state_from_params

PRETRAINED_FILE = "pretrained.json"


def is_finetuning(config: ml_collections.ConfigDict) -> bool:
    """Whether the run's `config.model` names a checkpoint rather than a registered model."""
    return config.model not in registry.list_models()


@dataclasses.dataclass
class Start:
    """What a fine-tuning run starts from. `model`: the checkpoint's shape with the config's model options;
    `params`: its parameters in the layout `model` initialises (NumPy), None when read back from a workdir or
    once placed on the devices."""

    model: TwoTowerConfig
    tokenizer: object
    preprocess: ImagePreprocess
    source: str
    format: str
    params: dict | None = None


def check_before_download(config: ml_collections.ConfigDict, mesh) -> None:
    """For an `hf:` checkpoint, what its config files tell before its weights download, in every process (one line
    from each when any fails): that `config.loss` can train it and `mesh`'s tensor axis can split its heads."""
    from mmjax.pretrained import describe_hf

    if not config.model.startswith("hf:"):
        return
    error = None
    try:
        described, _ = describe_hf(config.model, config.pretrained.image_size or None)
        model = with_options(described, config.model_options)
        validate_model(config, model)
        check_tensor_split(model, mesh)
    except Exception as caught:  # reported by every process alike, below
        error = caught
    raise_if_any_failed(error, jax.process_count())


def load_start(config: ml_collections.ConfigDict) -> Start:
    """The checkpoint `config.model` names, loaded in every process; when any process cannot load it, every
    process raises one line (`process N: …`) instead of the others waiting for it in the first collective."""
    from mmjax.pretrained import load_pretrained

    start, error = None, None
    try:
        files = config.pretrained
        pretrained = load_pretrained(config.model, weights=files.weights or None, tokenizer=files.tokenizer or None,
                                     allow_pickle=files.allow_pickle, image_size=files.image_size or None)
        model = with_options(pretrained.config, config.model_options)
        params = scan(pretrained.params) if model.options.scan_layers else pretrained.params
        start = Start(model, pretrained.tokenizer, pretrained.preprocess, source_name(config.model), pretrained.format,
                      params)
    except Exception as caught:  # reported by every process alike, below
        error = caught
    raise_if_any_failed(error, jax.process_count())
    return start


def source_name(model: str) -> str:
    """`config.model` as `pretrained.json` records it: a path made absolute with its links resolved, a name
    (hf:…, open_clip:…) as it is."""
    return model if model.startswith(("hf:", "open_clip:")) else os.path.realpath(model)


def recorded_source(workdir: str) -> str | None:
    """The source a fine-tuning run in `workdir` recorded, or None when it recorded none (or it cannot be read)."""
    try:
        with open(os.path.join(workdir, PRETRAINED_FILE)) as f:
            source = json.load(f).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, str) else None


def with_options(model: TwoTowerConfig, model_options: ml_collections.ConfigDict) -> TwoTowerConfig:
    """`model` with the run's `model_options` in place of its own scan, remat, dtype and attention."""
    return dataclasses.replace(model, options=dataclasses.replace(model.options, **block_options(model_options)))


def save_start(workdir: str, start: Start) -> None:
    """Writes `WORKDIR/pretrained.json` and the tokenizer file it describes (process 0 of a run)."""
    tokenizer = save_tokenizer(start.tokenizer, workdir)
    record = dict(source=start.source, format=start.format, model=dataclasses.asdict(start.model),
                  tokenizer=tokenizer, preprocess=dataclasses.asdict(start.preprocess))
    write_text_atomically(os.path.join(workdir, PRETRAINED_FILE), json.dumps(record, indent=2))


def read_start(workdir: str, model_options: ml_collections.ConfigDict) -> Start:
    """The `Start` a fine-tuning run in `workdir` recorded, without its parameters, with `model_options`."""
    path = os.path.join(workdir, PRETRAINED_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: {workdir} holds a run fine-tuned from a pretrained checkpoint, "
                                f"whose model and tokenizer are recorded there")
    try:
        with open(path) as f:
            record = json.load(f)
        model = model_config_from_dict(record["model"])
        preprocess = ImagePreprocess(**{key: tuple(value) if isinstance(value, list) else value
                                        for key, value in record["preprocess"].items()})
        source, format_ = record["source"], record["format"]
        check_description(record["tokenizer"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is damaged ({type(error).__name__}: {error})") from None
    return Start(with_options(model, model_options), load_tokenizer(workdir, record["tokenizer"]), preprocess,
                 source, format_)


def model_config_from_dict(fields: dict) -> TwoTowerConfig:
    """Inverse of `dataclasses.asdict` on a `TwoTowerConfig`."""
    return TwoTowerConfig(**{**fields, "vision": VisionConfig(**fields["vision"]), "text": TextConfig(**fields["text"]),
                             "options": BlockOptions(**fields["options"])})


def place_params(params: dict, abstract) -> dict:
    """The checkpoint's NumPy `params` as global arrays with the shardings of `abstract` (a tree of
    `jax.ShapeDtypeStruct`s with shardings, the parameters the model initialises); a one-line ValueError naming
    the first parameter that is missing, extra or of another shape. Each process copies to its devices only the
    slices they hold."""
    check_shapes(params, {path: target.shape for path, target in flatten(abstract).items()}, "the checkpoint")
    return jax.tree.map(
        lambda target, value: jax.make_array_from_callback(
            target.shape, target.sharding, lambda index: np.asarray(value[index], target.dtype)),
        abstract, params)


def with_pretrained_params(state: TrainState, pretrained: dict, tx, shardings: TrainState) -> TrainState:
    """The step-0 `state` with `pretrained` (NumPy subtrees by top-level name: a Flamingo's `vision`, its language
    model's) in place of its own parameters, placed as they are sharded, and a fresh optimizer state."""
    params = {**state.params, **{name: place_params(value, state.params[name]) for name, value in pretrained.items()}}
    return train_state_from_params(params, tx, shardings)
