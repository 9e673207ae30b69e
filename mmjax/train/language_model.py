"""A Flamingo's language model started from a pretrained GPT-2 (`config.init_language`), as Flamingo is built: a
causal language model, frozen, that learns to read images through the resampler and the gated blocks.

    mmjax train --config configs/flamingo_tiny.py --workdir runs/flamingo_gpt2 --config.init_language=hf:gpt2 \\
        "--config.optim.frozen=('^(token_embed|pos_embed|layers_[0-9]+|ln_final|lm_head)/',)"

The source is what `mmjax.convert.hf_gpt2.load` reads: a transformers GPT-2 directory or `hf:ORG/NAME`. The run's
Flamingo is the registered one (its vision tower, resampler, gates and `model_options`) with GPT-2's text shape
(read at the registered model's context length), vocabulary plus the image token, activation and norm epsilon; its
language-model parameters (`token_embed`, `pos_embed`, `layers_{i}`, `ln_final`, `lm_head`) start as GPT-2's, and
its captions are read with GPT-2's BPE (`hf_gpt2.load_tokenizer`, without `<image>`: each caption follows its
image's token, which the tokenizer never emits).

Only a new run reads the source. It records the model in `WORKDIR/language_model.json` and the tokenizer in
`WORKDIR/tokenizer.json`, so that resuming, evaluating and captioning read neither the source nor the network.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections

from mmjax.convert import hf_gpt2
from mmjax.data.tokenizers import Tokenizer
from mmjax.files import write_text_atomically
from mmjax.models import FlamingoConfig, TextConfig
from mmjax.parallel.distributed import raise_if_any_failed
from mmjax.train.config import ConfigError

LANGUAGE_FILE = "language_model.json"


@dataclasses.dataclass(frozen=True)
class LanguageStart:
    """A new run's language model: `source` (as `config.init_language` names it), the GPT-2 (`language`, its
    parameters NumPy) and the tokenizer its captions are read with."""

    source: str
    language: hf_gpt2.LanguageModel
    tokenizer: Tokenizer

    def model(self, registered: FlamingoConfig) -> FlamingoConfig:
        """`registered` with this language model's text shape, image token, activation and norm epsilon."""
        return dataclasses.replace(registered, **self.language.flamingo_fields)


def load_language_model(config: ml_collections.ConfigDict, model: FlamingoConfig) -> LanguageStart:
    """`config.init_language`'s GPT-2 and tokenizer at `model`'s context length, loaded in every process; when any
    process cannot load them, every process raises one line."""
    start, error = None, None
    try:
        try:
            context_length = model.text.context_length
            start = LanguageStart(config.init_language, hf_gpt2.load(config.init_language, context_length),
                                  hf_gpt2.load_tokenizer(config.init_language, context_length, media_token=False))
        except (ValueError, OSError) as failed:  # the source's own message, said to be init_language's
            raise ConfigError(f"config.init_language={config.init_language!r}: {failed}") from None
    except Exception as caught:  # reported by every process alike, below
        error = caught
    raise_if_any_failed(error, jax.process_count())
    return start


def save_language_model(workdir: str, start: LanguageStart | None) -> None:
    """A new run's record of its language model, `WORKDIR/language_model.json` (process 0); without one, removes
    the record a replaced run left (the model would be read as that run's)."""
    path = os.path.join(workdir, LANGUAGE_FILE)
    if start is None:
        if os.path.exists(path):
            os.remove(path)
        return
    fields = {**start.language.flamingo_fields, "text": dataclasses.asdict(start.language.text)}
    write_text_atomically(path, json.dumps(dict(source=start.source, model=fields), indent=2))


def recorded_language_model(workdir: str, registered: FlamingoConfig) -> FlamingoConfig:
    """`registered` with the language model the run in `workdir` recorded (`save_language_model`); `registered` as
    it is when the run recorded none."""
    path = os.path.join(workdir, LANGUAGE_FILE)
    if not os.path.isfile(path):
        return registered
    try:
        with open(path) as f:
            fields = json.load(f)["model"]
        return dataclasses.replace(registered, **{**fields, "text": TextConfig(**fields["text"])})
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is damaged ({type(error).__name__}: {error})") from None
