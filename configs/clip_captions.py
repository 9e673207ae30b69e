"""CLIP on your own image–caption data: OpenAI CLIP's BPE (49 408 tokens, as OpenCLIP tokenizes) and
the demo's towers at 64 px. Name the converted shards (`mmjax data convert`) on the command line:

    mmjax train --config configs/clip_captions.py --workdir runs/mine "--config.data.sources=('data/mine',)"
    mmjax train --config configs/clip_captions.py:test --workdir /tmp/t "--config.data.sources=('data/mine',)"
"""

from mmjax.train.config import captions_config


def get_config(arg: str | None = None):
    return captions_config("clip-tiny-bpe", "clip", arg, test_model="clip-test-bpe")
