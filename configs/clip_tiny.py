"""The default: a ~1 M-parameter CLIP on the embedded synthetic shapes data.

    mmjax train --config configs/clip_tiny.py --workdir runs/demo
    mmjax train --config configs/clip_tiny.py:test --workdir /tmp/t   # seconds, for tests
"""

from mmjax.train.config import apply_arg, base_config


def get_config(arg: str | None = None):
    config = apply_arg(base_config(model="clip-tiny", loss="clip"), arg, test_model="clip-test")
    config.lock()
    return config
