"""Image-embedding throughput: mmjax's sharded, jitted Encoder vs OpenCLIP on the same model and batch.

    .venv/bin/python scripts/bench_eval.py --model ViT-B-32 --batch 64 --images 256 [--dtype bfloat16]

Both sides embed the same random uint8 images with random weights (throughput
does not depend on the weights). mmjax's time includes uint8 → float
normalisation on device; OpenCLIP gets ready float tensors (`torch.no_grad`,
`eval()`), so the comparison favours OpenCLIP slightly. One warm-up batch is
excluded on both sides. When `open_clip` is not importable, only mmjax is
measured. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import flax.linen as nn
import jax
import numpy as np

import mmjax.models as models
from mmjax.data.tokenizers import Tokenizer
from mmjax.inference import Encoder

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _mmjax_images_per_s(name: str, images: np.ndarray, batch: int, dtype: str) -> float:
    model = models.TwoTower(models.get_config(name, dtype=dtype))
    image, text = models.example_inputs(model.config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), image=image, text=text))["params"]
    encoder = Encoder(model, params, Tokenizer.for_synthetic(model.config.text.context_length), CLIP_MEAN, CLIP_STD,
                      batch_size=batch)
    encoder.encode_images(images[:batch])
    start = time.perf_counter()
    encoder.encode_images(images)
    return len(images) / (time.perf_counter() - start)


def _open_clip_images_per_s(name: str, images: np.ndarray, batch: int, threads: int) -> float | None:
    try:
        import open_clip
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    model = open_clip.create_model(name, pretrained=None).eval()
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    tensors = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        model.encode_image(tensors[:batch])
        start = time.perf_counter()
        for i in range(0, len(tensors), batch):
            model.encode_image(tensors[i:i + batch])
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for OpenCLIP")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    size = models.get_config(args.model).vision.image_size
    images = np.random.default_rng(0).integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    ours = _mmjax_images_per_s(args.model, images, args.batch, args.dtype)
    print(f"mmjax    {args.model} batch {args.batch} {args.dtype}: {ours:8.1f} images/s")
    theirs = _open_clip_images_per_s(args.model, images, args.batch, args.threads)
    result = {"model": args.model, "batch": args.batch, "dtype": args.dtype, "images": args.images,
              "mmjax_images_per_s": ours, "open_clip_images_per_s": theirs,
              "ratio": None if theirs is None else ours / theirs}
    if theirs is None:
        print("OpenCLIP is not installed (pip install open_clip_torch): no ratio")
    else:
        print(f"OpenCLIP {args.model} batch {args.batch} float32: {theirs:8.1f} images/s  → ratio {ours / theirs:.2f}×")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
