"""The training config: defaults shared by every `configs/*.py` file, and its checks.

A config is an `ml_collections.ConfigDict`, locked so that a misspelt key is an
error. `validate` checks values before anything is compiled and raises
`ConfigError` with one line saying what is wrong and where.
"""

from __future__ import annotations

import difflib
import os
import re

import flax
import ml_collections

from mmjax.data import synthetic
from mmjax.data.arrayrecord_source import READS
from mmjax.data.mixture import usable_weights
from mmjax.data.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from mmjax.data.workers import WORKER_PRIORITIES
from mmjax.models import FlamingoConfig, FlavaConfig, layers, registry
from mmjax.train import multihost

LOSSES = ("clip", "sigmoid", "flava", "captioning")
AUTO_LOSS = "auto"  # the model's own loss (`own_loss`): what configs/finetune.py trains a checkpoint with
DATA_NAMES = ("synthetic", "arrayrecord", "tfds", "mixture")
REMAT_POLICIES = tuple(layers.REMAT_POLICIES)
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


# config.data keys that only real data reads (data.name arrayrecord | tfds | mixture), with their defaults:
# `weights` (mixture only), the TFDS split, the random resized crop, caption choice and limits, and the skip
# limit (stop when more than `max_skip_fraction` of the samples read was skipped, checked at log steps once
# `skip_check_min_samples` samples were read).
REAL_DATA_OPTIONS = dict(weights=(), tfds_split="train", augment=True, crop_scale=(0.9, 1.0),
                         crop_ratio=(3 / 4, 4 / 3), caption_sampling="random", max_caption_chars=1000,
                         max_skip_fraction=0.01, skip_check_min_samples=1000,
                         # How a batch's records are read from ArrayRecord shards (mmjax/data/arrayrecord_source.py):
                         # "auto" (in parallel threads on network storage, one at a time on a local disk),
                         # "parallel" or "single".
                         record_reads="auto")


def base_config(model: str, loss: str) -> ml_collections.ConfigDict:
    """Defaults for contrastive training of `model` with `loss` on the synthetic data."""
    c = ml_collections.ConfigDict()
    c.model = model
    # How the blocks compute (`mmjax.models.layers.BlockOptions`); activation "" and norm_eps 0 keep the registered
    # model's own (a pretrained checkpoint always keeps its own).
    c.model_options = ml_collections.ConfigDict(
        dict(scan_layers=False, remat_policy="none", dtype="float32", attention="xla", activation="", norm_eps=0.0))
    # A Flamingo's vision tower starts from this checkpoint's image tower (an mmjax workdir, hf:ORG/NAME, a Hugging
    # Face or OpenCLIP directory, a big_vision .npz; mmjax/train/vision_tower.py); "": from scratch.
    c.init_vision = ""
    # A Flamingo's language model: this GPT-2 (a transformers directory or hf:ORG/NAME), its shape, weights and BPE
    # (mmjax/train/language_model.py); "": the registered model's, from scratch.
    c.init_language = ""
    # A pretrained `model` (fine-tuning, mmjax/train/finetune.py): the weights of open_clip:MODEL, the SentencePiece
    # model of a big_vision .npz (default: the .model beside it), pickled .bin/.pt weights allowed, and the image
    # size to train at (0: the checkpoint's; another interpolates its position embeddings).
    c.pretrained = ml_collections.ConfigDict(dict(weights="", tokenizer="", allow_pickle=False, image_size=0))
    c.loss = loss
    # Caption j counts as a positive for image i when every attribute it names holds for i
    # (the synthetic data's labels); False is plain one-to-one contrastive training.
    c.multi_positive = True
    c.data = ml_collections.ConfigDict(dict(
        name="synthetic", seed=0, num_workers=1, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
        # CPU priority of the worker processes, "normal" or "idle" (mmjax/data/workers.py: idle can help a step
        # that runs on the CPU beside a light pipeline, and starves the workers next to other busy processes).
        worker_priority="normal",
        # Real data (name arrayrecord | tfds | mixture; see mmjax/data/mixture.py): `sources` are data directories
        # from `mmjax data convert` or "tfds:NAME"; a mixture draws them in the proportions of `weights`.
        sources=(), tfds_data_dir="",
        # "" = the synthetic world's word-level tokenizer, "clip-bpe" = CLIP's BPE, or a fixed-length tokenizer.json
        tokenizer="",
        **REAL_DATA_OPTIONS,
        # Batches placed on the devices ahead of the step (mmjax/train/prefetch.py); 0 = when the step asks.
        prefetch_to_device=2))
    c.seed = 0
    c.batch_size = 256
    # Micro-batches per step: the towers (a captioner) run on batch_size / accum_steps examples at a time and
    # the gradient still equals the full batch's (GradCache for CLIP / SigLIP, mmjax/train/accumulation.py;
    # mmjax/train/flava_accumulation.py).
    c.accum_steps = 1
    c.total_steps = 1000
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=2e-3, warmup_steps=100, final_lr_ratio=0.0,
        b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, clip_norm=1.0,
        # Parameter-path patterns (regular expressions, searched in "a/b/c" paths) without weight decay: biases,
        # norm scales, logit scale/bias, positional and modality embeddings, learned tokens (class, fusion, mask),
        # MAP probe, Perceiver latents, Flamingo's gates (as OpenFlamingo). Only the kernels and the token
        # embeddings decay.
        no_decay=("bias$", "scale$", "pos_embed/", "modality_embed$", "token$", "probe$", "latents$", "_gate$"),
        # Parameter-path patterns of parameters left as they are (no gradient, no update, no optimizer state), e.g.
        # LiT's locked image tower: ("^image_encoder/", "^image_proj/").
        frozen=(),
        # Layer-wise learning-rate decay for fine-tuning (mmjax/train/layer_decay.py): layer i of a tower of L
        # layers steps layer_decay ** (L - i) as far, its embeddings layer_decay ** (L + 1); 1.0 = off.
        layer_decay=1.0,
        # The image and text towers' own decays (EVA-CLIP's visual_ld / text_ld); None (the key left out): layer_decay.
        image_layer_decay=ml_collections.config_dict.placeholder(float),
        text_layer_decay=ml_collections.config_dict.placeholder(float)))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Multi-process runs (mmjax/train/multihost.py): "auto" starts jax.distributed from these keys, the
    # MMJAX_* / JAX_* environment or a detected TPU / SLURM cluster; "" / 0 / -1 = not given here.
    c.distributed = multihost.default_settings()
    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    # `mmjax eval`'s synthetic benchmark sizes, and the benchmarks training runs every `eval.every` steps and
    # at its last step (mmjax/train/evaluation.py): "synthetic", a TFDS benchmark (read from
    # data.tfds_data_dir) or "wds:DIR"; `max_examples` > 0 evaluates only the first images of each TFDS or
    # wds benchmark (the synthetic one uses num_heldout / num_retrieval), and `num_workers` grain processes
    # decode them (0: in the training process); a Flamingo's captions are the best of a beam search over
    # `num_beams` beams (1: greedy, mmjax/models/beam_search.py), each finished caption scored by its
    # log-probability over its length ** `length_penalty`.
    c.eval = ml_collections.ConfigDict(dict(num_heldout=1000, num_retrieval=1000, batch_size=500, every=0,
                                            benchmarks=(), max_examples=0, num_workers=0, num_beams=1,
                                            length_penalty=1.0))
    return c


def apply_arg(c: ml_collections.ConfigDict, arg: str | None, test_model: str) -> ml_collections.ConfigDict:
    """The `get_config(arg)` convention of `configs/*.py`: no argument, or `test`."""
    if arg == "test":
        return small_for_tests(c, test_model)
    if arg is not None:
        raise ConfigError(f"unknown config argument {arg!r}: use none or 'test'")
    return c


def captions_config(model: str, loss: str, arg: str | None, test_model: str) -> ml_collections.ConfigDict:
    """Your own image–caption shards (`data.sources`, from `mmjax data convert`): OpenAI CLIP's BPE as OpenCLIP
    tokenizes, OpenAI's image mean and std, one-to-one pairs; `arg` as `apply_arg`. Locked."""
    config = base_config(model, loss)
    config.multi_positive = False  # real captions carry no attribute labels
    config.data.name = "arrayrecord"
    config.data.tokenizer = "clip-bpe"
    config.data.image_mean, config.data.image_std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    config = apply_arg(config, arg, test_model)
    config.lock()
    return config


def small_for_tests(c: ml_collections.ConfigDict, model: str) -> ml_collections.ConfigDict:
    """Shrink a config to seconds on CPU: a test-sized model, a few steps, no workers."""
    c.model = model
    c.batch_size = 16
    c.total_steps = 6
    c.optim.warmup_steps = 2
    c.log_every = 2
    c.checkpoint_every = 3
    c.data.num_workers = 0
    c.eval.num_heldout = 64
    c.eval.num_retrieval = 32
    c.eval.batch_size = 32
    return c


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _keys(c: ml_collections.ConfigDict, prefix: str = "config.") -> list[str]:
    """Every leaf key of `c`, dotted: `config.optim.learning_rate`, …"""
    return [name for key, value in c.items()
            for name in (_keys(value, f"{prefix}{key}.") if isinstance(value, ml_collections.ConfigDict)
                         else [f"{prefix}{key}"])]


def _validate_keys(c: ml_collections.ConfigDict) -> None:
    """A key the defaults lack (set in a config file that does not lock its config, or misspelt there) would be
    ignored: a one-line error naming it, with the closest key of its section (or the section's keys)."""
    known = set(_keys(base_config(c.model, c.loss)))
    sections = {".".join(key.split(".")[:depth]) for key in known for depth in range(1, key.count(".") + 1)}
    for key in _keys(c):
        if key in known:
            continue
        _require(key not in sections, f"{key} is a section of the config; set its keys, not one value")
        parts = key.split(".")
        depth = next(depth for depth in range(2, len(parts) + 1) if ".".join(parts[:depth]) not in sections)
        unknown, parent = ".".join(parts[:depth]), ".".join(parts[:depth - 1])
        _require(unknown not in known, f"{unknown} is one value, not a section of the config")
        siblings = sorted({k[len(parent) + 1:].split(".")[0] for k in known if k.startswith(parent + ".")})
        close = difflib.get_close_matches(parts[depth - 1], siblings, n=1)
        hint = (f"; did you mean {parent}.{close[0]}?" if close
                else f"; {parent} has {', '.join(siblings)}" if parent != "config" else "")
        raise ConfigError(f"{unknown} is not a config key{hint}")


def _plain(value):
    """A config value as Python writes it: a JSON-loaded (resumed) config holds lists where a config file has
    tuples."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _validate_data(c: ml_collections.ConfigDict) -> None:
    d = c.data
    _require(d.name in DATA_NAMES, f"config.data.name={d.name!r} must be one of {DATA_NAMES}")
    _require(0 <= d.seed < 2**32, f"config.data.seed={d.seed} must be in [0, 2**32)")
    _require(len(d.image_std) == 3 and all(v > 0 for v in d.image_std) and len(d.image_mean) == 3,
             f"config.data.image_mean={tuple(d.image_mean)} and image_std={tuple(d.image_std)} must be 3 numbers "
             f"each, the std positive")
    if d.name == "synthetic":
        _require(not d.sources, f"config.data.sources={tuple(d.sources)} is ignored by data.name='synthetic': "
                 "set --config.data.name=arrayrecord (or tfds, mixture), or use configs/clip_captions.py")
        for key, default in REAL_DATA_OPTIONS.items():
            _require(_plain(d[key]) == default, f"config.data.{key}={_plain(d[key])!r} is ignored by "
                     f"data.name='synthetic' (it renders its images and captions): leave it at {default!r}")
        return
    _require(d.name == "mixture" or not d.weights,
             f"config.data.weights={tuple(d.weights)} is ignored by data.name={d.name!r}: weights mix the sources "
             f"of data.name='mixture'")
    _require(not c.multi_positive, f"config.multi_positive=True needs the synthetic data's labels; "
             f"set --config.multi_positive=False for data.name={d.name!r}")
    count = {"arrayrecord": "exactly 1", "tfds": "exactly 1", "mixture": "at least 2"}[d.name]
    _require((len(d.sources) == 1) if d.name != "mixture" else (len(d.sources) >= 2),
             f"config.data.sources={tuple(d.sources)} must name {count} source(s) for data.name={d.name!r}")
    tfds_ok = all(str(s).startswith("tfds:") for s in d.sources) if d.name == "tfds" else True
    _require(tfds_ok, f"config.data.sources={tuple(d.sources)}: data.name='tfds' needs 'tfds:NAME'")
    _require(d.tfds_split == "train" or any(str(s).startswith("tfds:") for s in d.sources),
             f"config.data.tfds_split={d.tfds_split!r} is ignored: no source of config.data.sources="
             f"{tuple(d.sources)} is tfds:NAME")
    _require(d.record_reads == "auto" or not all(str(s).startswith("tfds:") for s in d.sources),
             f"config.data.record_reads={d.record_reads!r} is ignored: every source of config.data.sources="
             f"{tuple(d.sources)} is tfds:NAME, which TFDS reads itself")
    _require(d.name != "mixture" or usable_weights(tuple(d.weights), len(d.sources)),
             f"config.data.weights={tuple(d.weights)} must be {len(d.sources)} finite positive numbers, one per source")
    _require(len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
             f"config.data.crop_scale={tuple(d.crop_scale)} must be (low, high) with 0 < low ≤ high ≤ 1")
    _require(len(d.crop_ratio) == 2 and 0 < d.crop_ratio[0] <= d.crop_ratio[1],
             f"config.data.crop_ratio={tuple(d.crop_ratio)} must be (low, high) with 0 < low ≤ high")
    _require(d.caption_sampling in ("random", "first"),
             f"config.data.caption_sampling={d.caption_sampling!r} must be 'random' or 'first'")
    _require(d.max_caption_chars > 0, f"config.data.max_caption_chars={d.max_caption_chars} must be positive")
    _require(0 <= d.max_skip_fraction <= 1, f"config.data.max_skip_fraction={d.max_skip_fraction} must be in [0, 1]")


def own_loss(model) -> str:
    """The one loss that trains `model` (a model config): "flava" for FLAVA, "captioning" for Flamingo, "sigmoid"
    for a two-tower model with a logit bias (SigLIP), "clip" for one without."""
    if isinstance(model, FlavaConfig):
        return "flava"
    if isinstance(model, FlamingoConfig):
        return "captioning"
    return "clip" if model.logit_bias_init is None else "sigmoid"


def resolved_loss(loss: str, model) -> str:
    """`loss`, with "auto" replaced by `own_loss(model)`."""
    return own_loss(model) if loss == AUTO_LOSS else loss


def _validate_flamingo_part(c: ml_collections.ConfigDict, key: str, part: str, resuming: bool) -> None:
    """`config.<key>` starts `part` of a registered Flamingo from a checkpoint that exists (an `hf:` one is
    downloaded); a resumed run no longer needs it."""
    source = c[key]
    registered = c.model in registry.list_models()
    _require(not source or (registered and isinstance(registry.get_config(c.model), FlamingoConfig)),
             f"config.{key}={source!r} starts the {part} of a registered Flamingo model (flamingo-tiny, …), not of "
             f"{c.model!r}")
    _require(not source or resuming or source.startswith("hf:") or os.path.exists(source),
             f"config.{key}={source!r}: there is no such checkpoint file or directory")


def _validate_init_parts(c: ml_collections.ConfigDict, workdir: str | None) -> None:
    """`init_vision` and `init_language` start a registered Flamingo's towers (only a new run reads them: a run
    resumed in `workdir` no longer needs them); a pretrained checkpoint keeps its own activation and norm epsilon;
    a language model brings its own tokenizer."""
    from mmjax.train.checkpoint import has_checkpoint

    resuming = workdir is not None and has_checkpoint(workdir)
    _require(not c.init_vision.startswith("open_clip:"), f"config.init_vision={c.init_vision!r}: an OpenCLIP model "
             f"by name needs a weights file, which init_vision cannot take; name an OpenCLIP directory "
             f"(open_clip_config.json beside the weights)")
    _validate_flamingo_part(c, "init_vision", "vision tower", resuming)
    _validate_flamingo_part(c, "init_language", "language model", resuming)
    _require(not c.init_language or not c.data.tokenizer, f"config.init_language={c.init_language!r} reads "
             f"captions with its own tokenizer: leave config.data.tokenizer at '' (not {c.data.tokenizer!r})")
    registered = c.model in registry.list_models()
    overridden = [f"{key}={c.model_options[key]!r}" for key in ("activation", "norm_eps") if c.model_options[key]]
    _require(registered or not overridden, f"config.model_options.{', '.join(overridden)}: a model fine-tuned from "
             f"{c.model} computes with the checkpoint's own; leave them at '' and 0")


def _validate_own_objective(c: ml_collections.ConfigDict, model, loss: str, *, objective: str, model_class: type,
                            kind: str, example: str, positives: str) -> None:
    """A model trained by an objective of its own (`objective`, of a `model_class` model): that objective and that
    model together, one positive per caption (`positives` says why)."""
    prefix = kind.lower()
    _require(isinstance(model, model_class), f"config.loss={objective!r} needs a {kind} model "
             f"({', '.join(n for n in registry.list_models() if n.startswith(prefix))}); {c.model!r} is a "
             f"{registry.kind(model)} model: use loss={own_loss(model)!r}")
    _require(loss == objective, f"config.model={c.model!r} is a {kind} model: train it with config.loss={objective!r} "
             f"({example}), not {loss!r}")
    _require(not c.multi_positive, f"config.multi_positive=True is for the two-tower losses; {positives}: set "
             f"--config.multi_positive=False")


def _validate_flava(c: ml_collections.ConfigDict, model, loss: str) -> None:
    """FLAVA trains with its own objective, on aligned pairs."""
    _validate_own_objective(c, model, loss, objective="flava", model_class=FlavaConfig, kind="FLAVA",
                            example="configs/flava_tiny.py",
                            positives="FLAVA's objective takes each caption as its own image's only positive")


def _validate_captioning(c: ml_collections.ConfigDict, model, loss: str) -> None:
    """Flamingo learns to caption: the next-token loss of each caption after its image token. Its vision tower
    takes `optim.image_layer_decay` (a pretrained one, `init_vision`, fine-tuned); its language model's layers are
    in no tower that `optim.layer_decay` knows."""
    _validate_own_objective(c, model, loss, objective="captioning", model_class=FlamingoConfig, kind="Flamingo",
                            example="configs/flamingo_tiny.py",
                            positives="a captioner learns each image's own caption")
    decays = {key: c.optim[key] for key in ("layer_decay", "text_layer_decay")}
    _require(all(value in (None, 1.0) for value in decays.values()),
             f"config.optim.{', '.join(f'{k}={v}' for k, v in decays.items() if v not in (None, 1.0))}: "
             f"{c.model!r}'s language model is no tower that layer decay knows; its vision tower takes "
             f"--config.optim.image_layer_decay")


def validate_model(c: ml_collections.ConfigDict, model) -> None:
    """Raise `ConfigError` (one line) when `c.loss` cannot train `model` (the config of `c.model`: a registered
    model's, or a pretrained checkpoint's once it is loaded); "auto" is `own_loss(model)`."""
    loss = resolved_loss(c.loss, model)
    if isinstance(model, FlamingoConfig) or loss == "captioning":
        _validate_captioning(c, model, loss)
        return
    for key, default in (("num_beams", 1), ("length_penalty", 1.0)):
        _require(c.eval[key] == default, f"config.eval.{key}={c.eval[key]} decodes a Flamingo's captions; "
                 f"{c.model!r} is a {registry.kind(model)} model, with embeddings")
    if isinstance(model, FlavaConfig) or loss == "flava":
        _validate_flava(c, model, loss)
    _require(loss != "sigmoid" or model.logit_bias_init is not None,
             f"config.loss='sigmoid' needs a model with a logit bias; {c.model!r} has none (use a SigLIP model)")
    _require(loss != "clip" or model.logit_bias_init is None,
             f"config.loss='clip' leaves {c.model!r}'s logit bias untrained, and a model with one is read as SigLIP "
             f"(sigmoid scores, SiglipModel export); use loss='sigmoid', or a CLIP model")


def validate_frozen(c: ml_collections.ConfigDict, params) -> None:
    """`ConfigError` (one line) when a pattern of `c.optim.frozen` matches none of the model's parameters (`params`:
    any tree with their structure), or they match every one: a misspelt pattern would freeze nothing, silently."""
    paths = list(flax.traverse_util.flatten_dict(params, sep="/"))
    for pattern in c.optim.frozen:
        _require(any(re.search(pattern, path) for path in paths),
                 f"config.optim.frozen: {pattern!r} matches no parameter of {c.model} (paths such as "
                 f"{paths[0]!r}; top level: {', '.join(sorted(params))})")
    _require(not c.optim.frozen or not all(any(re.search(p, path) for p in c.optim.frozen) for path in paths),
             f"config.optim.frozen={tuple(c.optim.frozen)} freezes every parameter of {c.model}: nothing would train")


def _validate_pretrained(c: ml_collections.ConfigDict, workdir: str | None) -> None:
    """A registered `c.model`, or a pretrained checkpoint with its own tokenizer and the files it reads. A run
    fine-tuned from a checkpoint in `workdir` resumes without the checkpoint: there any name is taken for it (and
    compared with the recorded one)."""
    from mmjax.pretrained import is_pretrained_source

    registered = c.model in registry.list_models()
    _require(not (registered and os.path.isdir(c.model) and is_pretrained_source(c.model)),
             f"config.model={c.model!r} is both a registered model and a checkpoint directory here: write "
             f"{os.path.join('.', c.model)!r} to fine-tune from the directory, or train the registered model from "
             f"another working directory")
    resumable = workdir is not None and os.path.isfile(os.path.join(workdir, "pretrained.json"))
    _require(registered or resumable or os.sep not in c.model or c.model.startswith(("hf:", "open_clip:"))
             or os.path.exists(c.model), f"config.model={c.model!r}: there is no such checkpoint file or directory")
    _require(registered or resumable or is_pretrained_source(c.model) or os.path.exists(c.model),
             f"config.model={c.model!r} is neither a registered model ({', '.join(registry.list_models())}) nor a "
             f"pretrained checkpoint to fine-tune (hf:ORG/NAME, a Hugging Face or OpenCLIP directory, "
             f"open_clip:MODEL, a big_vision .npz)")
    for key, given in c.pretrained.items():
        _require(not registered or not given, f"config.pretrained.{key}={given!r} is for a pretrained config.model "
                 f"(hf:ORG/NAME, open_clip:MODEL, a big_vision .npz …); {c.model!r} is a registered model")
    _require(c.pretrained.image_size >= 0, f"config.pretrained.image_size={c.pretrained.image_size} must be ≥ 0 "
             f"(0: the checkpoint's)")
    _require(registered or not c.data.tokenizer,
             f"config.data.tokenizer={c.data.tokenizer!r}: a model fine-tuned from {c.model} reads its own "
             f"tokenizer's ids; leave data.tokenizer=''")


def block_options(model_options: ml_collections.ConfigDict) -> dict:
    """The `BlockOptions` fields `model_options` sets: all but an empty activation and a zero norm_eps (the
    model's own). A config saved before these two existed has neither."""
    return {key: value for key, value in model_options.items()
            if not (key in ("activation", "norm_eps") and not value)}


def registered_model(c: ml_collections.ConfigDict):
    """The config of the registered model `c.model`, with `c.model_options`."""
    return registry.get_config(c.model, **block_options(c.model_options))


def validate(c: ml_collections.ConfigDict, workdir: str | None = None) -> None:
    """Raise `ConfigError` (one line) for a value that cannot work (for a pretrained `c.model`, those that need
    the checkpoint's config are checked by `validate_model` once it is loaded). `workdir`: where the run trains."""
    _validate_keys(c)
    _validate_pretrained(c, workdir)
    _require(c.loss in LOSSES + (AUTO_LOSS,), f"config.loss={c.loss!r} must be one of {LOSSES + (AUTO_LOSS,)}")
    if c.model in registry.list_models():
        validate_model(c, registry.get_config(c.model))
    _require(c.model_options.remat_policy in REMAT_POLICIES,
             f"config.model_options.remat_policy={c.model_options.remat_policy!r} must be one of {REMAT_POLICIES}")
    _require(c.distributed.initialize in multihost.MODES,
             f"config.distributed.initialize={c.distributed.initialize!r} must be one of {multihost.MODES}")
    _require(c.model_options.dtype in DTYPES, f"config.model_options.dtype={c.model_options.dtype!r} must be one of {DTYPES}")
    _require(c.model_options.attention in layers.ATTENTION_IMPLEMENTATIONS,
             f"config.model_options.attention={c.model_options.attention!r} must be one of "
             f"{list(layers.ATTENTION_IMPLEMENTATIONS)}")
    _require(c.model_options.attention != "cudnn" or c.model_options.dtype != "float32",
             "config.model_options.attention='cudnn' needs config.model_options.dtype='bfloat16'")
    _require(not c.model_options.activation or c.model_options.activation in layers.ACTIVATIONS,
             f"config.model_options.activation={c.model_options.activation!r} must be one of "
             f"{sorted(layers.ACTIVATIONS)} ('': the model's own)")
    _require(c.model_options.norm_eps >= 0, f"config.model_options.norm_eps={c.model_options.norm_eps} must be ≥ 0 "
             f"(0: the model's own)")
    _validate_init_parts(c, workdir)
    _validate_data(c)
    _require(c.batch_size > 0, f"config.batch_size={c.batch_size} must be positive")
    _require(c.accum_steps > 0 and c.batch_size % c.accum_steps == 0,
             f"config.accum_steps={c.accum_steps} must divide config.batch_size={c.batch_size}")
    _require(c.total_steps > 0, f"config.total_steps={c.total_steps} must be positive")
    _require(0 <= c.optim.warmup_steps < c.total_steps,
             f"config.optim.warmup_steps={c.optim.warmup_steps} must be in [0, total_steps={c.total_steps})")
    _require(c.optim.learning_rate > 0, f"config.optim.learning_rate={c.optim.learning_rate} must be positive")
    _require(c.optim.clip_norm > 0, f"config.optim.clip_norm={c.optim.clip_norm} must be positive")
    for key in ("b1", "b2"):
        _require(0 <= c.optim[key] < 1, f"config.optim.{key}={c.optim[key]} must be in [0, 1)")
    _require(c.optim.eps > 0, f"config.optim.eps={c.optim.eps} must be positive (Adam divides by √v + eps)")
    _require(c.optim.weight_decay >= 0, f"config.optim.weight_decay={c.optim.weight_decay} must be ≥ 0")
    for key in ("layer_decay", "image_layer_decay", "text_layer_decay"):
        value = c.optim[key]
        _require(value is None and key != "layer_decay" or value is not None and 0 < value <= 1,
                 f"config.optim.{key}={value} must be in (0, 1] (1: every layer at learning_rate)")
    _require(0 <= c.optim.final_lr_ratio <= 1,
             f"config.optim.final_lr_ratio={c.optim.final_lr_ratio} must be in [0, 1] (a share of learning_rate)")
    _require(c.log_every > 0 and c.checkpoint_every > 0 and c.keep_checkpoints > 0,
             "config.log_every, checkpoint_every and keep_checkpoints must be positive")
    _require(c.data.num_workers >= 0, f"config.data.num_workers={c.data.num_workers} must be ≥ 0")
    _require(c.data.worker_priority in WORKER_PRIORITIES,
             f"config.data.worker_priority={c.data.worker_priority!r} must be one of {WORKER_PRIORITIES}")
    _require(c.data.record_reads in READS, f"config.data.record_reads={c.data.record_reads!r} must be one of {READS}")
    _require(c.data.prefetch_to_device >= 0,
             f"config.data.prefetch_to_device={c.data.prefetch_to_device} must be ≥ 0")
    for key in ("image_mean", "image_std"):
        _require(len(c.data[key]) == 3, f"config.data.{key} must have 3 values (RGB), got {c.data[key]}")
    for key in ("no_decay", "frozen"):
        patterns = c.optim[key]
        _require(isinstance(patterns, (tuple, list)) and all(isinstance(p, str) for p in patterns),
                 f"config.optim.{key}={patterns!r} must be a tuple of regular expressions (strings)")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ConfigError(f"config.optim.{key}: {pattern!r} is not a regular expression ({error})") from None
    _require(c.eval.batch_size > 0, f"config.eval.batch_size={c.eval.batch_size} must be positive")
    _require(c.eval.num_heldout > 0, f"config.eval.num_heldout={c.eval.num_heldout} must be positive")
    _require(0 < c.eval.num_retrieval <= synthetic.NUM_COMBINATIONS,
             f"config.eval.num_retrieval={c.eval.num_retrieval} must be in [1, {synthetic.NUM_COMBINATIONS}] "
             f"(the distinct captions of the synthetic world)")
    _require(c.eval.every >= 0, f"config.eval.every={c.eval.every} must be ≥ 0 (0: only at the last step)")
    _require(not c.eval.every or c.eval.benchmarks,
             f"config.eval.every={c.eval.every} evaluates nothing: config.eval.benchmarks is empty "
             f"(name some, e.g. \"--config.eval.benchmarks=('synthetic',)\")")
    _require(c.eval.max_examples >= 0, f"config.eval.max_examples={c.eval.max_examples} must be ≥ 0 (0: all)")
    _require(c.eval.num_workers >= 0, f"config.eval.num_workers={c.eval.num_workers} must be ≥ 0")
    _require(c.eval.num_beams >= 1, f"config.eval.num_beams={c.eval.num_beams} must be ≥ 1 (1: greedy captions)")
    _require(c.eval.length_penalty >= 0, f"config.eval.length_penalty={c.eval.length_penalty} must be ≥ 0")
    _require(c.eval.num_beams > 1 or c.eval.length_penalty == 1.0,
             f"config.eval.length_penalty={c.eval.length_penalty} scores the captions of a beam search: set "
             f"config.eval.num_beams (3, say)")
