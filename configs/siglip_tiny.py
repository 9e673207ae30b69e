"""A tiny SigLIP (sigmoid loss, learnable bias) on the embedded synthetic shapes data.

    mmjax train --config configs/siglip_tiny.py --workdir runs/siglip
"""

from mmjax.train.config import apply_arg, base_config


def get_config(arg: str | None = None):
    config = apply_arg(base_config(model="siglip-tiny", loss="sigmoid"), arg, test_model="siglip-test")
    config.lock()
    return config
