"""Flax (linen) models: layers, ViT, text transformer, two-tower CLIP/SigLIP, fusion blocks, FLAVA, Flamingo
and the size registry."""

from mmjax.models.flamingo import Flamingo, FlamingoConfig, PerceiverResampler
from mmjax.models.flava import Flava, FlavaConfig
from mmjax.models.fusion import CrossAttentionBlock, CrossModalFusion, EarlyFusion, LateFusion, MatchingHead
from mmjax.models.layers import BlockOptions, TransformerSpec
from mmjax.models.registry import (abstract_params, build_model, check_two_tower, create_model, example_inputs,
                                   get_config, list_models, param_count)
from mmjax.models.text import TextConfig, TextTransformer
from mmjax.models.two_tower import TwoTower, TwoTowerConfig
from mmjax.models.vit import VisionConfig, ViT

__all__ = [
    "BlockOptions", "CrossAttentionBlock", "CrossModalFusion", "EarlyFusion", "Flamingo", "FlamingoConfig",
    "Flava", "FlavaConfig", "LateFusion", "MatchingHead", "PerceiverResampler",
    "TextConfig", "TextTransformer", "TransformerSpec", "TwoTower", "TwoTowerConfig", "VisionConfig", "ViT",
    "abstract_params", "build_model", "check_two_tower", "create_model", "example_inputs", "get_config", "list_models",
    "param_count",
]
