"""Where a compiled step's time goes: a `jax.profiler` trace, its XLA ops grouped by model part.

On CPU, per-op events need `--xla_cpu_enable_xprof_traceme=true` in `XLA_FLAGS` before JAX
starts (`mmjax bench train-step --profile DIR` sets it). Each op (a fusion, a matmul) is
named in the compiled HLO; the JAX source path in its metadata (`…/attn/…`, `…/mlp/…`,
`transpose(…)` for the backward pass) says which part of the model it computes. Op times
overlap when XLA runs independent ops at once, so the parts are shares of the summed op time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from typing import Any, Callable

import jax

PARTS = (("attention", ("/attn/",)), ("mlp", ("/mlp/",)), ("layernorm", ("/ln",)),
         ("embeddings", ("patch_embed", "token_embed", "pos_embed", "/cls/")), ("loss", ("/loss/", "(loss)")),
         ("optimizer", ("/optimizer/",)))  # the train step's named scopes (`jvp(loss)` when differentiated)


# An HLO matmul: a dot or convolution, or (XLA:GPU) its call of cuBLAS or cuDNN.
_MATMUL = re.compile(r"\b(dot|convolution)\(|custom_call_target=\"__(cublas|cudnn)")


def _op_table(hlo: str) -> dict[str, tuple[str, str]]:
    """`{op name: (JAX source path, "matmul" | "elementwise")}` for the ops of an optimised HLO module."""
    computations, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current = computations.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    table = {}
    for body in computations.values():
        for line in body:
            named = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
            if not named:
                continue
            called = re.search(r"calls=%?([\w.\-]+)", line)
            lines = [line] + computations.get(called.group(1), []) if called else [line]
            paths = [m.group(1) for l in lines for m in [re.search(r'op_name="([^"]+)"', l)] if m]
            kind = "matmul" if any(_MATMUL.search(l) for l in lines) else "elementwise"
            table[named.group(1)] = (paths[0] if paths else "", kind)
    return table


def classify(path: str) -> tuple[str, str]:
    """`(part, "forward" | "backward")` of a JAX source path from HLO metadata."""
    direction = "backward" if "transpose(" in path else "forward"
    for part, needles in PARTS:
        if any(needle in path for needle in needles):
            return part, direction
    return "other", direction


def _device_pids(events: list[dict]) -> set:
    """The trace's processes that are accelerators (`/device:GPU:0`, `/device:TPU:0`), from its metadata events;
    empty on CPU, where XLA's ops run in the host process."""
    return {event["pid"] for event in events if event.get("ph") == "M" and event.get("name") == "process_name"
            and re.search(r"/device:(GPU|TPU)", str(event.get("args", {}).get("name", "")))}


# Kernels of the vendor libraries that XLA calls for matmuls and convolutions (cuBLAS, cuBLASLt, cuDNN).
_LIBRARY_MATMUL = re.compile(r"nvjet|gemm|xmma|cutlass|cudnn|fprop|dgrad|wgrad|splitk", re.IGNORECASE)
# cuDNN's fused attention (`--attention cudnn`): its flash kernels and the backward pass's helper kernels.
_CUDNN_ATTENTION = re.compile(r"sdpa|fmha|cudnn::fusion::(compute_dot_do_o|convert_dq)", re.IGNORECASE)
_CUDNN_ATTENTION_BACKWARD = re.compile(r"bprop|compute_dot_do_o|convert_dq", re.IGNORECASE)


def _library_key(kernel: str) -> str:
    """`part/direction/kind` of a vendor-library kernel, which names no op: cuDNN's attention kernels count under
    `attention` (`fprop` forward, `bprop` and its helpers backward), other matmul kernels as `library/-/matmul`,
    runtime copies and memsets as `library/-/other`."""
    if _CUDNN_ATTENTION.search(kernel):
        return f"attention/{'backward' if _CUDNN_ATTENTION_BACKWARD.search(kernel) else 'forward'}/matmul"
    return f"library/-/{'matmul' if _LIBRARY_MATMUL.search(kernel) else 'other'}"


def _device_op(event: dict, table: dict, kernels: dict) -> tuple[str, str] | None:
    """The `table` entry of an accelerator's kernel event: the op its `hlo_op` names, else the fusion the kernel is
    named after (XLA names a kernel after its fusion, `loop_add_fusion.439` → `loop_add_fusion_439`)."""
    return table.get(event.get("args", {}).get("hlo_op")) or table.get(event["name"]) or kernels.get(event["name"])


def op_times(events: list[dict], table: dict[str, tuple[str, str]], steps: int) -> collections.Counter:
    """Milliseconds per step by `part/direction/kind` of the trace's complete (`"X"`) op events (`table` from
    `_op_table`).

    On CPU these are the events named after an op of `table`. With accelerators in the trace, every kernel of
    theirs counts and nothing of the host's (its launch events can carry the same op names). A kernel is placed
    by the op its `hlo_op` names or, inside XLA's CUDA graphs (where `hlo_op` names the graph), by the fusion it is
    named after; XLA compiles identical fusions into one kernel named after the first, so a shared kernel counts
    under that fusion's part. Vendor-library kernels (cuBLAS, cuDNN) name no op: `_library_key` places them.
    """
    devices = _device_pids(events)
    kernels = {re.sub(r"[.\-]", "_", name): entry for name, entry in table.items()} if devices else {}
    totals = collections.Counter()
    for event in events:
        if event.get("ph") != "X" or (event.get("pid") not in devices if devices else event.get("name") not in table):
            continue
        entry = _device_op(event, table, kernels) if devices else table[event["name"]]
        if entry is None:
            key = _library_key(event["name"])
        else:
            part, direction = classify(entry[0])
            key = f"{part}/{direction}/{entry[1]}"
        totals[key] += event["dur"] / 1e3 / steps
    return totals


def summarize(events: list[dict], hlo: str, steps: int) -> dict[str, Any]:
    """`op_ms_per_step` and `by_part` (`{part/direction/kind: {"ms", "share"}}`, largest first) of a trace of
    `steps` steps of the compiled program whose optimised HLO text is `hlo`."""
    totals = op_times(events, _op_table(hlo), steps)
    whole = sum(totals.values()) or 1.0
    return {"op_ms_per_step": round(whole, 2),
            "by_part": {name: {"ms": round(ms, 2), "share": round(ms / whole, 3)} for name, ms in totals.most_common()}}


def read_trace(path: str) -> list[dict]:
    """The events of a (gzipped) perfetto trace JSON that `jax.profiler` wrote."""
    with gzip.open(path) as f:
        events = json.load(f)
    return events["traceEvents"] if isinstance(events, dict) else events


def profile_steps(compiled: Any, run: Callable[[], None], steps: int, directory: str) -> dict[str, Any]:
    """Trace `steps` calls of `run` into `directory` (with the optimised HLO the op names refer to, as
    `step.hlo.txt`); the summed op time per step by `part/direction/kind`, largest first, in milliseconds,
    with each one's share."""
    jax.profiler.start_trace(directory, create_perfetto_trace=True)
    for _ in range(steps):
        run()
    jax.profiler.stop_trace()
    traces = sorted(glob.glob(os.path.join(glob.escape(directory), "**", "*perfetto_trace.json.gz"), recursive=True),
                    key=os.path.getmtime)
    if not traces:
        raise FileNotFoundError(f"the profiler wrote no perfetto trace under {directory}")
    hlo = compiled.as_text()
    with open(os.path.join(directory, "step.hlo.txt"), "w") as f:
        f.write(hlo)
    return {"trace": traces[-1], "hlo": os.path.join(directory, "step.hlo.txt"),
            **summarize(read_trace(traces[-1]), hlo, steps)}
