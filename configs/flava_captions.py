"""FLAVA on your own image–caption data: OpenAI CLIP's BPE (49 408 tokens, as OpenCLIP tokenizes) plus a [MASK]
id, and the demo's towers at 64 px. Name the converted shards (`mmjax data convert`) on the command line:

    mmjax train --config configs/flava_captions.py --workdir runs/mine "--config.data.sources=('data/mine',)"
    mmjax train --config configs/flava_captions.py:test --workdir /tmp/t "--config.data.sources=('data/mine',)"
"""

from mmjax.train.config import captions_config


def get_config(arg: str | None = None):
    return captions_config("flava-tiny-bpe", "flava", arg, test_model="flava-test-bpe")
