"""A tiny SigLIP (sigmoid loss, learnable bias) on the embedded synthetic shapes data.

    mmjax train --config configs/siglip_tiny.py --workdir runs/siglip
"""

from mmjax.train.config import base_config, small_for_tests


def get_config(arg: str | None = None):
    config = base_config(model="siglip-tiny", loss="sigmoid")
    if arg == "test":
        small_for_tests(config, model="siglip-test")
    config.lock()
    return config
