"""Logical axis names, defined once.

Every parameter and large activation in mmjax is annotated with these names;
`mmjax.parallel.mesh` maps them to the physical mesh axes (`data`, `fsdp`,
`tensor`) through a table of rules chosen by config. Model code never names a
mesh axis.
"""

# Parameter dimensions.
EMBED = "embed"  # model width (residual stream)
MLP = "mlp"  # hidden width of the feed-forward block
HEADS = "heads"  # attention heads
HEAD_DIM = "kv"  # per-head feature dimension
VOCAB = "vocab"  # token vocabulary
PROJ = "proj"  # shared image-text embedding dimension
LAYERS = "layers"  # stacked layers when scanned
NORM = "norm"  # layer-norm scale and bias
POSITION = "position"  # positional-embedding table rows

# Activation dimensions.
BATCH = "batch"
LENGTH = "length"
ACT_EMBED = "act_embed"
