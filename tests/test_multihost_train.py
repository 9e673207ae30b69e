"""Two JAX processes (gloo on CPU, 4 devices each) train together to the parameters of one
process with 8 devices and the same global batch, and evaluate them at the end as one process
does; multi-process settings come from the config or the environment."""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from test_eval_reproduces import write_heldout_shards
from test_multihost_eval import free_port

import mmjax.models as models
from mmjax.data import Tokenizer
from mmjax.parallel import logical_shardings, make_mesh
from mmjax.train.checkpoint import Checkpoints
from mmjax.train.config import base_config
from mmjax.train.loop import train
from mmjax.train.multihost import explicit_settings, initialize_distributed

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "configs"))
import clip_tiny  # noqa: E402

# The worker is `mmjax train` in-process: the coordinator comes from the MMJAX_* environment.
# Process 1's data takes 35 s longer to open (slow storage): more than the 30 s gloo gives a
# process to join the first collective, so the run needs the barrier before it.
WORKER = """
import faulthandler
import sys
import time
import jax
faulthandler.dump_traceback_later(240)  # a hang prints every thread's stack before the test's timeout
jax.config.update("jax_num_cpu_devices", 4)
sys.path.insert(0, sys.argv[2])
import clip_tiny
import mmjax.train.loop as loop
open_dataset = loop.config_train_dataset
def slow_to_open(*args, **kwargs):
    if jax.process_index() == 1:
        time.sleep(35)
    return open_dataset(*args, **kwargs)
loop.config_train_dataset = slow_to_open
config = clip_tiny.get_config("test")
config.mesh = dict(data=4, fsdp=2, tensor=1)
config.batch_size = 8  # one example a device: 4 a process
config.eval.benchmarks = ("synthetic", "wds:" + sys.argv[3])
state = loop.train(config, sys.argv[1])
assert jax.process_count() == 2 and len(jax.local_devices()) == 4 and len(jax.devices()) == 8
print("trained", int(state.step))
"""


def _outputs(workers: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    """Each worker's `(stdout, stderr)`; when one is still running after `timeout` seconds, all are killed and
    the test fails with the end of every worker's stderr (a hang says where each process was)."""
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
        for worker in workers:
            worker.kill()
        tails = [f"process {index}:\n{worker.communicate()[1][-2000:]}"
                 for index, worker in enumerate(workers) if index >= len(outputs)]
        pytest.fail(f"still running after {timeout} s:\n" + "\n".join(tails))
    return outputs


def test_settings_come_from_the_config_before_the_environment():
    distributed = base_config("clip-test", "clip").distributed
    assert explicit_settings(distributed, {}) == {}
    env = {"MMJAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "MMJAX_PROCESS_ID": "3"}
    assert explicit_settings(distributed, env) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                                   "process_id": 3}
    distributed.coordinator_address, distributed.process_id = "host0:8476", 0
    assert explicit_settings(distributed, env) == {"coordinator_address": "host0:8476", "num_processes": 4,
                                                   "process_id": 0}


def test_incomplete_or_malformed_settings_are_one_line_errors():
    distributed = base_config("clip-test", "clip").distributed
    with pytest.raises(ValueError, match="needs config.distributed.num_processes or MMJAX_NUM_PROCESSES"):
        explicit_settings(distributed, {"MMJAX_COORDINATOR_ADDRESS": "h:1", "MMJAX_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match="MMJAX_NUM_PROCESSES='two' is not an integer"):
        explicit_settings(distributed, {"MMJAX_COORDINATOR_ADDRESS": "h:1", "MMJAX_PROCESS_ID": "0",
                                        "MMJAX_NUM_PROCESSES": "two"})
    with pytest.raises(ValueError, match=r"process_id in \[0, num_processes\)"):
        explicit_settings(distributed, {"MMJAX_COORDINATOR_ADDRESS": "h:1", "MMJAX_PROCESS_ID": "2",
                                        "MMJAX_NUM_PROCESSES": "2"})
    distributed.initialize = "sometimes"
    with pytest.raises(ValueError, match="config.distributed.initialize='sometimes'"):
        initialize_distributed(distributed, {})


def test_single_process_without_settings_does_not_start_the_distributed_runtime():
    assert initialize_distributed(base_config("clip-test", "clip").distributed, {}) is False
    assert not jax.distributed.is_initialized()


def _train_in_two_processes(tmp_path, worker: str, config, *args: str) -> pathlib.Path:
    """Runs the `worker` script (argv: the shared workdir, the configs directory, `args`) as processes 0 and 1
    of a CPU `jax.distributed` job under MMJAX_* variables; checks that both trained `config.total_steps`
    steps and returns their shared workdir."""
    shared = tmp_path / "two_processes"
    shared.mkdir()
    if config.model in models.list_models():  # written once up front: both processes would otherwise race to create it
        Tokenizer.for_synthetic(models.get_config(config.model).text.context_length).save(
            str(shared / "tokenizer.json"))
    script = tmp_path / "worker.py"
    script.write_text(worker)
    port = free_port()
    workers = []
    for process_id in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", MMJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   MMJAX_NUM_PROCESSES="2", MMJAX_PROCESS_ID=str(process_id))
        workers.append(subprocess.Popen([sys.executable, str(script), str(shared), str(REPO / "configs"), *args],
                                        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for worker_process, (stdout, stderr) in zip(workers, _outputs(workers, timeout=300)):
        assert worker_process.returncode == 0, stderr[-3000:]
        assert stdout.strip().splitlines()[-1] == f"trained {config.total_steps}"
    return shared


@pytest.mark.slow
def test_two_processes_train_to_the_parameters_of_one_process(tmp_path):
    config = clip_tiny.get_config("test")
    write_heldout_shards(tmp_path / "heldout", seed=0, image_size=16, count=40)
    shared = _train_in_two_processes(tmp_path, WORKER, config, str(tmp_path / "heldout"))

    # the same global program on 8 devices; at the last step the two processes gather the FSDP-sharded
    # parameters, evaluate, and divide the wds benchmark's embedding between them
    config.mesh = dict(data=4, fsdp=2, tensor=1)
    config.batch_size = 8
    config.eval.benchmarks = ("synthetic", f"wds:{tmp_path / 'heldout'}")
    want = train(config, str(tmp_path / "one_process"))
    evaluations = [json.loads((workdir / "eval_metrics.jsonl").read_text())
                   for workdir in (shared, tmp_path / "one_process")]
    for name, one_example in [("synthetic/acc1", 1 / config.eval.num_heldout),
                              ("synthetic/image_retrieval_recall@1", 1 / config.eval.num_retrieval),
                              ("wds_heldout/acc1", 1 / 40)]:
        got_value, want_value = (evaluation[name] for evaluation in evaluations)
        assert got_value == pytest.approx(want_value, abs=one_example), name  # parameters equal to 1e-5
    for workdir in (shared, tmp_path / "one_process"):  # the first log line has the step's bytes per device
        first = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
        assert first["argument_bytes"] > 0 and first["temp_bytes"] > 0
        assert first["memory_per_device_bytes"] == (first["argument_bytes"] + first["output_bytes"]
                                                    - first["alias_bytes"] + first["temp_bytes"])
    _assert_saved_params_equal(shared, config, want.params)


def _assert_saved_params_equal(workdir, config, want) -> None:
    """The last checkpoint of `workdir` (at `config.total_steps`) holds `want`'s parameters (1e-5)."""
    boxed = models.abstract_params(models.get_config(config.model))
    shardings = logical_shardings(boxed, make_mesh(data=1, devices=jax.devices()[:1]))
    targets = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings)
    got, step = Checkpoints(str(workdir), read_only=True).restore_params(targets)
    assert step == config.total_steps
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), jax.device_get(got),
                 jax.device_get(want))


OWN_OBJECTIVE_WORKER = """
import importlib
import sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
sys.path.insert(0, sys.argv[2])
from mmjax.train.loop import train
config = importlib.import_module(sys.argv[3]).get_config("test")
config.mesh = dict(data=4, fsdp=2, tensor=1)
config.batch_size = 8
config.eval.benchmarks = tuple(sys.argv[4:])
config.eval.num_retrieval, config.eval.batch_size = 8, 4
state = train(config, sys.argv[1])
print("trained", int(state.step))
"""


@pytest.mark.slow  # ~60 s: two processes, then the same run in this one
def test_two_processes_train_flava_to_the_parameters_of_one_process(tmp_path):
    """FLAVA's step draws its masks and hard negatives from the step's key over the global batch: split over two
    processes (4 devices each, FSDP across them) it trains to the parameters of one 8-device process."""
    import flava_tiny

    config = flava_tiny.get_config("test")
    shared = _train_in_two_processes(tmp_path, OWN_OBJECTIVE_WORKER, config, "flava_tiny")
    config.mesh = dict(data=4, fsdp=2, tensor=1)
    config.batch_size = 8
    want = train(config, str(tmp_path / "one_process"))
    _assert_saved_params_equal(shared, config, want.params)


@pytest.mark.slow  # ~60 s: two processes
def test_two_processes_evaluate_a_captioner_as_one_process_evaluates_its_checkpoint(tmp_path):
    """A Flamingo trained over two processes (4 devices each, FSDP across them) is evaluated on its captions at the
    last step, each process writing its share of the benchmark's: the records equal the evaluation of the saved
    checkpoint in this one process."""
    import flamingo_tiny
    from test_train_flamingo import MEAN_STD, write_synthetic_pairs

    from mmjax.captioner import Captioner
    from mmjax.eval.captioning import caption_benchmark
    from mmjax.eval.synthetic_captions import evaluate_synthetic_captions
    from mmjax.train.workdir import load_trained

    write_synthetic_pairs(tmp_path / "pairs", 7)  # two batches of 4: one for each process, the second short
    config = flamingo_tiny.get_config("test")
    shared = _train_in_two_processes(tmp_path, OWN_OBJECTIVE_WORKER, config, "flamingo_tiny", "synthetic",
                                     f"wds:{tmp_path / 'pairs'}")
    got = {name: math.nan if value is None else value  # NaN is written as null
           for name, value in json.loads((shared / "eval_metrics.jsonl").read_text()).items()}
    trained = load_trained(str(shared))
    captioner = Captioner(trained.model, trained.params, trained.tokenizer, MEAN_STD, MEAN_STD, batch_size=4)
    want = {f"synthetic/{name}": value for name, value in evaluate_synthetic_captions(
        captioner.caption, seed=0, image_size=16, num_images=8).items()}
    scores, _ = caption_benchmark(f"wds:{tmp_path / 'pairs'}", captioner.caption, image_size=16, batch_size=4)
    want |= {f"wds_pairs/{name}": value for name, value in scores.items() if name != "images_per_s"}
    assert {name: got[name] for name in want} == pytest.approx(want, nan_ok=True)
    assert got["step"] == config.total_steps and want["wds_pairs/num_images"] == 7


@pytest.mark.slow  # ~45 s: two processes start twice. The only test of a preemption notice across processes.
def test_a_preemption_notice_to_one_process_saves_the_same_step_on_both_and_stops_them(tmp_path):
    """Once jax.distributed runs, its preemption service takes SIGTERM over: a run whose process got the notice
    trained on to its last step as if nothing had happened. Both processes now save the step JAX's service picks
    for them, and stop with one line and exit status 143; a resumed run does so too when the notice comes before
    its first step (its step numbers never met the service's count, which starts at 0 in each run)."""
    import re
    import signal
    import time

    workdir = tmp_path / "run"

    def start() -> list[subprocess.Popen]:
        port, workers = free_port(), []
        for process_id in range(2):
            env = dict(os.environ, JAX_PLATFORMS="cpu", MMJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       MMJAX_NUM_PROCESSES="2", MMJAX_PROCESS_ID=str(process_id), PYTHONUNBUFFERED="1")
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "mmjax.cli", "train", "--config", str(REPO / "configs" / "clip_tiny.py:test"),
                 "--workdir", str(workdir), "--config.total_steps=5000", "--config.checkpoint_every=2500",
                 "--config.log_every=2"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True))
        return workers

    def saved_step(workers: list[subprocess.Popen]) -> int:
        """The step both processes say they saved as they stopped."""
        steps = []
        for worker, (_, stderr) in zip(workers, _outputs(workers, timeout=240)):
            assert worker.returncode == 143, stderr[-3000:]
            last = stderr.strip().splitlines()[-1]
            found = re.fullmatch(r"mmjax: stopped by SIGTERM \(a preemption notice\) at step (\d+), saved as "
                                 r".*/run/checkpoints/(\d+): run the same command to resume from it", last)
            assert found and found.group(1) == found.group(2), last
            steps.append(int(found.group(1)))
        assert steps[0] == steps[1] < 5000
        return steps[0]

    workers = start()
    deadline = time.time() + 240
    while not (workdir / "metrics.jsonl").exists() and time.time() < deadline and all(
            worker.poll() is None for worker in workers):
        time.sleep(0.1)
    workers[1].send_signal(signal.SIGTERM)  # the notice reaches one process only
    first = saved_step(workers)
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(first)]

    workers = start()  # resumed; the notice comes after the restore, before the first step
    for line in workers[0].stdout:
        if line.startswith(f"resuming {workdir} at step {first}"):
            break
    workers[1].send_signal(signal.SIGTERM)
    assert saved_step(workers) == first + 1
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == [str(first), str(first + 1)]


FINETUNE_WORKER = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
sys.path.insert(0, sys.argv[2])
import finetune
from mmjax.train.loop import train
config = finetune.get_config("test")
config.update(dict(model=sys.argv[3], batch_size=8))
config.data.name = "synthetic"
config.mesh = dict(data=4, fsdp=2, tensor=1)
state = train(config, sys.argv[1])
print("trained", int(state.step))
"""


@pytest.mark.slow  # ~40 s: two processes, then the same run in this one
def test_two_processes_finetune_a_checkpoint_to_the_parameters_of_one_process(tmp_path):
    """Each process loads the checkpoint and places the slices of it that its devices hold (FSDP across the two):
    the run ends with the parameters of one 8-device process."""
    import finetune
    from test_finetune import write_clip_dir

    from mmjax.train.workdir import load_trained

    checkpoint = write_clip_dir(str(tmp_path / "checkpoint"))
    config = finetune.get_config("test")
    config.update(dict(model=checkpoint, batch_size=8))
    shared = _train_in_two_processes(tmp_path, FINETUNE_WORKER, config, checkpoint)
    config.data.name = "synthetic"
    config.mesh = dict(data=4, fsdp=2, tensor=1)
    want = train(config, str(tmp_path / "one_process"))
    got = load_trained(str(shared))
    assert got.step == config.total_steps
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), jax.device_get(got.params),
                 jax.device_get(want.params))
