"""Benchmark evaluation (embeddings and captions) split over two JAX processes (gloo on CPU) gives one process's
metrics."""
from __future__ import annotations

import io
import json
import math
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
from PIL import Image
from test_benchmarks import write_shard

from mmjax import models
from mmjax.captioner import Captioner
from mmjax.data import Tokenizer
from mmjax.eval.benchmarks import run_benchmark
from mmjax.eval.captioning import caption_benchmark
from mmjax.inference import Encoder
from mmjax.parallel import make_mesh
from mmjax.parallel.distributed import gather_batches

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSNAMES = ["red", "green", "blue", "yellow", "cyan", "magenta"]
BATCH_SIZE = 3  # 11 classification images -> 4 batches; 7 retrieval images -> 3 (uneven split)

WORKER = """
import json, sys
import jax
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
sys.path.insert(0, sys.argv[3])
from test_multihost_eval import evaluate
assert jax.process_count() == 2 and len(jax.local_devices()) == 1
print(json.dumps(evaluate(sys.argv[4:], jax.local_devices())))
"""


def png(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_benchmarks(root) -> list[str]:
    rng = np.random.default_rng(0)
    classification = root / "classification"
    (classification / "test").mkdir(parents=True)
    for shard, labels in enumerate([[0, 1, 2, 3, 4, 5, 0], [1, 1, 4, 2]]):
        write_shard(classification / "test" / f"{shard}.tar",
                    [(f"s{shard}_{i}", {"png": png(rng), "cls": str(label).encode()})
                     for i, label in enumerate(labels)])
    (classification / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (classification / "zeroshot_classification_templates.txt").write_text(
        "a photo of a {c} square.\na {c} thing\n")
    retrieval = root / "retrieval"
    (retrieval / "test").mkdir(parents=True)
    captions = [[f"a {c} square", f"{c}", f"something {c} here"][:1 + i % 3]
                for i, c in enumerate(CLASSNAMES + ["grey"])]
    write_shard(retrieval / "test" / "0.tar",
                [(f"k{i}", {"png": png(rng), "txt": "\n".join(c).encode()})
                 for i, c in enumerate(captions)])
    # Bad data in batch 1 alone (process 1's): process 0 never reads it, and must fail with process 1.
    broken = root / "broken"
    (broken / "test").mkdir(parents=True)
    write_shard(broken / "test" / "0.tar", [(f"b{i}", {"png": b"not an image" if i == 4 else png(rng),
                                                      "cls": b"0"}) for i in range(7)])
    (broken / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (broken / "zeroshot_classification_templates.txt").write_text("a {c} thing\n")
    return [f"wds:{classification}", f"wds:{retrieval}", f"wds:{broken}"]


def evaluate(benchmarks: list[str], devices) -> dict[str, dict[str, float]]:
    """Metrics of a random-init clip-test model on each benchmark, embedding on ``devices``; for a benchmark
    that fails, ``{"error": its message}``."""
    config = models.get_config("clip-test")
    model = models.TwoTower(config)
    images, tokens = models.example_inputs(config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), image=images, text=tokens))["params"]
    encoder = Encoder(model, params, Tokenizer.for_synthetic(config.text.context_length),
                      (0.5,) * 3, (0.5,) * 3, batch_size=4, mesh=make_mesh(data=-1, devices=devices))
    results = {}
    for name in benchmarks:
        try:
            results[name] = run_benchmark(name, encoder.encode_images, encoder.encode_texts,
                                          image_size=config.vision.image_size, batch_size=BATCH_SIZE)[1]
        except ValueError as error:
            results[name] = {"error": str(error)}
    # a random-init flamingo-test's captions of the image–text benchmark, batch i written by process i % 2
    captioning = models.get_config("flamingo-test")
    flamingo = models.build_model(captioning)
    params = nn.unbox(jax.jit(flamingo.init)(jax.random.key(0), *models.example_inputs(captioning)))["params"]
    captioner = Captioner(flamingo, params, Tokenizer.for_synthetic(captioning.text.context_length), (0.5,) * 3,
                          (0.5,) * 3)
    metrics, captions = caption_benchmark(benchmarks[1], captioner.caption, image_size=captioning.vision.image_size,
                                          batch_size=BATCH_SIZE)
    return results | {"captioning": metrics | {"captions": captions}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gather_batches_single_process_is_identity():
    batches = [np.arange(3), np.arange(2)]
    assert gather_batches(batches, 0, 1, np.zeros(0)) is not batches
    assert all(a is b for a, b in zip(gather_batches(batches, 0, 1, np.zeros(0)), batches))


def run_two_workers(script, *args: str) -> list:
    """Run `python SCRIPT PORT PROCESS_ID TESTS_DIR *args` as processes 0 and 1 of a CPU `jax.distributed`
    job; each must print one JSON value on its last stdout line. Returns the two values."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    port = free_port()
    done = run_processes([[sys.executable, str(script), str(port), str(i), str(pathlib.Path(__file__).parent), *args]
                          for i in range(2)], [env, env], timeout=180)
    for result in done:
        assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(result.stdout.strip().splitlines()[-1]) for result in done]


def run_processes(commands: list[list[str]], envs: list[dict], timeout: int) -> list[subprocess.CompletedProcess]:
    """Each command (with its environment) started at once, as the processes of one job; their results. A process
    still running after `timeout` seconds (one left waiting by the other) is killed."""
    workers = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for command, env in zip(commands, envs)]
    results = []
    try:
        for worker, command in zip(workers, commands):
            stdout, stderr = worker.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(command, worker.returncode, stdout, stderr))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    return results


def test_two_processes_give_single_process_metrics(tmp_path):
    names = write_benchmarks(tmp_path)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    outputs = run_two_workers(script, *names)

    # one process on one device: the same compiled programs as each worker's
    want = evaluate(names, jax.devices()[:1])
    assert want[names[0]]["num_images"] == 11 and want[names[1]]["num_texts"] == 13
    assert 0 < want[names[0]]["acc1"] < 1
    error = want[names[2]]["error"]
    assert "cannot decode image b4.png" in error
    # process 1 read the bad sample and says so; process 0, which did not, names process 1
    assert [got[names[2]] for got in outputs] == [{"error": f"process 1: {error}"}, {"error": error}]
    assert len(want["captioning"]["captions"]) == 7 and want["captioning"]["num_texts"] == 13
    for got in outputs:
        assert got.keys() == want.keys()
        for name in [*names[:2], "captioning"]:
            assert got[name].keys() == want[name].keys()
            for key, value in want[name].items():
                if key != "images_per_s":
                    assert got[name][key] == value or (math.isnan(value) and math.isnan(got[name][key])), (name, key)


def test_any_error_in_one_process_fails_the_other_with_its_type_and_message(monkeypatch):
    """Not only bad data: an error of any type while embedding reaches the other process, which would otherwise
    wait in the next collective. The gather is simulated: process 1's report is what it sent."""
    from mmjax.eval import benchmarks
    from mmjax.parallel import distributed

    sent = []

    def gather_own(rows, count):  # both processes sent this report
        sent.append(rows.copy())
        return [rows, rows]

    monkeypatch.setattr(distributed, "allgather_rows", gather_own)

    def embed_fails(images, targets):
        raise RuntimeError("device lost")

    with np.testing.assert_raises_regex(RuntimeError, "^device lost$"):  # process 1: its own error, unchanged
        benchmarks.for_each_batch(iter([(np.zeros(1), None)]), embed_fails, process_count=2)
    process_1_report = sent[-1]
    monkeypatch.setattr(distributed, "allgather_rows",
                        lambda rows, count: [rows, process_1_report])
    with np.testing.assert_raises_regex(ValueError, "^process 1: RuntimeError: device lost$"):
        benchmarks.for_each_batch(iter([(np.zeros(1), None)]), lambda images, targets: None, process_count=2)
    # bad data (ValueError, OSError) is reported with its plain message, as the two-process test sees it
    monkeypatch.setattr(distributed, "allgather_rows", gather_own)
    with np.testing.assert_raises_regex(OSError, "disk gone"):
        distributed.raise_if_any_failed(OSError("disk gone"), process_count=2)
    assert bytes(sent[-1]) == b"!disk gone"


def _mmjax_processes(argv_of_process: list[list[str]], env_of_process: list[dict]) -> list[subprocess.CompletedProcess]:
    """`python -m mmjax.cli ARGV` for each process at once; their completed results."""
    return run_processes([[sys.executable, "-m", "mmjax.cli", *argv] for argv in argv_of_process], env_of_process,
                         timeout=240)


def test_mmjax_eval_in_two_processes_gives_one_process_metrics_and_fails_together(tmp_path):
    """`mmjax eval` under MMJAX_* variables: it did not join the job (each process evaluated alone), and joined
    by hand it restored its parameters onto every process's devices ("does not support cross-host device
    transfers"). One process without a checkpoint left the other waiting in the restore."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    workdir = tmp_path / "run"
    trained = subprocess.run([sys.executable, "-m", "mmjax.cli", "train", "--config", "configs/clip_tiny.py:test",
                              "--workdir", str(workdir)], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    benchmark = write_benchmarks(tmp_path)[0]
    [single] = _mmjax_processes([["eval", "--model", str(workdir), "--benchmark", benchmark, "--output",
                                  str(tmp_path / "one.json")]], [env])
    assert single.returncode == 0, single.stderr[-3000:]
    port = free_port()
    envs = [dict(env, MMJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", MMJAX_NUM_PROCESSES="2",
                 MMJAX_PROCESS_ID=str(i)) for i in range(2)]
    done = _mmjax_processes([["eval", "--model", str(workdir), "--benchmark", benchmark, "--output",
                              str(tmp_path / f"two{i}.json")] for i in range(2)], envs)
    assert [result.returncode for result in done] == [0, 0], done[0].stderr[-3000:] + done[1].stderr[-3000:]
    want = json.loads((tmp_path / "one.json").read_text())
    assert want["processes"] == 1
    for i in range(2):
        got = json.loads((tmp_path / f"two{i}.json").read_text())
        assert got["processes"] == 2
        assert {key: value for key, value in got["metrics"].items() if key != "images_per_s"} == {
            key: value for key, value in want["metrics"].items() if key != "images_per_s"}

    # Process 1 alone fails a check (a bad --output): both stop in one line; it used to wait in Orbax's barrier.
    older = tmp_path / "older"  # a host whose copy of the workdir lacks the last checkpoint
    shutil.copytree(workdir, older)
    shutil.rmtree(older / "checkpoints" / "6")
    for process_1_args, message in [
            (["--model", str(workdir), "--output", str(tmp_path / "nowhere" / "r.json")],
             f"--output directory {tmp_path / 'nowhere'} does not exist"),
            (["--model", str(older)],
             None)]:
        port = free_port()
        envs = [dict(env, MMJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", MMJAX_NUM_PROCESSES="2",
                     MMJAX_PROCESS_ID=str(i)) for i in range(2)]
        failed = _mmjax_processes([["eval", "--benchmark", benchmark, "--model", str(workdir), "--output",
                                    str(tmp_path / "r.json")], ["eval", "--benchmark", benchmark, *process_1_args]],
                                  envs)
        assert [result.returncode for result in failed] == [2, 2], failed[0].stderr[-2000:]
        last_lines = [result.stderr.strip().splitlines()[-1] for result in failed]
        if message is not None:
            assert last_lines == [f"mmjax: error: process 1: {message}", f"mmjax: error: {message}"]
        else:  # metrics of two models mixed, each process's file naming its own step
            assert last_lines == [f"mmjax: error: the processes see other latest checkpoints of {model} (process 0 "
                                  f"step 6, process 1 step 3): every host must see the same workdir"
                                  for model in (workdir, older)]

