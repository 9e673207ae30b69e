"""FLAVA (~1.4 M parameters) on the embedded synthetic shapes data: contrastive, image–text matching with hard
negatives, masked language (text and multimodal) and masked image modelling, in one objective.

    mmjax train --config configs/flava_tiny.py --workdir runs/flava
    mmjax eval --model runs/flava                                 # zero-shot and retrieval, as for CLIP
    mmjax train --config configs/flava_tiny.py:test --workdir /tmp/t   # seconds, for tests
"""

from mmjax.train.config import apply_arg, base_config


def get_config(arg: str | None = None):
    config = apply_arg(base_config(model="flava-tiny", loss="flava"), arg, test_model="flava-test")
    config.multi_positive = False  # FLAVA's captions are each their own image's positive
    config.lock()
    return config
