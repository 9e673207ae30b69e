"""A Flamingo captioner on your own image–caption data: OpenAI CLIP's BPE (49 408 tokens, as OpenCLIP tokenizes)
plus the image token's id, and the demo's towers at 64 px. Name the converted shards (`mmjax data convert`) on the
command line:

    mmjax train --config configs/flamingo_captions.py --workdir runs/captioner "--config.data.sources=('data/mine',)"
    mmjax caption --model runs/captioner photo.jpg
"""

from mmjax.train.config import captions_config


def get_config(arg: str | None = None):
    return captions_config("flamingo-tiny-bpe", "captioning", arg, test_model="flamingo-test-bpe")
