"""What a training run leaves in its workdir, and how to load it back.

    WORKDIR/config.json       the training config
    WORKDIR/tokenizer.json    the tokenizer the run trained with (tokenizer.model: a SentencePiece one)
    WORKDIR/pretrained.json   a run fine-tuned from a pretrained checkpoint: its model, tokenizer and
                              preprocessing (mmjax/train/finetune.py)
    WORKDIR/checkpoints/N/    orbax: train state, data iterator state, config
    WORKDIR/metrics.jsonl     one JSON object per logged step
    WORKDIR/eval_metrics.jsonl, skipped-process<N>.txt, .lock   evaluations during training, skipped samples,
                                                                the lock of the run training there
    WORKDIR/tensorboard/      TensorBoard event files
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import sys
from collections.abc import Iterator

import flax.linen as nn
import jax
import ml_collections

from mmjax.data.clip_bpe import ClipBpeTokenizer
from mmjax.data.preprocess import ImagePreprocess
from mmjax.data.tokenizer_record import SENTENCEPIECE_FILE
from mmjax.data.tokenizers import Tokenizer
from mmjax.files import write_text_atomically
from mmjax.models import (Flamingo, FlamingoConfig, Flava, FlavaConfig, TwoTower, TwoTowerConfig, abstract_params,
                          build_model, get_config, list_models)
from mmjax.parallel import logical_shardings, make_mesh
from mmjax.parallel.distributed import raise_if_any_failed
from mmjax.train.checkpoint import Checkpoints, latest_saved_step
from mmjax.train.config import ConfigError, registered_model
from mmjax.train.finetune import PRETRAINED_FILE, is_finetuning, read_start
from mmjax.train.language_model import LANGUAGE_FILE, recorded_language_model

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `WORKDIR/config.json` through a temporary file and a rename: the other processes of a multi-host
    run read it while process 0 writes it (`train` checks an existing workdir), and must never see it half
    written."""
    write_text_atomically(os.path.join(workdir, CONFIG_FILE), config.to_json(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isdir(workdir):
        hint = (" (--model takes an mmjax training workdir or a pretrained checkpoint: hf:ORG/NAME, a Hugging Face "
                "or OpenCLIP directory, open_clip:MODEL, a big_vision .npz)") \
            if ":" in workdir or os.path.isfile(workdir) else ""
        what = "is a file, not a directory" if os.path.isfile(workdir) else "does not exist"
        raise FileNotFoundError(f"workdir {workdir} {what}{hint}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: {workdir} is not an mmjax training workdir")
    try:
        with open(path) as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:  # cut short or overwritten: JSON's error names no file
        raise ValueError(f"{path} is not valid JSON ({error}): {workdir} cannot be resumed or loaded") from None
    if not isinstance(config, dict) or not {"model", "data", "optim"} <= set(config):
        raise ValueError(f"{path} is not an mmjax training config: {workdir} is not an mmjax training workdir "
                         "(a Hugging Face or OpenCLIP directory loads with mmjax.load_pretrained)")
    return ml_collections.ConfigDict(config)


CLIP_BPE = "clip-bpe"


def workdir_tokenizer(workdir: str, context_length: int, spec: str = "", *, fresh: bool = False) -> Tokenizer:
    """The run's tokenizer, chosen by `config.data.tokenizer` (`spec`):

    - `""`: the synthetic world's word-level tokenizer;
    - `"clip-bpe"`: OpenAI CLIP's BPE as OpenCLIP applies it (vocabulary shipped with mmjax), rebuilt on
      every load because its ftfy/HTML clean-up runs in Python, outside tokenizer.json;
    - a path: a fixed-length tokenizer.json (as `Tokenizer.save` writes).

    The saved `WORKDIR/tokenizer.json` is read back unless `fresh` (a run starting without a checkpoint),
    which builds the tokenizer from `spec`; `save_tokenizer` writes it once the new run's checks have passed.
    """
    path = os.path.join(workdir, TOKENIZER_FILE)
    if spec == CLIP_BPE:
        return ClipBpeTokenizer.open_clip(context_length=context_length)
    if os.path.exists(path) and not fresh:
        return Tokenizer.load(path)
    if spec and not os.path.isfile(spec):
        raise FileNotFoundError(f"config.data.tokenizer={spec!r}: no such file (use a tokenizer.json, "
                                f"{CLIP_BPE!r} or '')")
    tokenizer = Tokenizer.load(spec) if spec else Tokenizer.for_synthetic(context_length)
    if tokenizer.context_length != context_length:
        raise ValueError(f"config.data.tokenizer pads to {tokenizer.context_length} tokens but the model reads "
                         f"{context_length}")
    return tokenizer


def save_tokenizer(workdir: str, tokenizer: Tokenizer) -> None:
    """Write a new run's tokenizer as `WORKDIR/tokenizer.json`, where the run and `mmjax eval` read it back; for
    CLIP's BPE, rebuilt on every load, remove one that a replaced run left (it would describe another
    tokenizer)."""
    path = os.path.join(workdir, TOKENIZER_FILE)
    if not isinstance(tokenizer, ClipBpeTokenizer):
        tokenizer.save(path)
    elif os.path.exists(path):
        os.remove(path)


UNKNOWN_WORDS_LIMIT = 0.1


REAL_CAPTIONS_CONFIGS = {TwoTowerConfig: "configs/clip_captions.py", FlavaConfig: "configs/flava_captions.py",
                         FlamingoConfig: "configs/flamingo_captions.py"}  # each model kind's config for real captions


def unknown_words_warning(tokenizer: Tokenizer, ids, spec: str, checkpoint: str | None = None,
                          captions_config: str = REAL_CAPTIONS_CONFIGS[TwoTowerConfig]) -> str | None:
    """A one-line warning when more than 10 % of the words in token ids `[N, L]` are `<unk>`, else None:
    captions the tokenizer cannot spell (real captions with the synthetic world's words) teach the text tower
    nothing. `checkpoint`: the pretrained checkpoint (or workdir) a fine-tuning run took the tokenizer from."""
    if not hasattr(tokenizer, "unknown_fraction"):  # SentencePiece: every text has a spelling
        return None
    fraction = tokenizer.unknown_fraction(ids)
    if fraction <= UNKNOWN_WORDS_LIMIT:
        return None
    start = f"mmjax: warning: {fraction:.0%} of the caption words in the first batch are unknown to the tokenizer"
    if checkpoint is not None:
        return (f"{start} of {checkpoint}, which this run fine-tunes; a checkpoint trained on the synthetic world's "
                f"words cannot spell real captions: start from one with a real tokenizer (CLIP's BPE, SentencePiece)")
    which = f"config.data.tokenizer={spec!r}" + ("" if spec else " (the synthetic world's words)")
    return (f"{start}, {which}; for real captions use {captions_config} (OpenAI CLIP's BPE, "
            f"data.tokenizer='clip-bpe')")


@dataclasses.dataclass
class TrainedModel:
    """A model restored from a workdir: module, parameters, tokenizer, training config, and the preprocessing
    its images get when it is evaluated (a run fine-tuned from a pretrained checkpoint: the checkpoint's own
    resize and crop; any other: the centre crop of its evaluations)."""

    model: TwoTower | Flava | Flamingo
    params: dict
    tokenizer: Tokenizer
    config: ml_collections.ConfigDict
    step: int
    preprocess: ImagePreprocess


def is_captioner_run(workdir: str) -> bool:
    """Whether `workdir` holds a Flamingo run (read from its config.json)."""
    model = load_config(workdir).model
    return model in list_models() and isinstance(get_config(model), FlamingoConfig)


def check_kind(workdir: str, captioner: bool) -> None:
    """A one-line ValueError unless the run in `workdir` is a captioner (a Flamingo) when `captioner`, or one with
    embeddings (CLIP, SigLIP, FLAVA) when not: said from its config.json, before anything is restored."""
    model, is_captioner = load_config(workdir).model, is_captioner_run(workdir)
    if is_captioner and not captioner:
        raise ValueError(f"{workdir} holds a Flamingo run ({model}), a captioner without image or text "
                         f"embeddings: caption images with mmjax caption --model {workdir} IMAGE..., evaluate it "
                         f"with mmjax eval --model {workdir}")
    if captioner and not is_captioner:
        raise ValueError(f"{workdir} holds a {model} run, which does not write captions: mmjax caption takes a "
                         f"Flamingo run (configs/flamingo_tiny.py)")


def check_trained(workdir: str) -> int:
    """The step of the latest checkpoint of the run in `workdir`, found without Orbax (whose checkpoint manager
    starts with a barrier of every process, which a process that failed a check never reaches); ValueError
    for a directory that holds no run, FileNotFoundError when it has no checkpoint yet."""
    load_config(workdir)
    return _latest_step(workdir)


def _latest_step(workdir: str) -> int:
    step = latest_saved_step(workdir)
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(os.path.abspath(workdir), 'checkpoints')}")
    return step


def load_trained(workdir: str, dtype: str | None = None, step: int | None = None) -> TrainedModel:
    """Restore the latest checkpoint's parameters on this process's devices (replicated; under
    `jax.distributed` every process restores its own copy).

    `dtype` overrides the compute dtype the run trained with (e.g. "bfloat16" for
    faster evaluation); parameters stay float32. A run trained with cuDNN's attention loads with XLA's
    off a GPU or in float32. `step`: the checkpoint to restore (default: the latest).
    """
    config = load_config(workdir)
    step = _latest_step(workdir) if step is None else step
    if dtype is not None:
        config.model_options.dtype = dtype
    if config.model_options.get("attention") == "cudnn" and (
            jax.default_backend() != "gpu" or config.model_options.dtype == "float32"):
        config.model_options.attention = "xla"  # the same attention, where cuDNN's cannot run
    checkpoints = Checkpoints(workdir, read_only=True)
    if is_finetuning(config):
        start = read_start(workdir, config.model_options)
        model_config, tokenizer, preprocess = start.model, start.tokenizer, start.preprocess
    else:
        model_config = recorded_language_model(workdir, registered_model(config))
        tokenizer = workdir_tokenizer(workdir, model_config.text.context_length, config.data.get("tokenizer", ""))
        preprocess = ImagePreprocess(model_config.vision.image_size, tuple(config.data.image_mean),
                                     tuple(config.data.image_std))
    boxed = abstract_params(model_config)
    shardings = logical_shardings(boxed, make_mesh(data=-1, devices=jax.local_devices()))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings)
    params, step = checkpoints.restore_params(abstract, step)
    return TrainedModel(build_model(model_config), params, tokenizer, config, step, preprocess)


LOCK_FILE = ".lock"
RUN_FILES = (CONFIG_FILE, TOKENIZER_FILE, SENTENCEPIECE_FILE, PRETRAINED_FILE, LANGUAGE_FILE, "metrics.jsonl",
             "eval_metrics.jsonl", LOCK_FILE)
RUN_DIRECTORIES = ("checkpoints", "tensorboard")


def run_file(workdir: str, path: str) -> str | None:
    """The name of the run's own file (or directory) in `workdir` that `path` is or lies in, else None."""
    relative = os.path.relpath(os.path.realpath(path), os.path.realpath(workdir))
    first = relative.split(os.sep)[0]
    if relative in RUN_FILES or first in RUN_DIRECTORIES or re.fullmatch(r"skipped-process\d+\.txt", relative):
        return relative
    return None


@contextlib.contextmanager
def workdir_lock(workdir: str, take: bool = True) -> Iterator[None]:
    """Holds an exclusive lock on `WORKDIR/.lock` (an `fcntl.flock`, released when the process ends, also by a
    kill) while a run trains there. A second `mmjax train` on the workdir is a one-line `ConfigError` naming the
    process that holds it, in every process of a multi-host run (`raise_if_any_failed`). `take=False`: this
    process locks nothing (processes other than 0 of a multi-host run, whose workdir is shared). A file system
    without locks is a warning: two runs there would go unnoticed.

    Creates the workdir (and its missing parents). When the block raises and they hold nothing but the lock (a
    run refused before it began, e.g. by a fine-tuning checkpoint that does not fit the config), the directories
    this call created are removed, as far as they can be: the block's error is the one raised."""
    created = _missing_directories(workdir)
    os.makedirs(workdir, exist_ok=True)
    lock, refused = None, None
    if take:
        try:
            lock = open(os.path.join(workdir, LOCK_FILE), "a+b", buffering=0)  # unbuffered: a write fails where it is
        except OSError as error:  # a read-only workdir, no inodes left: said in one line, in every process
            refused = error
    if lock is not None:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                lock.seek(0)
                holder = lock.read().decode(errors="replace").strip() or "unknown"
                refused = ConfigError(f"{workdir} is being trained by another process (pid {holder}); wait for it, "
                                      f"or use another --workdir")
            else:
                print(f"mmjax: warning: cannot lock {lock.name} ({error.strerror}): a second run on this workdir "
                      f"would not be noticed", file=sys.stderr)
            lock.close()
            lock = None
        else:
            try:
                lock.truncate(0)
                lock.write(str(os.getpid()).encode())
            except OSError as error:  # a full disk: said in one line, in every process
                refused = OSError(error.errno, error.strerror, lock.name)
                lock.close()
                lock = None
    raise_if_any_failed(refused, jax.process_count())
    try:
        yield
    except BaseException:
        if lock is not None:
            lock.close()
            lock = None
            if created and os.listdir(workdir) == [LOCK_FILE]:
                _remove_quietly(os.remove, os.path.join(workdir, LOCK_FILE))
        for directory in created:  # innermost first; a directory that is not empty stays
            _remove_quietly(os.rmdir, directory)
        raise
    finally:
        if lock is not None:
            lock.close()  # releases the flock


def _missing_directories(path: str) -> list[str]:
    """`path` and its ancestors that do not exist yet, innermost first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_quietly(remove, path: str) -> None:
    """`remove(path)`, ignoring an `OSError` (a file system that keeps a removed open file, another run that
    came in meanwhile): the error that leads here is the one to report."""
    try:
        remove(path)
    except OSError:
        pass
