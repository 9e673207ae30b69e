"""The demo's synthetic world as files, to try the own-data path of the README offline.

    .venv/bin/python scripts/synthetic_shards.py --out shards            # 8 192 pairs in 4 tars + a benchmark

Writes
  OUT/train/00000.tar …    img2dataset's webdataset layout: KEY.jpg, KEY.txt (the caption), KEY.json
  OUT/bench/test/0.tar     clip_benchmark's retrieval layout (KEY.png, KEY.txt): 1 000 retrieval
                           images of the synthetic world with their full captions, for `--benchmark wds:OUT/bench`
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os

from PIL import Image

from mmjax.bench.data import write_tar
from mmjax.data import synthetic


def _encoded(pixels, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def write_train_shards(directory: str, count: int, num_shards: int, image_size: int) -> int:
    """`count` training pairs in at most `num_shards` tars of JPEGs (quality 90), as img2dataset writes them;
    returns the number of tars."""
    os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(os.path.join(directory, "[0-9][0-9][0-9][0-9][0-9].tar")):  # this script's own tars
        os.remove(stale)  # from a run with other counts, which would otherwise stay beside the new ones
    source = synthetic.SyntheticSource("train", seed=0, num_examples=count)
    per_shard = -(-count // num_shards)
    for shard, start in enumerate(range(0, count, per_shard)):
        members = []
        for index in range(start, min(start + per_shard, count)):
            record, key = source[index], f"{shard:05d}_{index - start:06d}"
            members += [(f"{key}.jpg", _encoded(synthetic.render_image(record, image_size), "JPEG")),
                        (f"{key}.txt", record["caption"].encode()),
                        (f"{key}.json", json.dumps({"key": key, "width": image_size, "height": image_size}).encode())]
        write_tar(os.path.join(directory, f"{shard:05d}.tar"), members)
    return shard + 1


def write_retrieval_benchmark(directory: str, count: int, image_size: int) -> None:
    """`count` pairs of the synthetic retrieval split (one full caption per image) as a clip_benchmark webdataset."""
    os.makedirs(os.path.join(directory, "test"), exist_ok=True)
    source = synthetic.SyntheticSource("retrieval", seed=0, num_examples=count)
    members = []
    for index in range(len(source)):
        record = source[index]
        members += [(f"{index:06d}.png", _encoded(synthetic.render_image(record, image_size), "PNG")),
                    (f"{index:06d}.txt", record["caption"].encode())]
    write_tar(os.path.join(directory, "test", "0.tar"), members)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="directory to write train/ and bench/ into")
    parser.add_argument("--count", type=int, default=8192, help="training pairs")
    parser.add_argument("--shards", type=int, default=4, help="training tars")
    parser.add_argument("--bench-count", type=int, default=1000, help="retrieval benchmark pairs (at most 1134)")
    parser.add_argument("--image-size", type=int, default=64, help="pixels per side")
    args = parser.parse_args()
    for name in ("count", "shards", "bench_count", "image_size"):  # before any work, and before old tars go
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    try:
        synthetic.SyntheticSource("retrieval", seed=0, num_examples=args.bench_count)
    except ValueError as error:
        parser.error(f"--bench-count {args.bench_count}: {error}")
    try:
        tars = write_train_shards(os.path.join(args.out, "train"), args.count, args.shards, args.image_size)
        write_retrieval_benchmark(os.path.join(args.out, "bench"), args.bench_count, args.image_size)
    except OSError as error:  # a file in the way of --out, no permission, a full disk
        parser.error(f"cannot write into --out {args.out}: {error.strerror or error}: {error.filename}")
    print(f"{args.count} training pairs in {tars} tars -> {args.out}/train; "
          f"retrieval benchmark -> {args.out}/bench")


if __name__ == "__main__":
    main()
