"""`mmjax bench train-step`: the JSON it ends with, XLA's FLOP count against the analytic one,
and the OpenCLIP model built with the same numbers (no timing assertions)."""

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from mmjax.bench.flops import train_step_flops
from mmjax.bench.largest_batch import NoBatchFitsError, largest_batch
from mmjax.bench.open_clip_reference import build_open_clip, open_clip_available, reference_problem
from mmjax.commands.bench import parse_mesh
from mmjax.models import get_config, param_count

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_analytic_count_of_bench_tiny_by_hand():
    # Per block and token: q, k, v, out 4·D² and MLP 2·D·M multiply-adds, attention 2·T·D;
    # ×2 FLOPs per multiply-add, ×3 for training (×2 for the patch embedding: no gradient for the images).
    d, m, b = 192, 768, 64
    image_tokens, text_tokens = 65, 32
    per_token_layer = lambda t: 2 * (4 * d * d + 2 * d * m + 2 * t * d)
    forward = (4 * per_token_layer(image_tokens) * b * image_tokens + 4 * per_token_layer(text_tokens) * b * text_tokens
               + 2 * 2 * b * d * 192 + 2 * b * b * 192)
    patch = 2 * b * 64 * (8 * 8 * 3) * d
    assert train_step_flops(get_config("bench-tiny"), b)["total"] == 3 * forward + 2 * patch


def _jaxpr_matmul_flops(jaxpr) -> int:
    """2 × output size × contracted size of every dot_general and conv in `jaxpr` and its sub-jaxprs."""
    import math

    import jax.extend

    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
                eqn.invars[0].aval.shape[i] for i in contracting)
        elif eqn.primitive.name == "conv_general_dilated":
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(eqn.invars[1].aval.shape[:-1])
        for value in eqn.params.values():
            if isinstance(value, jax.extend.core.ClosedJaxpr):
                total += _jaxpr_matmul_flops(value.jaxpr)
            elif isinstance(value, jax.extend.core.Jaxpr):
                total += _jaxpr_matmul_flops(value)
    return total


@pytest.mark.parametrize("name", ["siglip-test", "clip-test"])
def test_analytic_image_tower_count_equals_the_matmuls_jax_traces(name):
    """Including SigLIP's MAP head (the bench used to stop there, after timing, with an error)."""
    import flax.linen as nn
    import jax

    from mmjax.bench.flops import forward_flops
    from mmjax.models import TwoTower, example_inputs

    config, batch = get_config(name), 8
    model = TwoTower(config)
    images, tokens = example_inputs(config, batch_size=batch)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), image=images, text=tokens))["params"]
    traced = jax.make_jaxpr(lambda p: model.apply({"params": p}, images, method=TwoTower.encode_image))(params)
    parts = forward_flops(config, batch)
    projection = 2 * batch * config.vision.width * config.embed_dim * config.image_projection
    analytic = sum(v for k, v in parts.items() if k.startswith("image") or k == "patch_embed") + projection
    assert ("image_map_head" in parts) == (config.vision.pool == "map")
    assert _jaxpr_matmul_flops(traced.jaxpr) == analytic


def test_bench_tiny_has_open_clips_parameter_count():
    assert param_count("bench-tiny") == 3_881_473
    if not open_clip_available():
        pytest.skip("open_clip_torch is not installed")
    assert sum(p.numel() for p in build_open_clip(get_config("bench-tiny")).parameters()) == 3_881_473


def test_mesh_flag_is_checked():
    assert parse_mesh("data=2,tensor=-1") == {"data": 2, "tensor": -1}
    for bad in ("pipeline=2", "data=2,data=4", "data=--2", "data=\u00b2"):
        with pytest.raises(ValueError, match=f"--mesh={bad!r}: use AXIS=SIZE items, each AXIS once"):
            parse_mesh(bad)


@pytest.mark.parametrize("kind, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("NVIDIA L4", 121e12),
                                        ("TPU v5", 459e12), ("TPU v5 lite", 197e12), ("TPU v4", 275e12),
                                        ("cpu", None)])
def test_device_peak_is_the_longest_matching_kind(kind, peak):
    """By data sheet: an L40S is not an L40 or an L4; a TPU v5p VM calls itself "TPU v5"."""
    from types import SimpleNamespace

    from mmjax.bench.peak import device_peak_flops

    assert device_peak_flops(SimpleNamespace(device_kind=kind)) == peak


def test_mfu_counts_the_cpu_peak_once_and_each_accelerator():
    from mmjax.bench.peak import model_flops_utilization

    assert model_flops_utilization(1.6e9, 12e9, "cpu", devices=2) == pytest.approx(1.6 / 12)  # shared cores
    assert model_flops_utilization(400e12, 989e12, "gpu", devices=8) == pytest.approx(400 / (8 * 989))
    assert model_flops_utilization(1e9, None, "tpu", devices=4) is None


@pytest.mark.parametrize("dtype, scan", [("float32", True), ("bfloat16", False)])
def test_train_step_benchmark_ends_with_a_json_line_whose_flops_match_the_analytic_count(dtype, scan):
    """Scanned layers too: XLA's cost analysis counts a scan's body once (the XLA count was 0.30 × analytic). On two
    devices: the scanned count, from the whole unrolled step, was still multiplied by the device count (2×)."""
    command = [sys.executable, "-m", "mmjax.cli", "bench", "train-step", "--model", "bench-tiny", "--batch", "8",
               "--threads", "1", "--steps", "2", "--warmup", "0", "--peak-size", "1024", "--dtype", dtype,
               "--scan_layers" if scan else "--noscan_layers", "--mesh", "data=2"]
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("step_time_s", "examples_per_s", "flops_per_step", "analytic_flops_per_step", "mfu",
                "memory_per_device_bytes", "compile_s", "peak_flops"):
        assert result[key] > 0, key
    assert len(result["step_times_s"]) == 2 and result["threads"] == 1 and result["devices"] == 2
    assert result["dtype"] == dtype and result["peak_source"] == f"measured {dtype} matmul 1024²"
    assert result["scan_layers"] == scan
    assert result["analytic_flops_per_step"] == train_step_flops(get_config("bench-tiny"), 8)["total"]
    assert result["flops_per_step"] == pytest.approx(result["analytic_flops_per_step"], rel=0.05)
    if open_clip_available():
        assert result["open_clip"]["param_count"] == result["param_count"] == 3_881_473
        assert result["open_clip"]["dtype"] == dtype
        assert result["ratio_to_open_clip"] == pytest.approx(
            result["step_time_s"] / result["open_clip"]["step_time_s"])


def test_train_step_benchmark_of_a_sigmoid_model_trains_its_loss_and_says_why_there_is_no_reference():
    command = [sys.executable, "-m", "mmjax.cli", "bench", "train-step", "--model", "siglip-test", "--batch", "4",
               "--threads", "1", "--steps", "1", "--warmup", "0", "--peak-size", "1024"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loss"] == "sigmoid" and result["step_time_s"] > 0
    if open_clip_available():  # timed, then stopped without a result line before
        assert "open_clip" not in result and "CLIP-layout" in result["open_clip_skipped"]
        assert f"no OpenCLIP reference: {result['open_clip_skipped']}" in done.stdout


def test_train_step_benchmark_says_when_open_clip_is_not_installed(tmp_path):
    """Without open_clip (as `make demo` installs mmjax) the reference was left out with no word said."""
    (tmp_path / "open_clip.py").write_text("raise ImportError('No module named open_clip')\n")
    command = [sys.executable, "-m", "mmjax.cli", "bench", "train-step", "--model", "clip-test", "--batch", "4",
               "--threads", "1", "--steps", "1", "--warmup", "0", "--peak-size", "1024"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "open_clip" not in result and result["open_clip_skipped"].startswith("open_clip_torch is not installed")
    assert f"no OpenCLIP reference: {result['open_clip_skipped']}" in done.stdout


@pytest.mark.parametrize("flag, message", [("--batch=0", "--batch must be a positive integer, got 0"),
                                           ("--model=nope", "--model 'nope' is not a registered model"),
                                           ("--model=flava-test", "--model=flava-test is a FLAVA model; bench_eval.py "
                                                                  "times the two-tower models")])
def test_eval_benchmark_script_refuses_bad_arguments_in_one_line(flag, message):
    done = subprocess.run([sys.executable, "scripts/bench_eval.py", flag], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(f"bench_eval.py: error: {message}")


@pytest.mark.parametrize("flag", ["--batch=0", "--dim=-4", "--block-size=0"])
def test_loss_memory_script_refuses_sizes_below_one_in_one_line(flag):
    done = subprocess.run([sys.executable, "scripts/bench_loss_memory.py", flag], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    name, value = flag[2:].split("=")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        f"bench_loss_memory.py: error: --{name} must be a positive integer, got {value}")


def test_input_benchmark_reports_both_sides_round_by_round_and_their_ratio():
    command = [sys.executable, "-m", "mmjax.cli", "bench", "input", "--model", "clip-test", "--batch", "8",
               "--images", "40", "--steps", "2", "--rounds", "2", "--num_workers", "0", "--threads", "1",
               "--record_reads", "single"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "40 images of 16 px, record reads single" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["record_reads"] == "single"
    assert len(result["memory_rounds_s"]) == len(result["pipeline_rounds_s"]) == 2
    assert result["ratio"] == pytest.approx(result["pipeline_step_s"] / result["memory_step_s"])
    assert result["source_px"] == get_config("clip-test").vision.image_size and result["xla_threads"] == 1
    assert result["round_ratios"] == pytest.approx([p / m for m, p in zip(result["memory_rounds_s"],
                                                                         result["pipeline_rounds_s"])])
    assert 0 < result["memory_step_busy_cores"] <= result["cores"] + 0.1
    assert result["workers_cpu_per_step_s"] in (0.0, None)  # no worker processes: the pipeline runs in this one


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads Linux's /proc")
def test_the_input_benchmark_counts_the_cpu_time_of_living_child_processes():
    from mmjax.bench.input import children_cpu_s

    before = children_cpu_s()
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile time.process_time() < 0.6: pass\n"
                              "print(flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # it has burnt 0.6 s of CPU and now sleeps
        tick = 1 / os.sysconf("SC_CLK_TCK")  # /proc counts in clock ticks
        assert 0.6 - 2 * tick <= children_cpu_s() - before < 0.6 + 0.5  # + its start-up (Python's, on a slow machine)
    finally:
        child.kill()
        child.wait()


def test_input_benchmark_feeds_the_demo_stream_when_asked():
    command = [sys.executable, "-m", "mmjax.cli", "bench", "input", "--model", "clip-test", "--batch", "8",
               "--data", "synthetic", "--steps", "2", "--rounds", "1", "--num_workers", "0", "--threads", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the synthetic stream" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["data"], result["images"], result["source_px"], result["record_reads"]) == (
        "synthetic", None, None, None)
    refused = subprocess.run([*command, "--images", "40"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        "mmjax: error: --images, --source_px and --record_reads describe the ArrayRecord shards; --data synthetic "
        "draws the demo's stream instead")
    too_few = subprocess.run([*command[:command.index("--data")], "--images", "4"], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    assert too_few.returncode == 2 and too_few.stderr.strip().splitlines()[-1] == (
        "mmjax: error: --images=4 must be at least one batch (8, --batch)")


def test_data_benchmark_reads_every_pair_of_the_tar_and_divides_the_two_rates(tmp_path):
    import tarfile

    import numpy as np
    from PIL import Image

    from mmjax.bench.data import _TarPairs, run, write_bench_data

    _, tar_path = write_bench_data(str(tmp_path), 3, 16)
    pairs = _TarPairs(tar_path, np.asarray, lambda texts: texts)  # the reader without webdataset
    with tarfile.open(tar_path) as tar:
        for index, key in enumerate(["000000", "000001", "000002"]):
            image, text = pairs[index]
            np.testing.assert_array_equal(image, np.asarray(Image.open(tar.extractfile(f"{key}.jpg"))))
            assert text == tar.extractfile(f"{key}.txt").read().decode() == f"a photo of thing number {index} on a table"
    assert len(pairs) == 3
    result = run(count=8, side=32, image_size=16, batch_size=4)
    assert result["mmjax_images_per_s_per_core"] > 0
    if open_clip_available():
        assert result["ratio"] == result["mmjax_images_per_s_per_core"] / result["open_clip_images_per_s_per_core"]


MEMORY_CURVES = {  # bytes per device of a batch: linear, with a fixed part that small batches hide, and stepped
    "linear": lambda b: 1000 + 30 * b,
    "convex": lambda b: 5000 + 2 * b + b * b // 40,
    "stepped": lambda b: 2000 + 64 * (b // 24) * 24 + (b % 7),
}


@pytest.mark.parametrize("curve", MEMORY_CURVES)
@pytest.mark.parametrize("budget", [6000, 9_999, 40_000, 123_457, 2_000_000])
def test_largest_batch_search_finds_what_trying_every_size_finds(curve, budget):
    step_bytes = MEMORY_CURVES[curve]
    unit = 8
    fitting = [b for b in range(unit, 100_000, unit) if step_bytes(b) <= budget]
    if not fitting:
        with pytest.raises(NoBatchFitsError, match="batch 8 already needs"):
            largest_batch(step_bytes, unit, budget)
        return
    batch, tried = largest_batch(step_bytes, unit, budget)
    assert batch == max(fitting)
    assert tried == {b: step_bytes(b) for b in tried} and tried[batch + unit] > budget
    assert len(tried) <= 17, sorted(tried)
    if curve == "linear":  # two sizes, then the fit's answer (32× up at most) and the size above it
        assert len(tried) <= 6, sorted(tried)


def test_train_step_benchmark_times_the_largest_batch_that_fits_a_memory_budget():
    budget = 3 * 2**20
    command = [sys.executable, "-m", "mmjax.cli", "bench", "train-step", "--model", "clip-test", "--batch", "8",
               "--largest_batch", "--memory_gib", str(budget / 2**30), "--threads", "1", "--steps", "1",
               "--warmup", "0", "--peak-size", "1024"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    tried = {int(b): n for b, n in result["largest_batch"]["tried_bytes"].items()}
    batch = result["batch"]
    assert batch % 8 == 0 and result["memory_per_device_bytes"] <= budget < tried[batch + 8]
    assert all((n <= budget) == (b <= batch) for b, n in tried.items())
    assert f"largest batch that fits 3.0 MiB per device: {batch} ({len(tried)} sizes compiled; batch {batch + 8} " \
           f"needs" in done.stdout
    if open_clip_available():  # the reference ran the search's first size (8), not the batch it found
        assert result["open_clip"]["batch"] == batch


def test_a_profile_names_the_loss_and_the_optimizer_update():
    """Their ops had no name the profile knew: AdamW's update was counted as "other"."""
    from mmjax.bench.profile import _op_table, classify
    from mmjax.bench.train_step import _train_step, synthetic_batch
    from mmjax.parallel import make_mesh
    from mmjax.train.state import abstract_train_state

    mesh, config = make_mesh(data=1, devices=jax.devices()[:1]), get_config("clip-test")
    model, tx, shardings, step = _train_step("clip-test", config, mesh, "clip")
    with jax.set_mesh(mesh):
        compiled = step.lower(abstract_train_state(shardings, model, tx), synthetic_batch(config, 4)).compile()
    parts = {classify(path) for path, _ in _op_table(compiled.as_text()).values()}
    assert {("loss", "forward"), ("loss", "backward"), ("optimizer", "forward")} <= parts


def test_a_gpu_profile_places_each_kernel_of_the_device_and_no_host_event():
    from mmjax.bench.profile import op_times

    table = {"fusion.1": ("jit(step)/vision_encoder/encoder/layers_0/mlp/fc1/dot_general", "matmul"),
             "fusion.2": ("jit(step)/transpose(jvp(loss))/vision_encoder/encoder/layers_0/attn/dot_general", "matmul"),
             "add.3": ("jit(step)/optimizer/add", "elementwise")}
    meta = lambda pid, name: {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}  # noqa: E731
    op = lambda pid, name, us, **args: {"ph": "X", "pid": pid, "name": name, "dur": us, "args": args}  # noqa: E731
    host = [op(1, "fusion.1", 900.0), op(1, "add.3", 700.0), op(1, "ThunkExecutor", 5000.0)]
    device = [op(7, "fusion_1", 3000.0, hlo_op="command_buffer_0"),  # a kernel is named after its fusion
              op(7, "fusion.1", 1000.0), op(7, "fusion_2", 2000.0),
              op(7, "loop_add_fusion", 500.0, hlo_op="add.3"),  # outside a CUDA graph, hlo_op names the op
              op(7, "nvjet_sm90_tst_128x160_64x5_2x1_v_bz_TNT", 6000.0, hlo_op="command_buffer_0"),  # cuBLAS
              op(7, "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1x1x1_"
                    "kernel0_0", 800.0),  # cuDNN's attention, forward
              op(7, "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64_1x4x1_cga1x1x1_"
                    "kernel0_0", 1600.0),  # and backward, with its helpers
              op(7, "void cudnn::fusion::compute_dot_do_o_specialized<true, 64>(void const*, void const*)", 300.0),
              op(7, "void cudnn::fusion::convert_dq_to_16bits<true>(void const*, void*, unsigned int)", 100.0),
              op(7, "void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16_128x128_32x5_"
                    "nhwc_align8>(Params)", 400.0),  # cuDNN's convolution: a matmul of no known part
              op(7, "Memset", 100.0)]
    events = [meta(1, "/host:CPU"), meta(7, "/device:GPU:0 (NVIDIA H200)")] + host + device
    # per step of 2: 4 ms of the fc1 matmul, 2 + 2 ms of the attention's backward matmuls (XLA's, cuDNN's),
    # 0.8 ms of cuDNN's attention forward, 0.5 ms of optimizer, 6.4 ms in cuBLAS and cuDNN's convolution, 0.1 ms
    # of memset; the host's events are launches of the same ops
    assert op_times(events, table, 2) == pytest.approx({
        "mlp/forward/matmul": 2.0, "attention/backward/matmul": 2.0, "attention/forward/matmul": 0.4,
        "optimizer/forward/elementwise": 0.25, "library/-/matmul": 3.2, "library/-/other": 0.05})
    # on CPU the ops run in the host process, so they count there, and only events named after an op
    assert op_times([meta(1, "/host:CPU")] + host, table, 1) == {"mlp/forward/matmul": 0.9,
                                                                 "optimizer/forward/elementwise": 0.7}


def test_cublas_and_cudnn_calls_are_matmuls_in_the_op_table():
    from mmjax.bench.profile import _op_table

    hlo = """ENTRY %main.1 (p: bf16[4,8]) -> bf16[4,4] {
  %custom-call.295 = (bf16[4,4]{1,0}, s8[64]{0}) custom-call(%p, %p), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(step)/text_encoder/encoder/layers_0/attn/key/dot_general"}
  %cudnn-conv.2 = (bf16[4,4]{1,0}, u8[8]{0}) custom-call(%p, %p), custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/image_encoder/patch_embed/conv/conv_general_dilated"}
  ROOT %loop_add_fusion.1 = bf16[4,4]{1,0} fusion(%p), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/add"}
}"""
    table = _op_table(hlo)
    assert {name: kind for name, (_, kind) in table.items()} == {
        "custom-call.295": "matmul", "cudnn-conv.2": "matmul", "loop_add_fusion.1": "elementwise"}


def test_check_attention_script_measures_bf16_against_float32_and_fails_past_its_tolerance():
    """scripts/check_attention.py (run on a GPU to check cuDNN's attention) on CPU with XLA's alone: bf16's
    relative errors against float32 are those of bf16 rounding (its 8 bits of mantissa: ~1e-3 to ~3e-2), and a
    tolerance below 1 (XLA's own error against itself) fails with status 1 and a line naming the case."""
    command = [sys.executable, "scripts/check_attention.py", "--model", "clip-test", "--attention", "xla"]
    done = subprocess.run(command + ["--tolerance", "0.5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["unrolled layers, bf16 xla", "scanned layers, bf16 xla"]
    errors = [float(e) for line in lines for e in re.findall(r"\d\.\d\de-\d\d", line)]
    assert len(errors) == 6 and all(1e-3 < e < 3e-2 for e in errors), lines
    assert done.returncode == 1 and "FAILED: xla (unrolled): 1.0× bf16 XLA's error" in done.stderr
    refused = subprocess.run(command[:4] + ["--attention", "cudnn"], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "cudnn needs an NVIDIA GPU; this backend is cpu" in refused.stderr


def test_unknown_sub_benchmark_is_a_one_line_error():
    done = subprocess.run([sys.executable, "-m", "mmjax.cli", "bench", "nothing"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("mmjax: error: usage: mmjax bench {train-step")
    ignored = subprocess.run([sys.executable, "-m", "mmjax.cli", "bench", "input", "--dtype", "bfloat16", "--mesh",
                              "data=2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ignored.returncode == 2 and ignored.stderr.strip() == (
        "mmjax: error: mmjax bench input does not read --dtype, --mesh (it reads --batch, --data, --hugepages, "
        "--images, --model, --num_workers, --record_reads, --rounds, --source_px, --steps, --threads, "
        "--worker_priority)")


def test_bench_flags_that_cannot_work_are_one_line_before_any_work(tmp_path):
    """`bench input` wrote its shards, then failed in a sharding error for a batch the devices do not divide, and
    took more threads than the machine has; `--profile` at a file failed after all the timing."""
    (tmp_path / "file").write_text("")
    too_many = str(len(os.sched_getaffinity(0)) + 1)
    for args, message in [
        (["input", "--threads", too_many], f"--threads={too_many}: this process may use 1 to"),
        (["train-step", "--profile", str(tmp_path / "file")], f"--profile {tmp_path / 'file'} is a file"),
        (["train-step", "--peak_size", "128"], "flag --peak_size=128: 128 is not integer >= 1024"),
        (["train-step", "--memory_gib", "3"], "--memory_gib=3.0 must be positive and goes with --largest_batch"),
        (["train-step", "--largest_batch"], "reports no memory limit; give the budget per device with --memory_gib"),
    ]:
        done = subprocess.run([sys.executable, "-m", "mmjax.cli", "bench", *args, "--nohugepages"], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1], (args, done.stderr[-2000:])
    done = subprocess.run([sys.executable, "-m", "mmjax.cli", "bench", "data", "--source_px", "100000"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # it asked NumPy for 149 GiB
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "mmjax: error: flag --source_px=100000: 100000 is not an integer in the range [8, 4096]"), done.stderr[-2000:]
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, "-m", "mmjax.cli", "bench", "input", "--batch", "255", "--nohugepages"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "mmjax: error: --batch=255 must be a multiple of 2 (the data×fsdp devices of mesh "
        "{'data': 2, 'fsdp': 1, 'tensor': 1})"), done.stderr[-2000:]


def test_the_open_clip_reference_names_the_models_it_cannot_build():
    clip = get_config("clip-test")
    assert reference_problem(clip) is None
    assert "not a sigmoid loss" in reference_problem(dataclasses.replace(clip, logit_bias_init=-10.0))
    assert reference_problem(dataclasses.replace(clip, text_activation="quick_gelu")) == (
        "OpenCLIP's CLIP computes both towers with one activation")
