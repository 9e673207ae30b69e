"""Fine-tune a pretrained CLIP or SigLIP on your own image–caption shards (`mmjax data convert`).

`config.model` names the checkpoint (what `mmjax.load_pretrained` loads); the run starts from its weights and
trains with its tokenizer, its image mean and std, and its own loss (`loss="auto"`: CLIP's for a CLIP, the
sigmoid loss for a SigLIP; mmjax/train/finetune.py):

    mmjax train --config configs/finetune.py --workdir runs/ft --config.model=hf:openai/clip-vit-base-patch32 \\
        "--config.data.sources=('data/mine',)"
    mmjax train --config configs/finetune.py --workdir runs/ft-siglip --config.model=hf:google/siglip-base-patch16-224 \\
        "--config.data.sources=('data/mine',)"

An OpenCLIP model by name takes its weights file: `--config.model=open_clip:ViT-B-32-quickgelu
--config.pretrained.weights=open_clip_model.safetensors`. `get_config("test")` shrinks the run to seconds (the
model is still the one named).
"""

import ml_collections

from mmjax.train.config import ConfigError, base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base_config("", "auto")  # the model: --config.model=CHECKPOINT; the loss: its own
    config.multi_positive = False  # real captions carry no attribute labels
    config.data.name = "arrayrecord"
    config.batch_size = 256
    config.total_steps = 2000
    # A small step and a short warmup, as OpenCLIP's and WiSE-FT's fine-tuning: the checkpoint is already good.
    config.optim.learning_rate = 1e-5
    config.optim.warmup_steps = 100
    config.checkpoint_every = 500
    if arg == "test":
        config.update(dict(batch_size=16, total_steps=4, log_every=1, checkpoint_every=2))
        config.optim.warmup_steps = 1
        config.data.num_workers = 0
    elif arg is not None:
        raise ConfigError(f"unknown config argument {arg!r}: use none or 'test'")
    config.lock()
    return config
