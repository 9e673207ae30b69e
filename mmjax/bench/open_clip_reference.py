"""The same training step in PyTorch with OpenCLIP, for `mmjax bench train-step` on CPU.

The model is an `open_clip.model.CLIP` built with the numbers of an mmjax registry
entry (OpenAI layout: class token, pre-norm, causal text pooled at end-of-text);
the step is OpenCLIP's `train_one_epoch` without data loading: forward, `ClipLoss`,
backward, `clip_grad_norm_(1.0)`, AdamW (no decay on gains, biases, the temperature and
the positional embeddings, the parameters mmjax's `optim.no_decay` leaves out; OpenCLIP's
`main.py` would also decay the 2-D positional embeddings), then the temperature clamp. The
learning rate is constant: a schedule's cost per step is not measurable here. With `dtype="bfloat16"`
the forward pass and loss run under `torch.autocast`, as OpenCLIP's `--precision amp_bf16`.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from mmjax.bench.timing import step_times
from mmjax.models import TwoTowerConfig


def open_clip_available() -> bool:
    try:
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def reference_problem(config: TwoTowerConfig) -> str | None:
    """Why `build_open_clip` cannot build `config`, or None when it can."""
    if config.vision.pool != "cls" or config.text.pool != "eot" or not config.image_projection:
        return "the OpenCLIP reference covers CLIP-layout models (class token, end-of-text pooling)"
    if config.logit_bias_init is not None:
        return "the OpenCLIP reference trains with the CLIP loss, not a sigmoid loss"
    if config.options.activation not in ("gelu", "quick_gelu"):
        return f"OpenCLIP has no {config.options.activation!r} activation"
    if config.text_options.activation != config.options.activation:
        return "OpenCLIP's CLIP computes both towers with one activation"
    return None


def build_open_clip(config: TwoTowerConfig):
    """An `open_clip.model.CLIP` with the tower sizes of `config` (CLIP layout only: see `reference_problem`)."""
    from open_clip.model import CLIP

    problem = reference_problem(config)
    if problem is not None:
        raise ValueError(problem)
    vision, text = config.vision, config.text
    vision_cfg = dict(image_size=vision.image_size, patch_size=vision.patch_size, width=vision.width,
                      layers=vision.depth, head_width=vision.width // vision.num_heads,
                      mlp_ratio=vision.mlp_dim / vision.width)
    text_cfg = dict(context_length=text.context_length, vocab_size=text.vocab_size, width=text.width,
                    heads=text.num_heads, layers=text.depth, mlp_ratio=text.mlp_dim / text.width)
    return CLIP(config.embed_dim, vision_cfg, text_cfg, quick_gelu=config.options.activation == "quick_gelu")


def bench_open_clip_step(config: TwoTowerConfig, batch: dict[str, np.ndarray], *, steps: int = 10,
                         warmup: int = 2, learning_rate: float = 1e-4, weight_decay: float = 0.1,
                         dtype: str = "float32") -> dict[str, Any]:
    """Time OpenCLIP's training step on `batch` (`image` uint8 `[B, S, S, 3]`, `text` int `[B, L]`),
    with float32 or bfloat16-autocast (`dtype`) compute.

    Returns `step_time_s` (median after `warmup`), `step_times_s`, `param_count`, `threads`, `dtype`, `batch`.
    """
    import contextlib

    import torch
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    model = build_open_clip(config).train()
    exclude = lambda name, p: (p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
                               or "positional_embedding" in name)
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay}],
        lr=learning_rate, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    images = torch.from_numpy((batch["image"].astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy())
    texts = torch.from_numpy(batch["text"].astype(np.int64))

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"the OpenCLIP reference runs float32 or bfloat16, not {dtype!r}")
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16"
                else contextlib.nullcontext)

    def run():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            image_features, text_features, logit_scale = model(images, texts)
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    times = step_times(run, warmup, steps)
    return {"step_time_s": statistics.median(times), "step_times_s": times,
            "param_count": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
            "dtype": dtype, "batch": len(batch["image"])}
