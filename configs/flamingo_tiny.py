"""Flamingo (~1.7 M parameters) learning to caption the embedded synthetic shapes data: each caption follows its
image's token, and the next-token loss trains the whole model from scratch (the ViT and the language model
included).

    mmjax train --config configs/flamingo_tiny.py --workdir runs/flamingo
    mmjax caption --model runs/flamingo image.png                  # greedy captions
    mmjax train --config configs/flamingo_tiny.py:test --workdir /tmp/t   # seconds, for tests
"""

from mmjax.train.config import apply_arg, base_config


def get_config(arg: str | None = None):
    config = apply_arg(base_config(model="flamingo-tiny", loss="captioning"), arg, test_model="flamingo-test")
    config.multi_positive = False  # a captioner learns each image's own caption
    config.lock()
    return config
