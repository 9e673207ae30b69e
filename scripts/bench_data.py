"""Input-pipeline throughput, mmjax (ArrayRecord + grain) vs OpenCLIP (webdataset + torch DataLoader), one core each.

    python scripts/bench_data.py [--count 512] [--side 256] [--image_size 224]

Prints a summary line and, last, one JSON object. See mmjax/bench/data.py for what is timed.
"""
import argparse
import json

from mmjax.bench.data import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=512, help="images")
    parser.add_argument("--side", type=int, default=256, help="source JPEG side in pixels (img2dataset: 256)")
    parser.add_argument("--image_size", type=int, default=224, help="crop size")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    result = run(args.count, args.side, args.image_size, args.batch_size)
    line = f"mmjax {result['mmjax_images_per_s_per_core']:.0f} images/s/core"
    if result["ratio"] is not None:
        line += f", OpenCLIP {result['open_clip_images_per_s_per_core']:.0f} images/s/core, ratio {result['ratio']:.2f}"
    print(f"{line} ({result['reference']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
