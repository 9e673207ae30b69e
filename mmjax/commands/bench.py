"""`mmjax bench NAME`: benchmarks, one sub-benchmark per entry of `BENCHMARKS`.

    mmjax bench train-step --model bench-tiny --batch 64 --threads 2 [--mesh data=2,fsdp=1,tensor=1]
                           [--dtype bfloat16] [--steps 10] [--scan_layers] [--remat dots] [--attention cudnn] [--noopen_clip]
                           [--largest_batch [--memory_gib 70]]
    mmjax bench data [--images 512] [--source_px 256] [--crop_px 224] [--batch 64]
    mmjax bench input [--model clip-tiny] [--batch 256] [--num_workers 1] [--data synthetic] [--images 4096]
                      [--source_px 32] [--steps 10] [--rounds 5] [--threads N] [--worker_priority idle]
                      [--record_reads parallel]

Progress goes to stderr and a summary to stdout; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Callable

from absl import flags

from mmjax.commands.subcommand_flags import refuse_unread_flags
from mmjax.data.arrayrecord_source import READS
from mmjax.data.workers import WORKER_PRIORITIES
from mmjax.models.layers import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES


def _define_train_step_flags() -> None:
    flags.DEFINE_string("model", "bench-tiny", "Registered model name (`mmjax models`; input: default clip-tiny).")
    flags.DEFINE_integer("batch", 64, "Global batch size (pairs); with --largest_batch, the step of the search "
                         "(input: default the training config's batch).", lower_bound=1)
    flags.DEFINE_bool("largest_batch", False, "Time the largest multiple of --batch whose compiled step fits in "
                      "each device's memory (--memory_gib, or what the device's allocator may hand out).")
    flags.DEFINE_float("memory_gib", None, "With --largest_batch: the memory budget per device in GiB (needed on "
                       "CPU, which reports no limit).")
    flags.DEFINE_integer("threads", None, "CPU threads for XLA and torch (default: all the process may use).",
                         lower_bound=1)
    flags.DEFINE_string("mesh", "data=-1", "Mesh sizes, e.g. data=2,fsdp=2,tensor=2 (one may be -1).")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (parameters stay float32).")
    flags.DEFINE_integer("steps", 10, "Timed steps (train-step: the median is reported; input: steps per "
                         "round, each round's mean, the median over rounds).", lower_bound=1)
    flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.", lower_bound=0)
    flags.DEFINE_bool("scan_layers", False, "Scan the transformer layers.")
    flags.DEFINE_enum("remat", "none", list(REMAT_POLICIES), "Rematerialisation policy.")
    flags.DEFINE_enum("attention", "xla", list(ATTENTION_IMPLEMENTATIONS), "Self-attention implementation "
                      "(cudnn: NVIDIA GPUs, --dtype bfloat16).")
    flags.DEFINE_bool("open_clip", True, "On CPU, also time OpenCLIP's step on the same model when it is installed.")
    flags.DEFINE_bool("hugepages", True, "On Linux, re-run the process with glibc's malloc on transparent huge "
                      "pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1; see mmjax/hugepages.py).")
    flags.DEFINE_string("profile", None, "Also trace 3 steps into this directory and print where their time goes.")
    flags.DEFINE_integer("peak_size", 2048, "On CPU, the side of the --dtype matmul whose rate is the MFU peak "
                         "(smaller ones time the call more than the matmul).", lower_bound=1024)


def parse_mesh(text: str) -> dict[str, int]:
    """`"data=2,fsdp=1"` → `{"data": 2, "fsdp": 1}`; unknown axes or non-integers raise ValueError."""
    from mmjax.parallel import MESH_AXES

    sizes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in MESH_AXES or name in sizes or not re.fullmatch(r"-?[0-9]+", value):
            raise ValueError(f"--mesh={text!r}: use AXIS=SIZE items, each AXIS once from {MESH_AXES}, "
                             f"e.g. data=2,tensor=2")
        sizes[name] = int(value)
    return sizes


def _two_tower_model(name: str) -> str:
    """`name`, or a one-line ValueError for a registered model the benchmarks do not time (FLAVA)."""
    from mmjax.models import check_two_tower

    check_two_tower(name, "the benchmarks time")
    return name


def _train_step(argv: list[str]) -> None:
    from mmjax.hugepages import hugepages_enabled, reexec_with_hugepages
    from mmjax.bench.threads import limit_threads

    f = flags.FLAGS
    _two_tower_model(f.model)
    mesh = parse_mesh(f.mesh)
    if f.memory_gib is not None and not (f.largest_batch and f.memory_gib > 0):
        raise ValueError(f"--memory_gib={f.memory_gib} must be positive and goes with --largest_batch")
    if f.profile:  # made (or refused) now, not after the whole benchmark
        if os.path.exists(f.profile) and not os.path.isdir(f.profile):
            raise ValueError(f"--profile {f.profile} is a file; name a directory for the trace")
        os.makedirs(f.profile, exist_ok=True)
    if f.hugepages:
        reexec_with_hugepages()
    threads = limit_threads(f.threads)  # before JAX starts its CPU backend
    if f.profile:  # XLA:CPU emits per-op trace events only with this flag
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
    import jax

    from mmjax.bench.open_clip_reference import bench_open_clip_step, open_clip_available, reference_problem
    from mmjax.bench.peak import device_peak_flops, measure_matmul_flops, model_flops_utilization
    from mmjax.bench.largest_batch import format_bytes, memory_budget
    from mmjax.bench.train_step import bench_train_step, find_largest_batch, synthetic_batch
    from mmjax.models import get_config, param_count

    device = jax.devices()[0]
    batch, search = f.batch, {}
    if f.largest_batch:
        budget = memory_budget(device, f.memory_gib)
        print(f"finding the largest multiple of {f.batch} whose step fits in {format_bytes(budget)} per device …",
              file=sys.stderr, flush=True)
        batch, tried = find_largest_batch(f.model, f.batch, budget, mesh=mesh, dtype=f.dtype,
                                          scan_layers=f.scan_layers, remat_policy=f.remat, attention=f.attention,
                                          log=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
        search = {"largest_batch": {"budget_bytes": budget, "tried_bytes": {str(b): n for b, n in sorted(tried.items())}}}
    result = bench_train_step(f.model, batch, mesh=mesh, dtype=f.dtype, scan_layers=f.scan_layers,
                              remat_policy=f.remat, attention=f.attention, steps=f.steps, warmup=f.warmup, profile_dir=f.profile)
    result.update(search, threads=threads, param_count=param_count(f.model), platform=device.platform,
                  malloc_hugepages=hugepages_enabled())
    if device.platform == "cpu":
        peak = measure_matmul_flops(f.peak_size, dtype=f.dtype)
        result["peak_source"] = f"measured {f.dtype} matmul {f.peak_size}²"
    else:
        peak, result["peak_source"] = device_peak_flops(device), f"bf16 peak of {device.device_kind}"
    result["peak_flops"] = peak
    achieved = result["analytic_flops_per_step"] / result["step_time_s"]
    result["achieved_flops_per_s"] = achieved
    result["mfu"] = model_flops_utilization(achieved, peak, device.platform, result["devices"])
    reference_unavailable = (reference_problem(get_config(f.model)) if open_clip_available() else
                             "open_clip_torch is not installed (pip install open_clip_torch; make test installs it)")
    if device.platform == "cpu" and f.open_clip and reference_unavailable:
        result["open_clip_skipped"] = reference_unavailable
    elif device.platform == "cpu" and f.open_clip:
        print("timing OpenCLIP's step on the same model …", file=sys.stderr, flush=True)
        reference = bench_open_clip_step(get_config(f.model), synthetic_batch(get_config(f.model), result["batch"]),
                                         steps=f.steps, warmup=f.warmup, dtype=f.dtype)
        if reference["param_count"] != result["param_count"]:
            raise ValueError(f"OpenCLIP's {f.model} has {reference['param_count']} parameters, "
                             f"mmjax's {result['param_count']}")
        result["open_clip"] = reference
        result["ratio_to_open_clip"] = result["step_time_s"] / reference["step_time_s"]
    _print_summary(result)
    print(json.dumps(result))


def _print_summary(result: dict) -> None:
    print(f"{result['model']} batch {result['batch']} mesh {result['mesh']} {result['dtype']} "
          f"on {result['devices']}× {result['device_kind']}, {result['threads']} thread(s)")
    print(f"  step {result['step_time_s'] * 1e3:.1f} ms  {result['examples_per_s']:.1f} examples/s  "
          f"compile {result['compile_s']:.1f} s")
    unrolled = " of the unrolled step (XLA counts a scanned layer once)" if result["scan_layers"] else ""
    libraries = "; XLA:GPU does not count its cuBLAS/cuDNN calls" if result["platform"] == "gpu" else ""
    print(f"  FLOPs/step: XLA {result['flops_per_step']:.4g}{unrolled}, analytic "
          f"{result['analytic_flops_per_step']:.4g} (ratio {result['flops_ratio_xla_to_analytic']:.3f}{libraries})")
    mfu = "n/a (unknown peak)" if result["mfu"] is None else f"{result['mfu']:.1%}"
    if result["mfu"] is not None and result["mfu"] > 1:
        mfu += " (above the peak: the peak measured too low, e.g. on a busy machine)"
    print(f"  {result['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s, peak {result['peak_flops'] or 0:.4g} "
          f"({result['peak_source']}): MFU {mfu}")
    if "memory_per_device_bytes" in result:
        print(f"  memory per device {result['memory_per_device_bytes'] / 2**20:.1f} MiB")
    if "largest_batch" in result:
        from mmjax.bench.largest_batch import format_bytes

        search = result["largest_batch"]
        larger = min((int(b) for b in search["tried_bytes"] if int(b) > result["batch"]), default=None)
        beyond = "" if larger is None else f"; batch {larger} needs {format_bytes(search['tried_bytes'][str(larger)])}"
        print(f"  largest batch that fits {format_bytes(search['budget_bytes'])} per device: {result['batch']} "
              f"({len(search['tried_bytes'])} sizes compiled{beyond})")
    if "profile" in result:
        print(f"  profile ({result['profile']['op_ms_per_step']:.0f} ms of ops per step; trace "
              f"{result['profile']['trace']}):")
        for name, part in list(result["profile"]["by_part"].items())[:12]:
            print(f"    {part['ms']:8.1f} ms  {part['share']:6.1%}  {name}")
    if "open_clip" in result:
        print(f"  OpenCLIP step ({result['open_clip']['dtype']}) {result['open_clip']['step_time_s'] * 1e3:.1f} ms: "
              f"mmjax/OpenCLIP = {result['ratio_to_open_clip']:.3f}")
    if "open_clip_skipped" in result:
        print(f"  no OpenCLIP reference: {result['open_clip_skipped']}")


def _define_data_flags() -> None:
    flags.DEFINE_integer("images", 512, "JPEGs to decode (data: default 512; input: default 4096).", lower_bound=1)
    flags.DEFINE_integer("source_px", 256, "Side of the source JPEGs (data: default 256, img2dataset's; input: "
                         "default the model's image size).", lower_bound=8, upper_bound=4096)
    flags.DEFINE_integer("crop_px", 224, "data: side of the random-resized crops.", lower_bound=8, upper_bound=4096)


def _data(_argv: list[str]) -> None:
    """Decode + random-resized crop + tokenise per core: mmjax (ArrayRecord + grain) against OpenCLIP's
    transform and tokenizer in a torch DataLoader over webdataset tars (mmjax/bench/data.py)."""
    from mmjax.bench.data import run as run_data

    result = run_data(flags.FLAGS.images, flags.FLAGS.source_px, flags.FLAGS.crop_px, flags.FLAGS.batch)
    theirs = result["open_clip_images_per_s_per_core"]
    print(f"mmjax {result['mmjax_images_per_s_per_core']:.0f} images/s/core", end="")
    print(f", OpenCLIP {theirs:.0f} images/s/core, ratio {result['ratio']:.2f}" if theirs else "", end="")
    print(f" ({result['reference']})")
    print(json.dumps(result))


def _define_input_flags() -> None:
    flags.DEFINE_integer("num_workers", 1, "input: grain worker processes (the demo's config.data.num_workers).",
                         lower_bound=0)
    flags.DEFINE_integer("rounds", 5, "input: alternating rounds of each side (the median is reported).",
                         lower_bound=1)
    flags.DEFINE_enum("worker_priority", "normal", list(WORKER_PRIORITIES), "input: CPU priority of the worker "
                      "processes (config.data.worker_priority).")
    flags.DEFINE_enum("record_reads", "auto", list(READS), "input: how a batch's records are read from the "
                      "shards (config.data.record_reads).")
    flags.DEFINE_enum("data", "arrayrecord", ["arrayrecord", "synthetic"], "input: the pipeline: ArrayRecord shards "
                      "of the demo's images (--images, --source_px), or the demo's own synthetic stream.")


def _input(_argv: list[str]) -> None:
    """The demo's training step fed by the real pipeline (ArrayRecord → grain workers) against the same step
    fed from memory, alternating in one run (mmjax/bench/input.py)."""
    from mmjax.hugepages import reexec_with_hugepages

    f = flags.FLAGS
    if f.data == "synthetic" and (f["images"].present or f["source_px"].present or f["record_reads"].present):
        raise ValueError("--images, --source_px and --record_reads describe the ArrayRecord shards; --data synthetic "
                         "draws the demo's stream instead")
    if f.hugepages:  # as `mmjax train` runs
        reexec_with_hugepages()
    from mmjax.bench.threads import checked_cpus

    checked_cpus(f.threads)
    if f.threads is not None:  # XLA's threads only: the worker processes may still run on every core
        os.environ["PJRT_NPROC"] = str(f.threads)
    from mmjax.bench.input import run as run_input
    from mmjax.models import get_config
    from mmjax.train.config import base_config, own_loss

    model = _two_tower_model(f.model if f["model"].present else "clip-tiny")
    config = base_config(model, own_loss(get_config(model)))
    config.batch_size = f.batch if f["batch"].present else config.batch_size
    config.data.num_workers = f.num_workers
    config.data.worker_priority = f.worker_priority
    config.data.record_reads = f.record_reads
    images = f.images if f["images"].present else 4096
    if f.data == "arrayrecord" and images < config.batch_size:
        raise ValueError(f"--images={images} must be at least one batch ({config.batch_size}, --batch)")
    source_px = f.source_px if f["source_px"].present else None
    result = run_input(config, images, source_px, f.steps, f.rounds, synthetic_stream=f.data == "synthetic")
    result["xla_threads"] = int(os.environ.get("PJRT_NPROC", len(os.sched_getaffinity(0))))
    data = (f"{result['images']} images of {result['source_px']} px, record reads {result['record_reads']}"
            if f.data == "arrayrecord" else "the synthetic stream")
    print(f"{result['model']} batch {result['batch']}, {result['num_workers']} worker(s) at "
          f"{result['worker_priority']} priority, XLA threads {os.environ.get('PJRT_NPROC', 'all')}, {data}")
    print(f"  step from memory {result['memory_step_s'] * 1e3:.1f} ms, from the pipeline "
          f"{result['pipeline_step_s'] * 1e3:.1f} ms (waiting for data {result['pipeline_data_wait_s'] * 1e3:.1f} ms)"
          f": ratio {result['ratio']:.3f}")
    busy, step = result["memory_step_busy_cores"], result["memory_step_s"]
    workers = result["workers_cpu_per_step_s"]
    print(f"  rounds' ratios {min(result['round_ratios']):.3f}–{max(result['round_ratios']):.3f}; the in-memory step "
          f"keeps {busy:.2f} of {result['cores']} cores busy ({max(result['cores'] - busy, 0) * step * 1e3:.0f} ms of "
          f"core time idle per step)" + ("" if workers is None else f"; the workers use {workers * 1e3:.0f} ms of CPU "
                                         f"per step"))
    print(json.dumps(result))


# Sub-benchmarks: name → (define its flags, run it). Flags of all of them are defined together.
BENCHMARKS: dict[str, tuple[Callable[[], None], Callable[[list[str]], None]]] = {
    "train-step": (_define_train_step_flags, _train_step),
    "data": (_define_data_flags, _data),
    "input": (_define_input_flags, _input),
}


# The flags each sub-benchmark reads; any other bench flag given to it is an error, not silently ignored.
_TRAIN_STEP_FLAGS = {"model", "batch", "threads", "mesh", "dtype", "steps", "warmup", "scan_layers", "remat", "attention",
                     "open_clip", "hugepages", "profile", "peak_size", "largest_batch", "memory_gib"}
FLAGS_USED = {
    "train-step": _TRAIN_STEP_FLAGS,
    "data": {"images", "source_px", "crop_px", "batch"},
    "input": {"model", "batch", "threads", "steps", "hugepages", "images", "source_px", "num_workers", "rounds",
              "worker_priority", "data", "record_reads"},
}
_BENCH_FLAGS: set[str] = set()


def define_flags() -> None:
    before = set(flags.FLAGS)
    for define, _ in BENCHMARKS.values():
        define()
    _BENCH_FLAGS.update(set(flags.FLAGS) - before)


def run(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in BENCHMARKS:
        got = " ".join(argv[1:]) or "nothing"
        raise ValueError(f"usage: mmjax bench {{{'|'.join(BENCHMARKS)}}} [flags]; got {got}")
    refuse_unread_flags(f"bench {argv[1]}", _BENCH_FLAGS, FLAGS_USED[argv[1]])
    BENCHMARKS[argv[1]][1](argv[1:])
