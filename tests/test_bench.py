"""`mmjax bench train-step`: the JSON it ends with, XLA's FLOP count against the analytic one,
and the OpenCLIP model built with the same numbers (no timing assertions)."""

import json
import pathlib
import subprocess
import sys

import pytest

from mmjax.bench.flops import train_step_flops
from mmjax.bench.open_clip_reference import build_open_clip, open_clip_available
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


def test_bench_tiny_has_open_clips_parameter_count():
    assert param_count("bench-tiny") == 3_881_473
    if not open_clip_available():
        pytest.skip("open_clip_torch is not installed")
    assert sum(p.numel() for p in build_open_clip(get_config("bench-tiny")).parameters()) == 3_881_473


def test_mesh_flag_is_checked():
    assert parse_mesh("data=2,tensor=-1") == {"data": 2, "tensor": -1}
    with pytest.raises(ValueError, match="--mesh='pipeline=2'"):
        parse_mesh("pipeline=2")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_step_benchmark_ends_with_a_json_line_whose_flops_match_the_analytic_count(dtype):
    command = [sys.executable, "-m", "mmjax.cli", "bench", "train-step", "--model", "bench-tiny", "--batch", "8",
               "--threads", "1", "--steps", "2", "--warmup", "0", "--peak-size", "256", "--dtype", dtype]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("step_time_s", "examples_per_s", "flops_per_step", "analytic_flops_per_step", "mfu",
                "memory_per_device_bytes", "compile_s", "peak_flops"):
        assert result[key] > 0, key
    assert len(result["step_times_s"]) == 2 and result["threads"] == 1
    assert result["dtype"] == dtype and result["peak_source"] == f"measured {dtype} matmul 256²"
    assert result["analytic_flops_per_step"] == train_step_flops(get_config("bench-tiny"), 8)["total"]
    assert result["flops_per_step"] == pytest.approx(result["analytic_flops_per_step"], rel=0.05)
    if open_clip_available():
        assert result["open_clip"]["param_count"] == result["param_count"] == 3_881_473
        assert result["open_clip"]["dtype"] == dtype
        assert result["ratio_to_open_clip"] == pytest.approx(
            result["step_time_s"] / result["open_clip"]["step_time_s"])


def test_input_benchmark_reports_both_sides_round_by_round_and_their_ratio():
    command = [sys.executable, "-m", "mmjax.cli", "bench", "input", "--model", "clip-test", "--batch", "8",
               "--images", "40", "--steps", "2", "--rounds", "2", "--num_workers", "0", "--threads", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["memory_rounds_s"]) == len(result["pipeline_rounds_s"]) == 2
    assert result["ratio"] == pytest.approx(result["pipeline_step_s"] / result["memory_step_s"])
    assert result["source_px"] == get_config("clip-test").vision.image_size and result["xla_threads"] == 1


def test_unknown_sub_benchmark_is_a_one_line_error():
    done = subprocess.run([sys.executable, "-m", "mmjax.cli", "bench", "nothing"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("mmjax: error: usage: mmjax bench {train-step")
