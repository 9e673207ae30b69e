"""Zero-shot evaluation throughput: mmjax vs OpenCLIP (+ clip_benchmark) on the same model, batch and data.

    .venv/bin/python scripts/bench_eval.py --model ViT-B-32 --batch 64 --images 256 [--dtype bfloat16]

Two measurements, each as images/s and, when the references are installed, a ratio:

- `embedding`: image embedding alone. Both sides embed the same random uint8 images
  with random weights (throughput does not depend on the weights). mmjax's time
  includes uint8 → float normalisation on device; OpenCLIP gets ready float
  tensors (`torch.no_grad`, `eval()`), which favours OpenCLIP slightly.
- `end_to_end`: a whole zero-shot classification run over the same webdataset
  shards (random 256×256 JPEGs, 10 classes, 2 templates, written to a temporary
  directory): `mmjax.eval.benchmarks.run_benchmark` against clip_benchmark's
  `zeroshot_classification` (classifier + `run_classification`, the stages of
  its `evaluate`) with OpenCLIP's preprocessing and a PyTorch DataLoader over
  its webdataset reader. Both decode in the main process and include building
  the classifier.

Compilation (mmjax) and one warm-up batch (OpenCLIP) are excluded. The last line
is a JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
from PIL import Image

import mmjax.models as models
from mmjax.data.tokenizers import Tokenizer
from mmjax.eval.benchmarks import run_benchmark
from mmjax.inference import Encoder

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


CLASSNAMES = ["airplane", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck", "car"]
TEMPLATES = ["a photo of a {c}.", "a blurry photo of a {c}."]


def _write_wds(directory: str, count: int) -> None:
    """clip_benchmark's layout: test/0.tar (KEY.jpg + KEY.cls), test/nshards.txt, classnames.txt, templates."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(directory, "test"))
    with tarfile.open(os.path.join(directory, "test", "0.tar"), "w") as tar:
        for index in range(count):
            jpeg = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
            for suffix, payload in [("jpg", jpeg.getvalue()), ("cls", str(index % len(CLASSNAMES)).encode())]:
                info = tarfile.TarInfo(f"{index:06d}.{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    with open(os.path.join(directory, "test", "nshards.txt"), "w") as f:  # clip_benchmark's reader wants it
        f.write("1\n")
    with open(os.path.join(directory, "classnames.txt"), "w") as f:
        f.write("\n".join(CLASSNAMES) + "\n")
    with open(os.path.join(directory, "zeroshot_classification_templates.txt"), "w") as f:
        f.write("\n".join(TEMPLATES) + "\n")


def _mmjax_encoder(name: str, batch: int, dtype: str) -> Encoder:
    """A randomly initialised model; the synthetic tokenizer stands in for CLIP's BPE (same context length)."""
    model = models.TwoTower(models.get_config(name, dtype=dtype))
    image, text = models.example_inputs(model.config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), image=image, text=text))["params"]
    encoder = Encoder(model, params, Tokenizer.for_synthetic(model.config.text.context_length), CLIP_MEAN, CLIP_STD,
                      batch_size=batch)
    encoder.encode_images(np.zeros((1, *encoder.image_shape), np.uint8))  # compile both towers
    encoder.encode_texts(["a photo"])
    return encoder


def _mmjax_images_per_s(encoder: Encoder, images: np.ndarray) -> float:
    start = time.perf_counter()
    encoder.encode_images(images)
    return len(images) / (time.perf_counter() - start)


def _mmjax_end_to_end_images_per_s(encoder: Encoder, directory: str, count: int, batch: int) -> float:
    start = time.perf_counter()
    run_benchmark(f"wds:{directory}", encoder.encode_images, encoder.encode_texts,
                  image_size=encoder.image_shape[0], batch_size=batch)
    return count / (time.perf_counter() - start)


def _clip_benchmark_images_per_s(name: str, directory: str, count: int, batch: int, threads: int) -> float | None:
    try:
        import open_clip
        import torch
        from clip_benchmark.datasets.builder import build_dataset
        from clip_benchmark.metrics import zeroshot_classification
    except ImportError:
        return None
    torch.set_num_threads(threads)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    model.eval()
    dataset = build_dataset("wds/bench", root=directory, transform=preprocess, split="test")
    loader = torch.utils.data.DataLoader(dataset.batched(batch), batch_size=None, shuffle=False, num_workers=0)
    start = time.perf_counter()
    # The two stages of clip_benchmark's `evaluate`; its metric step (a few ms) fails under NumPy ≥ 2.4
    # (clip-benchmark 1.6.2 calls float() on a 1-element array), so it is left out.
    classifier = zeroshot_classification.zero_shot_classifier(model, open_clip.get_tokenizer(name), CLASSNAMES,
                                                              TEMPLATES, "cpu", amp=False)
    zeroshot_classification.run_classification(model, classifier, loader, "cpu", amp=False)
    return count / (time.perf_counter() - start)


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


def _reference_unavailable(name: str) -> str | None:
    """Why OpenCLIP cannot be the reference for model `name`, or None when it can."""
    try:
        import open_clip
    except ImportError:
        return "not installed (pip install open_clip_torch clip-benchmark)"
    if name not in open_clip.list_models():
        return f"n/a (OpenCLIP has no model named {name!r})"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for OpenCLIP")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    for name in ("batch", "images", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.model not in models.list_models():
        parser.error(f"--model {args.model!r} is not a registered model; known: {', '.join(models.list_models())}")
    try:
        models.check_two_tower(args.model, "bench_eval.py times")
    except ValueError as error:
        parser.error(str(error))
    size = models.get_config(args.model).vision.image_size
    images = np.random.default_rng(0).integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    encoder = _mmjax_encoder(args.model, args.batch, args.dtype)
    result = {"model": args.model, "batch": args.batch, "dtype": args.dtype, "images": args.images}
    unavailable = _reference_unavailable(args.model)
    with tempfile.TemporaryDirectory() as directory:
        _write_wds(directory, args.images)
        for kind, ours, theirs in [
            ("embedding", _mmjax_images_per_s(encoder, images),
             None if unavailable else _open_clip_images_per_s(args.model, images, args.batch, args.threads)),
            ("end_to_end", _mmjax_end_to_end_images_per_s(encoder, directory, args.images, args.batch),
             None if unavailable else _clip_benchmark_images_per_s(args.model, directory, args.images, args.batch,
                                                                  args.threads)),
        ]:
            ratio = None if theirs is None else ours / theirs
            result[kind] = {"mmjax_images_per_s": ours, "reference_images_per_s": theirs, "ratio": ratio}
            reference = (unavailable or "not installed (pip install open_clip_torch clip-benchmark)") \
                if theirs is None else f"{theirs:7.1f} images/s (float32) → ratio {ratio:.2f}×"
            print(f"{kind:10s}  mmjax {ours:7.1f} images/s ({args.dtype})   reference {reference}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
