"""The command line end to end: train → eval on the test config, and one-line errors."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from PIL import Image
from test_eval_reproduces import write_heldout_shards

from mmjax.train.config import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CONFIG = os.path.join(ROOT, "configs", "clip_tiny.py") + ":test"
LOCKED_CONFIG = ("from mmjax.train.config import captions_config\n\ndef get_config(arg=None):\n"
                 "    config = captions_config('clip-tiny', 'clip', arg, 'clip-test')\n")


def mmjax(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mmjax.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _assert_one_line_error(result, expected):
    """The command failed with `expected` in one `mmjax: error:` line, the last it wrote (warnings may come
    before it)."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mmjax: error: ") and expected in last, result.stderr


def test_train_then_eval_writes_clip_benchmark_results_and_figure(tmp_path):
    workdir = str(tmp_path / "run")
    trained = mmjax("train", "--config", TEST_CONFIG, "--workdir", workdir)
    assert trained.returncode == 0, trained.stderr
    figure = str(tmp_path / "demo.png")
    evaluated = mmjax("eval", "--model", workdir, "--figure", figure)
    assert evaluated.returncode == 0, evaluated.stderr
    with open(os.path.join(workdir, "eval.json")) as f:
        results = results_default = json.load(f)
    assert {"dataset", "model", "task", "metrics"} <= set(results)
    for key in ["acc1", "acc5", "mean_per_class_recall", "image_retrieval_recall@1", "text_retrieval_recall@1",
                "image_retrieval_recall@5", "text_retrieval_recall@5"]:
        assert 0.0 <= results["metrics"][key] <= 1.0, key
    assert "acc1" in evaluated.stdout
    assert Image.open(figure).size[0] > 0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [2, 4, 6]

    write_heldout_shards(tmp_path / "wds", seed=0, image_size=16, count=40)
    benchmark = mmjax("eval", "--model", workdir, "--benchmark", f"wds:{tmp_path / 'wds'}", "--dtype", "bfloat16",
                      "--num_workers", "2")
    assert benchmark.returncode == 0, benchmark.stderr
    assert "leaked" not in benchmark.stderr  # grain's shared memory, freed too late: no longer used for eval batches
    with open(os.path.join(workdir, "eval_wds_wds.json")) as f:
        results = json.load(f)
    assert results["task"] == "zeroshot_classification"
    assert results["metrics"]["num_images"] == 40 and results["metrics"]["images_per_s"] > 0
    for key in ["loss", "learning_rate", "grad_norm", "scale", "examples_per_s", "step_time_s"]:
        assert key in records[-1], key
    named = mmjax("eval", "--model", workdir, "--benchmark", "synthetic", "--output", str(tmp_path / "named.json"))
    assert named.returncode == 0, named.stderr
    with open(tmp_path / "named.json") as f:
        assert json.load(f)["metrics"] == results_default["metrics"]  # --benchmark synthetic is the default
    _assert_exported_workdir_matches_transformers(workdir, str(tmp_path / "hf"))

    # The last checkpoint's array files cut short: one line, nothing after it (TensorStore threads that finish
    # later used to print "Event loop is closed" tracebacks around it).
    for path in pathlib.Path(workdir, "checkpoints", "6", "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:100])
    damaged = mmjax("eval", "--model", workdir)
    assert damaged.returncode == 2 and len(damaged.stderr.strip().splitlines()) == 1, damaged.stderr
    assert damaged.stderr.startswith(f"mmjax: error: {os.path.abspath(workdir)}/checkpoints/6 cannot be restored (")
    assert damaged.stderr.strip().endswith("; if it is damaged, delete it to resume from checkpoint 3")


def _assert_exported_workdir_matches_transformers(workdir: str, out: str):
    """`mmjax convert WORKDIR --to hf`: transformers' CLIPModel on the exported directory gives the embeddings
    that `load_pretrained(WORKDIR)` gives, on the same token ids and preprocessed pixels."""
    import numpy as np
    import torch
    import transformers

    from mmjax import load_pretrained

    exported = mmjax("convert", workdir, "--to", "hf", "--out", out)
    assert exported.returncode == 0, exported.stderr
    assert f"-> {out} (hf)" in exported.stdout
    # into the workdir itself (its config.json and tokenizer.json replaced: no longer an mmjax run): refused
    into_source = mmjax("convert", workdir, "--to", "hf", "--out", workdir)
    assert into_source.returncode == 2 and into_source.stderr.strip() == (
        f"mmjax: error: --out {workdir} is the source; name another directory")
    assert json.load(open(os.path.join(workdir, "config.json")))["model"] == "clip-test"
    pretrained = load_pretrained(workdir)
    reference = transformers.CLIPModel.from_pretrained(out).eval()
    texts = ["a small red circle at the top left", "a blue square"]
    images = list(np.random.default_rng(0).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8))
    with torch.no_grad():
        want_text = reference.get_text_features(input_ids=torch.from_numpy(
            pretrained.tokenizer(texts).astype(np.int64))).pooler_output.numpy()
        want_image = reference.get_image_features(pixel_values=torch.from_numpy(
            pretrained.preprocess.batch(images).transpose(0, 3, 1, 2).copy())).pooler_output.numpy()
    np.testing.assert_allclose(pretrained.encode_text(texts), want_text, atol=1e-5)
    np.testing.assert_allclose(pretrained.encode_image(images), want_image, atol=1e-5)


@pytest.mark.parametrize("override,expected", [
    ("--config.batch_sze=3", "batch_sze"),
    ("--config.loss=triplet", "mmjax: error: config.loss='triplet' must be one of"),
    ("--config.batch_size=many", "batch_size"),
    ("--config.model=ViT-B32", "mmjax: error: config.model='ViT-B32' is neither a registered model"),
    ("--config.optim.no_decay=('(',)", "mmjax: error: config.optim.no_decay: '(' is not a regular expression"),
    ("--config.eval.batch_size=0", "mmjax: error: config.eval.batch_size=0 must be positive"),
])
def test_bad_config_is_one_clear_line(tmp_path, override, expected):
    _assert_one_line_error(mmjax("train", "--config", TEST_CONFIG, "--workdir", str(tmp_path), override), expected)


def test_missing_config_file_unknown_config_argument_and_file_as_workdir_are_one_line(tmp_path):
    _assert_one_line_error(mmjax("train", "--config", "configs/nope.py", "--workdir", str(tmp_path)),
                           "mmjax: error: config file configs/nope.py does not exist")
    _assert_one_line_error(mmjax("train", "--config", TEST_CONFIG.replace(":test", ":bogus"), "--workdir",
                                 str(tmp_path)), "mmjax: error: unknown config argument 'bogus'")
    (tmp_path / "file").write_text("")
    _assert_one_line_error(mmjax("train", "--config", TEST_CONFIG, "--workdir", str(tmp_path / "file")),
                           "is a file, not a directory")
    _assert_one_line_error(mmjax("train", "--config", TEST_CONFIG, "--workdir", str(tmp_path / "file" / "run")),
                           f"mmjax: error: [Errno 20] Not a directory: '{tmp_path / 'file' / 'run'}'")
    _assert_one_line_error(mmjax("train", "--config", TEST_CONFIG, "--workdir", str(tmp_path), "--config.nonexistent=1"),
                           "mmjax: error: unknown config key nonexistent")
    # --config files that fail, and the line each gives ({path}: the file's path)
    for name, text, expected in [
        ("broken.py", "def get_config()\n    return None\n", "mmjax: error: {path}, line 1: expected ':'"),
        ("empty.py", "x = 1\n", "mmjax: error: the --config file defines no get_config()"),
        ("raising.py", "def get_config(arg=None):\n    raise RuntimeError('no GPU here')\n",
         "mmjax: error: the --config file's get_config() raised RuntimeError: no GPU here ({path}, line 2)"),
        # raised inside a library the config calls: the line named is still the config's
        ("dividing.py", "import fractions\n\ndef get_config(arg=None):\n    return fractions.Fraction(1, 0)\n",
         "raised ZeroDivisionError: Fraction(1, 0) ({path}, line 4)"),
        # a ValueError subclass whose constructor needs more arguments: config_flags' re-raise garbled it
        ("parsing.py", "import json\n\ndef get_config(arg=None):\n    return json.loads('{bad')\n",
         "get_config() raised JSONDecodeError: Expecting property name enclosed in double quotes"),
        ("plain.py", "def get_config(arg=None):\n    return {'model': 'clip-test'}\n",
         "mmjax: error: {path}: get_config() returned a dict, not an ml_collections.ConfigDict"),
        # a value ml_collections refuses (raised while handling another error): the config file's line
        ("floating.py", LOCKED_CONFIG + "    config.total_steps = 1e4\n    return config\n",
         "raised TypeError: Could not override field 'total_steps' (reference). 10000.0 is of original type "
         "<class 'float'> and cannot be casted to type <class 'int'> ({path}, line 5)"),
        # a key set on the locked config: ml_collections' message without its dump of the whole config
        ("locked.py", LOCKED_CONFIG + "    config.batch_sze = 8\n    return config\n",
         "raised AttributeError: 'Key \"batch_sze\" does not exist and cannot be added since the config is locked. "
         "Did you mean \"batch_size\" instead of \"batch_sze\"?' ({path}, line 5)"),
        # a config file that does not lock its config: the key would be ignored
        ("unlocked.py", "from mmjax.train.config import base_config\n\ndef get_config(arg=None):\n"
                        "    config = base_config('clip-test', 'clip')\n    config.optim.learning_rat = 1e-3\n"
                        "    return config\n",
         "mmjax: error: config.optim.learning_rat is not a config key; did you mean config.optim.learning_rate?"),
        ("frozen.py", "import ml_collections\n\ndef get_config(arg=None):\n"
                      "    return ml_collections.FrozenConfigDict({'model': 'clip-test'})\n",
         "mmjax: error: the --config file's get_config() returned a FrozenConfigDict: return an "
         "ml_collections.ConfigDict"),
    ]:
        (tmp_path / name).write_text(text)
        _assert_one_line_error(mmjax("train", "--config", str(tmp_path / name), "--workdir", str(tmp_path)),
                               expected.replace("{path}", str(tmp_path / name)))
    # a stray argument is not silently dropped: `eval --model M cifar10` evaluated the synthetic benchmark
    _assert_one_line_error(mmjax("eval", "--model", str(tmp_path), "cifar10"),
                           "mmjax: error: unexpected argument 'cifar10': mmjax eval takes flags only (see --help)")
    _assert_one_line_error(mmjax("eval", "--model", str(tmp_path / "file")),
                           f"mmjax: error: workdir {tmp_path / 'file'} is a file, not a directory")


def test_help_lists_every_command_and_each_command_its_flags():
    overview = mmjax("--help")
    assert overview.returncode == 0
    for command in ("train", "eval", "models", "embed", "search", "classify", "data", "convert", "bench"):
        assert f"mmjax {command} " in overview.stdout or f"mmjax {command}\n" in overview.stdout, command
    data_help = mmjax("data", "--help")
    assert data_help.returncode == 0 and "mmjax data filter DIR" in data_help.stdout
    assert "  --top_fraction: filter: keep this best fraction of the pairs." in data_help.stdout
    assert "spelt with dashes" in data_help.stdout
    # A dashed spelling is the same flag: parsing gets past it to the missing --model.
    _assert_one_line_error(mmjax("eval", "--max-examples", "5"), "mmjax: error: --model is required (see --help)")
    bench_help = mmjax("bench", "-h")
    assert bench_help.returncode == 0 and "  --threads: CPU threads" in bench_help.stdout
    _assert_one_line_error(mmjax("fit"), "mmjax: error: unknown command 'fit'; the commands are train, eval")
    _assert_one_line_error(mmjax("eval"), "mmjax: error: --model is required (see --help)")
    _assert_one_line_error(mmjax("train"), "mmjax: error: --config, --workdir are required (see --help)")
    _assert_one_line_error(mmjax("eval", "--model", "runs/x", "--benchmark", "cifar10", "--figure", "f.png"),
                           "mmjax: error: --figure draws the synthetic benchmark; drop it or --benchmark")


def test_outputs_and_inputs_of_the_wrong_kind_are_one_line_saying_what_they_are(tmp_path):
    """A training workdir or data directory as `convert --out` was overwritten with an export; a file as `--images`
    "did not exist"; a captions file named as a data directory got the advice to convert it onto itself."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    (tmp_path / "photo.png").write_bytes(b"")
    (tmp_path / "captions.csv").write_text("image,caption\n")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "tiny.safetensors").write_bytes(b"weights")
    (tmp_path / "vocab" / "bpe_simple_vocab_16e6.txt.gz").write_bytes(b"merges")
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "index.json").write_text("{}")
    (tmp_path / "downloads" / "model.safetensors").write_bytes(b"weights")
    for args, message in [
        # shards, an index and their .done markers were written among the run's files
        (["data", "filter", str(tmp_path / "shapes"), "--model", str(tmp_path / "run"), "--out", str(tmp_path / "run"),
          "--threshold", "0.5"],
         f"{tmp_path / 'run'} is not empty (checkpoints, metrics.jsonl); `mmjax data filter` needs a new or empty "
         f"--out"),
        (["train", "--config", "configs/clip_tiny.py:test", "--workdir", str(tmp_path / "shapes")],
         f"--workdir {tmp_path / 'shapes'} is a data directory (index.json); train into another --workdir"),
        # open_clip:NAME reads the vocabulary beside its weights, which an export may replace or remove
        (["convert", "open_clip:ViT-B-32", "--weights", str(tmp_path / "vocab" / "tiny.safetensors"), "--to", "hf",
          "--out", str(tmp_path / "vocab")],
         f"--out {tmp_path / 'vocab'} holds the BPE vocabulary file "
         f"{tmp_path / 'vocab' / 'bpe_simple_vocab_16e6.txt.gz'}, which the export would overwrite or remove; name "
         f"another directory"),
        # read as a captions file, the TFDS flags said nothing
        (["data", "convert", str(tmp_path / "captions.csv"), "--out", str(tmp_path / "converted"), "--split", "test"],
         f"--split applies to a tfds:NAME source, not to {tmp_path / 'captions.csv'}"),
        # the OpenCLIP weights were replaced by the transformers export's model.safetensors
        (["convert", "open_clip:ViT-B-32", "--weights", str(tmp_path / "downloads" / "model.safetensors"), "--to",
          "hf", "--out", str(tmp_path / "downloads")],
         f"--out {tmp_path / 'downloads'} holds the --weights file {tmp_path / 'downloads' / 'model.safetensors'}, "
         f"which the export would overwrite or remove; name another directory"),
        (["convert", str(tmp_path / "no_run"), "--to", "hf", "--out", str(tmp_path / "run")],
         f"--out {tmp_path / 'run'} holds an mmjax training workdir or data directory (checkpoints, metrics.jsonl), "
         f"whose files the export would overwrite; name another directory"),
        (["embed", "--model", str(tmp_path / "run"), "--images", str(tmp_path / "photo.png"), "--out",
          str(tmp_path / "i.npz")], f"{tmp_path / 'photo.png'} is a file, not a directory of images (--images takes a "
                                    f"directory)"),
        # the run's own files were overwritten by the results, and the run could not be loaded again
        (["eval", "--model", str(tmp_path / "run"), "--output", str(tmp_path / "run" / "metrics.jsonl")],
         f"--output {tmp_path / 'run' / 'metrics.jsonl'} would overwrite the run's own metrics.jsonl; name another "
         f"results file (.json)"),
        (["eval", "--model", str(tmp_path / "run"), "--figure", str(tmp_path / "run" / "checkpoints" / "f.png")],
         f"--figure {tmp_path / 'run' / 'checkpoints' / 'f.png'} would overwrite the run's own checkpoints/f.png; "
         f"name another figure (.png)"),
        (["data", "info", str(tmp_path / "captions.csv")],
         f"{tmp_path / 'captions.csv'}/index.json not found: {tmp_path / 'captions.csv'} is not an mmjax data directory "
         f"(it is a file: convert a captions file or tar with `mmjax data convert {tmp_path / 'captions.csv'} --out "
         f"DIR`)"),
    ]:
        done = mmjax(*args)
        assert done.returncode == 2 and done.stderr.strip() == f"mmjax: error: {message}", (args, done.stderr)
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoints", "metrics.jsonl"]
    assert sorted(os.listdir(tmp_path / "shapes")) == ["index.json"]
    assert (tmp_path / "downloads" / "model.safetensors").read_bytes() == b"weights"


def test_sibling_task_failures_of_a_failed_checkpoint_read_are_not_logged_around_the_error():
    """Orbax reads arrays in concurrent asyncio tasks: with a damaged file, the first failure is the one-line
    error and the others were logged as "Task exception was never retrieved" with tracebacks, depending on when
    the garbage collector ran (a CI run of the damaged-checkpoint test failed on it). Other asyncio errors stay."""
    script = """
import asyncio, gc, logging
from mmjax import cli
cli._quiet_closed_event_loops()
async def read_array():
    raise ValueError("damaged")
async def restore():
    reads = [asyncio.ensure_future(read_array()) for _ in range(3)]
    await asyncio.sleep(0.01)
    try:
        await reads[0]
    except ValueError:
        pass
loop = asyncio.new_event_loop()
loop.run_until_complete(restore())
loop.close()
del loop
gc.collect()
logging.getLogger("asyncio").error("another asyncio error")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "another asyncio error\n", done.stderr


def test_missing_workdir_is_one_clear_line(tmp_path):
    missing = str(tmp_path / "no  where")  # two spaces, kept in the message: it names a real path
    _assert_one_line_error(mmjax("eval", "--model", missing), f"mmjax: error: workdir {missing} does not exist")
    _assert_one_line_error(mmjax("eval", "--model", missing, "--output", str(tmp_path)),  # before any evaluation
                           f"mmjax: error: --output {tmp_path} is a directory; name the results file (.json)")


def test_workdir_without_checkpoint_and_a_hugging_face_directory_are_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(base_config("clip-test", "clip").to_json())
    _assert_one_line_error(mmjax("eval", "--model", str(tmp_path / "run")), "no checkpoint in")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
    _assert_one_line_error(mmjax("eval", "--model", str(tmp_path / "hf")),  # eval takes it, with a benchmark
                           f"a pretrained checkpoint ({tmp_path / 'hf'}) needs --benchmark")
    (tmp_path / "texts.txt").write_text("a cat\n")
    _assert_one_line_error(mmjax("embed", "--model", str(tmp_path / "hf"), "--texts", str(tmp_path / "texts.txt"),
                                 "--out", str(tmp_path / "index.npz")),
                           f"{tmp_path / 'hf' / 'config.json'}: hidden_size is missing from the text or vision config")


@pytest.mark.slow  # ~45 s: three processes. Kept in the default run: it is the only test of a real kill.
def test_training_killed_mid_run_resumes_to_the_uninterrupted_parameters(tmp_path):
    import signal
    import time

    import jax
    import numpy as np

    from mmjax.train.workdir import load_trained

    overrides = ["--config.total_steps=150", "--config.checkpoint_every=10", "--config.log_every=50"]
    straight = mmjax("train", "--config", TEST_CONFIG, "--workdir", str(tmp_path / "straight"), *overrides)
    assert straight.returncode == 0, straight.stderr

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "mmjax.cli", "train", "--config", TEST_CONFIG, "--workdir",
                                str(killed_dir), *overrides], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed_dir / "checkpoints" / "30").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = mmjax("train", "--config", TEST_CONFIG, "--workdir", str(killed_dir), *overrides)
    assert resumed.returncode == 0, resumed.stderr

    want, got = load_trained(str(tmp_path / "straight")), load_trained(str(killed_dir))
    assert got.step == want.step == 150
    jax.tree.map(np.testing.assert_array_equal, got.params, want.params)


def test_the_huge_pages_re_exec_runs_the_same_command_line_and_keeps_a_users_setting(monkeypatch):
    """The re-exec runs `sys.orig_argv` again, so `sys.path` starts as the user's command made it (`-m` would put
    the current directory first for the `mmjax` script: a local optax.py replaced the package; `-P` would drop
    it for `python -m mmjax.cli` from a checkout). A user's own glibc.malloc.hugetlb=0 or =2 is kept."""
    from mmjax import hugepages

    calls = []
    monkeypatch.setattr(hugepages.os, "execve", lambda *args: calls.append(args))
    monkeypatch.setattr(hugepages.sys, "orig_argv", ["python3", "/venv/bin/mmjax", "train", "--workdir", "w"])
    monkeypatch.delenv("MMJAX_HUGEPAGES", raising=False)
    for user_setting in ("glibc.malloc.hugetlb=0", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2"):
        monkeypatch.setenv("GLIBC_TUNABLES", user_setting)
        hugepages.reexec_with_hugepages()
    assert calls == []
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    hugepages.reexec_with_hugepages()
    (executable, argv, env), = calls
    assert argv == [sys.executable, "/venv/bin/mmjax", "train", "--workdir", "w"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


def _worker_processes(parent: int) -> list[int]:
    """The grain worker processes (multiprocessing's spawned children) of process `parent`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except (OSError, ValueError):
            continue
        if status.get("PPid", "").strip() == str(parent) and b"spawn_main" in command:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except OSError:
        return False


@pytest.mark.slow  # ~25 s: two training processes. The only test of signals reaching the data workers.
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_the_process_group_saves_the_run_and_a_killed_run_leaves_no_data_worker(tmp_path):
    """SIGTERM to the whole group (SLURM, a container stopping) killed the grain worker too, and the run crashed at
    its next batch ("Worker process was terminated unexpectedly with exit code -15") without saving. And a run
    killed with SIGKILL (the OOM killer) left its worker running, holding its memory."""
    import signal
    import time

    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "mmjax.cli", "train", "--config", TEST_CONFIG, "--workdir", str(workdir),
               "--config.total_steps=5000", "--config.checkpoint_every=2500", "--config.log_every=2",
               "--config.data.num_workers=1"]

    def started() -> tuple[subprocess.Popen, list[int]]:
        """A run in a session of its own, once it has logged a step (its data worker is up)."""
        logged = len(_read_lines(workdir / "metrics.jsonl"))
        process = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while len(_read_lines(workdir / "metrics.jsonl")) <= logged and process.poll() is None:
            assert time.time() < deadline, "no step logged in 120 s"
            time.sleep(0.1)
        workers = _worker_processes(process.pid)
        assert process.poll() is None and len(workers) == 1, workers
        return process, workers

    process, _ = started()
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    step = int(stderr.strip().splitlines()[-1].split(" at step ")[1].split(",")[0])
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(step)]

    process, workers = started()  # resumes from that step
    process.kill()
    process.wait()
    deadline = time.time() + 15
    while _alive(workers[0]) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(workers[0]), "the data worker outlived its killed run"


def _read_lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
