"""The default: a ~1 M-parameter CLIP on the embedded synthetic shapes data.

    mmjax train --config configs/clip_tiny.py --workdir runs/demo
    mmjax train --config configs/clip_tiny.py:test --workdir /tmp/t   # seconds, for tests
"""

from mmjax.train.config import base_config, small_for_tests


def get_config(arg: str | None = None):
    config = base_config(model="clip-tiny", loss="clip")
    if arg == "test":
        small_for_tests(config, model="clip-test")
    config.lock()
    return config
