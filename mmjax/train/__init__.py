"""The trainer: config checks, optimizer, sharded train state, the pure step, checkpoints and the loop."""

from mmjax.train.config import ConfigError, base_config, validate
from mmjax.train.loop import train
from mmjax.train.workdir import TrainedModel, load_trained

__all__ = ["ConfigError", "TrainedModel", "base_config", "load_trained", "train", "validate"]
