"""FLAVA on your own image–caption data: OpenAI CLIP's BPE (49 408 tokens, as OpenCLIP tokenizes) plus a [MASK]
id, and the demo's towers at 64 px. Name the converted shards (`mmjax data convert`) on the command line:

    mmjax train --config configs/flava_captions.py --workdir runs/mine "--config.data.sources=('data/mine',)"
    mmjax train --config configs/flava_captions.py:test --workdir /tmp/t "--config.data.sources=('data/mine',)"
"""

from mmjax.data.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from mmjax.train.config import apply_arg, base_config


def get_config(arg: str | None = None):
    config = base_config(model="flava-tiny-bpe", loss="flava")
    config.multi_positive = False  # real captions carry no attribute labels
    config.data.name = "arrayrecord"
    config.data.tokenizer = "clip-bpe"
    config.data.image_mean, config.data.image_std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    config = apply_arg(config, arg, test_model="flava-test-bpe")
    config.lock()
    return config
