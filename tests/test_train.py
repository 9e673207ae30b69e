"""Training tests: sharded steps equal a plain single-device step, exact resume,
the optimizer's schedule and weight-decay mask, and one-line config errors."""

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import pytest

import mmjax.models as models
from mmjax.data import Tokenizer, train_dataset
from mmjax.data.transforms import normalize_images
from mmjax.losses import clip_loss, sigmoid_loss
from mmjax.parallel import DEFAULT_RULES, batch_sharding, make_mesh
from mmjax.train.config import ConfigError, base_config, small_for_tests, validate
from mmjax.train.loop import check_batch_size, train
from mmjax.train.optim import learning_rate_schedule, make_optimizer
from mmjax.train.patterns import decay_mask
from mmjax.train.state import create_train_state, state_shardings
from mmjax.train.step import jit_train_step, make_train_step

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import clip_tiny  # noqa: E402


def _batches(config, steps):
    tokenizer = Tokenizer.for_synthetic(models.get_config(config.model).text.context_length)
    size = models.get_config(config.model).vision.image_size
    stream = iter(train_dataset(seed=0, global_batch_size=config.batch_size, image_size=size, tokenizer=tokenizer))
    return [next(stream) for _ in range(steps)]


def _reference_params(config, batches):
    """A plain, unsharded step written out by hand with the single-device losses (no mesh, no shard_map)."""
    model = models.TwoTower(models.get_config(config.model))
    tx = make_optimizer(config.optim, config.total_steps)
    images, tokens = models.example_inputs(model.config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(config.seed), image=images, text=tokens))["params"]
    opt_state = tx.init(params)

    def loss_fn(params, batch):
        img, txt, aux = model.apply({"params": params}, image=normalize_images(batch["image"], (0.5,) * 3, (0.5,) * 3),
                                    text=batch["text"])
        labels = (batch["image_labels"], batch["text_labels"])
        if config.loss == "clip":
            return clip_loss(img, txt, aux["logit_scale"], *labels)
        return sigmoid_loss(img, txt, aux["logit_scale"], aux["logit_bias"], *labels)

    grad_fn = jax.jit(jax.grad(loss_fn))
    for batch in batches:
        grads = grad_fn(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params


def sharded_params(config, batches, mesh, **step_options):
    """`(params, last metrics)` after `mmjax train`'s jitted step on `batches`, split over `mesh` (`step_options`:
    more keyword arguments of `make_train_step`)."""
    model = models.create_model(config.model)
    tx = make_optimizer(config.optim, config.total_steps)
    shardings = state_shardings(model, tx, mesh)
    state = create_train_state(model, tx, jax.random.key(config.seed), shardings)
    step = jit_train_step(make_train_step(model, tx, learning_rate_schedule(config.optim, config.total_steps), mesh,
                                          loss=config.loss, multi_positive=config.multi_positive,
                                          image_mean=(0.5,) * 3, image_std=(0.5,) * 3, seed=config.seed,
                                          **step_options),
                          shardings, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        for batch in batches:
            state, metrics = step(state, jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh)), batch))
    return state.params, metrics


@pytest.mark.parametrize("loss", ["clip", "sigmoid"])
def test_clip_logit_scale_parameter_is_clamped_after_the_update_as_open_clip_does(loss):
    """Above log 100 the CLIP loss's gradient in `logit_scale` is 0: without OpenCLIP's clamp of the parameter a
    scale that overshoots could never come back. SigLIP has no clamp. No warmup: the step moves every parameter
    (by about the learning rate, AdamW's first step), so a clamp before the update would leave the parameter
    that far from the bound it started past."""
    config = _test_config(loss)
    config.optim.warmup_steps, config.optim.learning_rate = 0, 0.1
    model = models.TwoTower(models.get_config(config.model))
    tx, mesh = make_optimizer(config.optim, config.total_steps), make_mesh(1, 1, 1, devices=jax.devices()[:1])
    shardings = state_shardings(model, tx, mesh)
    step = jit_train_step(make_train_step(model, tx, learning_rate_schedule(config.optim, config.total_steps), mesh,
                                          loss=loss, multi_positive=True, image_mean=(0.5,) * 3,
                                          image_std=(0.5,) * 3), shardings, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        start = create_train_state(model, tx, jax.random.key(0), shardings)
        ends = {}
        for logit_scale in (6.0, -1.0):  # past log 100, where its gradient is 0, and below 0, where it is not
            state = start.replace(params={**start.params, "logit_scale": jax.numpy.float32(logit_scale)})
            state, metrics = step(jax.tree.map(jax.numpy.copy, state), _batches(config, 1)[0])
            ends[logit_scale] = float(state.params["logit_scale"]), float(metrics["scale"])
    if loss == "clip":
        assert ends[6.0] == (pytest.approx(math.log(100)), pytest.approx(100, rel=1e-6))
        assert ends[-1.0] == (0.0, pytest.approx(math.exp(-1.0), rel=1e-6))
    else:
        assert ends[6.0][1] == pytest.approx(math.exp(6.0), rel=1e-5) and ends[6.0][0] > 5.8  # not clamped
        assert ends[-1.0][1] == pytest.approx(math.exp(-1.0), rel=1e-5)
        assert 0.05 < abs(ends[-1.0][0] + 1.0) < 0.15  # moved by about the learning rate, not clamped


def _test_config(loss):
    config = small_for_tests(base_config("clip-tiny", loss), "clip-test" if loss == "clip" else "siglip-test")
    config.optim.weight_decay = 0.5  # make the decay mask matter within 3 steps
    return config


def test_sharded_sigmoid_steps_equal_a_plain_single_device_step():
    """On a data × fsdp mesh the sigmoid loss's ring runs over both batch axes and the parameters are FSDP-sharded.
    The CLIP loss's steps are checked on every mesh against the same reference in test_parallel.py, the sigmoid
    loss's ring alone on data=8 and on data=4 × fsdp=2 in test_losses.py."""
    config = _test_config("sigmoid")
    batches = _batches(config, 3)
    want = _reference_params(config, batches)
    got, _ = sharded_params(config, batches, make_mesh(4, 2, 1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), got, want)


def test_fsdp_mesh_really_shards_parameters():
    config = _test_config("clip")
    model = models.TwoTower(models.get_config(config.model))
    shardings = state_shardings(model, make_optimizer(config.optim, 6), make_mesh(4, 2, 1))
    kernel = shardings.params["image_encoder"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]
    assert kernel.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    mu = shardings.opt_state[1][0].mu["image_encoder"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]
    assert mu.spec == kernel.spec


def _logged_steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def test_resumed_run_ends_with_the_parameters_of_an_uninterrupted_run(tmp_path):
    config = clip_tiny.get_config("test")
    config.data.num_workers = 1  # the demo's path: the iterator state of a grain worker process is checkpointed
    straight = train(config, str(tmp_path / "straight"))
    train(config, str(tmp_path / "resumed"), stop_after=3)
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["3"]
    resumed = train(config, str(tmp_path / "resumed"))
    assert int(resumed.step) == int(straight.step) == config.total_steps
    jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)
    jax.tree.map(np.testing.assert_array_equal, resumed.opt_state, straight.opt_state)
    for name in ["config.json", "tokenizer.json", "metrics.jsonl", "tensorboard"]:
        assert os.path.exists(tmp_path / "resumed" / name), name
    assert not os.path.exists(tmp_path / "resumed" / "eval_metrics.jsonl")  # no benchmark, no (empty) file
    # Orbax's array metadata is written as its default handler writes it (mmjax writes from one replica on CPU)
    assert os.path.isdir(tmp_path / "resumed" / "checkpoints" / str(config.total_steps) / "state" / "array_metadatas")
    assert _logged_steps(tmp_path / "resumed") == [2, 3, 4, 6]


def test_steps_logged_after_the_last_checkpoint_are_not_logged_twice(tmp_path):
    config = clip_tiny.get_config("test")
    train(config, str(tmp_path))
    assert _logged_steps(tmp_path) == [2, 4, 6]
    shutil.rmtree(tmp_path / "checkpoints" / "6")  # as if killed after logging step 6, before its checkpoint
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 1.')  # and while writing a line: the last line is cut short
    train(config, str(tmp_path))
    assert _logged_steps(tmp_path) == [2, 4, 6]


def _tensorboard_steps(workdir, tag="train/loss") -> list[int]:
    """The steps of `tag` in the TensorBoard event files on disk (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    steps = []
    for name in sorted(os.listdir(os.path.join(workdir, "tensorboard"))):
        with open(os.path.join(workdir, "tensorboard", name), "rb") as f:
            data = f.read()
        offset = 0
        while offset + 12 <= len(data):
            length = int.from_bytes(data[offset:offset + 8], "little")
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            steps += [event.step for value in event.summary.value if value.tag == tag]
            offset += 12 + length + 4
    return steps


def test_every_checkpoint_finds_tensorboard_on_disk_up_to_its_step_and_the_first_logged_wait_is_measured(
        tmp_path, monkeypatch):
    """A run killed after a checkpoint resumes after it: TensorBoard, which flushes every 2 minutes by itself,
    lost the steps before it. And a logged first step reported data_wait_s 0.0 whatever it waited."""
    from mmjax.train.checkpoint import Checkpoints

    on_disk = {}
    save = Checkpoints.save

    def save_and_look(self, step, *args, **kwargs):
        on_disk[step] = _tensorboard_steps(tmp_path)
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(Checkpoints, "save", save_and_look)
    config = clip_tiny.get_config("test")
    config.log_every, config.checkpoint_every = 1, 3
    train(config, str(tmp_path))
    assert on_disk == {3: [1, 2, 3], 6: [1, 2, 3, 4, 5, 6]}
    with open(tmp_path / "metrics.jsonl") as f:
        first = json.loads(f.readline())
    assert first["step"] == 1 and first["data_wait_s"] > 0


def test_tensorboard_logs_without_importing_torch_and_torch_still_imports_afterwards(tmp_path):
    """tensorboardX imports torch where it is installed (4 s of every run's start here) to accept torch tensors."""
    script = (
        "import sys\n"
        "from mmjax.train.metrics import _summary_writer\n"
        f"writer = _summary_writer({str(tmp_path / 'tensorboard')!r})\n"
        "writer.add_scalar('train/loss', 2.5, 7)\n"
        "writer.close()\n"
        "assert 'torch' not in sys.modules, 'tensorboardX imported torch'\n"
        "import torch\n"
        "print(torch.zeros(2).sum().item())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.0"]
    assert _tensorboard_steps(tmp_path) == [7]


def test_schedule_is_linear_warmup_then_cosine_to_the_floor():
    optim = base_config("clip-tiny", "clip").optim
    optim.learning_rate, optim.warmup_steps, optim.final_lr_ratio = 1e-3, 10, 0.1
    schedule = learning_rate_schedule(optim, total_steps=110)
    for step in [0, 5, 10, 35, 60, 110]:
        if step <= 10:
            want = 1e-3 * step / 10
        else:
            progress = (step - 10) / 100
            want = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-9), step


def test_the_optimizer_is_clipping_then_adamw_with_the_schedule_and_the_decay_mask_written_out():
    """Four steps of `make_optimizer` against AdamW written out in NumPy (float64): the global norm clipped to
    `clip_norm` (the first gradients exceed it, the later ones do not), Adam's bias-corrected moments, weight decay
    on kernels and token embeddings only, the learning rate of each step (warmup from 0, then cosine)."""
    optim = base_config("clip-tiny", "clip").optim
    optim.learning_rate, optim.warmup_steps, optim.final_lr_ratio, optim.weight_decay = 0.1, 2, 0.2, 0.5
    lr, total_steps = optim.learning_rate, 4
    rng = np.random.default_rng(0)
    params = {"layer": {"dense": {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=2)},
                        "ln": {"scale": rng.normal(size=3)}},
              "token_embed": {"embedding": rng.normal(size=(5, 3))}, "logit_scale": np.array(2.0)}
    decayed = {"layer/dense/kernel", "token_embed/embedding"}
    params = flax.traverse_util.flatten_dict(params, sep="/")
    grads = [{path: rng.normal(size=p.shape) * scale for path, p in params.items()} for scale in (3, 3, 0.05, 0.05)]
    tx = make_optimizer(optim, total_steps)
    ours = {path: np.float32(p) for path, p in params.items()}
    state = tx.init(flax.traverse_util.unflatten_dict(ours, sep="/"))
    want = dict(params)
    m, v = ({path: np.zeros_like(p) for path, p in params.items()} for _ in range(2))
    for t, grad in enumerate(grads):
        step_lr = lr * t / 2 if t <= 2 else lr * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * (t - 2) / 2)))
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grad.values()))
        assert (norm > optim.clip_norm) == (t < 2)
        for path, g in grad.items():
            g = g * min(1.0, optim.clip_norm / norm)
            m[path] = optim.b1 * m[path] + (1 - optim.b1) * g
            v[path] = optim.b2 * v[path] + (1 - optim.b2) * g ** 2
            adam = (m[path] / (1 - optim.b1 ** (t + 1))) / (np.sqrt(v[path] / (1 - optim.b2 ** (t + 1))) + optim.eps)
            want[path] = want[path] - step_lr * (adam + (optim.weight_decay * want[path] if path in decayed else 0))
        tree = flax.traverse_util.unflatten_dict(ours, sep="/")
        updates, state = tx.update(flax.traverse_util.unflatten_dict(
            {path: np.float32(g) for path, g in grad.items()}, sep="/"), state, tree)
        ours = flax.traverse_util.flatten_dict(optax.apply_updates(tree, updates), sep="/")
        for path in params:
            np.testing.assert_allclose(ours[path], want[path], rtol=2e-5, atol=1e-6, err_msg=f"step {t} {path}")


@pytest.mark.parametrize("name", ["siglip-test", "clip-test", "flava-test", "flamingo-test"])
def test_weight_decay_skips_all_but_kernels_and_token_embeddings(name):
    """Biases, norms, positions, learned tokens, logit parameters, latents and gates (OpenFlamingo's `apply_decay`
    leaves out `attn_gate` / `ff_gate`) get no weight decay."""
    params = nn.unbox(models.abstract_params(models.get_config(name)))
    mask = flax.traverse_util.flatten_dict(decay_mask(params, base_config("x", "clip").optim.no_decay), sep="/")
    decayed = {path for path, on in mask.items() if on}
    expected = {path for path in mask
                if path.endswith("kernel") or path.endswith("token_embed/embedding")}
    assert decayed == expected
    assert len(expected) < len(mask)


@pytest.mark.parametrize("add, message", [
    (lambda c: setattr(c.optim, "lr", 1e-3), "config.optim.lr is not a config key; config.optim has b1, b2, "
     "clip_norm, eps, final_lr_ratio, frozen, image_layer_decay, layer_decay, learning_rate, no_decay, "
     "text_layer_decay, warmup_steps, weight_decay"),
    (lambda c: setattr(c.mesh, "dat", 2), "config.mesh.dat is not a config key; did you mean config.mesh.data?"),
    (lambda c: setattr(c, "optimizer", ml_collections.ConfigDict({"lr": 1.0})),
     "config.optimizer is not a config key; did you mean config.optim?"),
    (lambda c: setattr(c, "xyz", 1), "config.xyz is not a config key"),
])
def test_a_key_the_defaults_lack_is_a_one_line_error(add, message):
    """A config file that does not lock its config can add any key; it would be ignored."""
    config = base_config("clip-tiny", "clip")
    add(config)
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        validate(config)


def test_invalid_values_are_one_line_config_errors():
    config = clip_tiny.get_config("test")
    config.loss = "triplet"
    with pytest.raises(ConfigError, match=r"config.loss='triplet' must be one of"):
        validate(config)
    config = clip_tiny.get_config("test")
    config.loss = "sigmoid"
    with pytest.raises(ConfigError, match="needs a model with a logit bias"):
        validate(config)
    config.model = "siglip-test"  # the other way: a bias the CLIP loss never trains, read as SigLIP's
    config.loss = "clip"
    with pytest.raises(ConfigError, match="config.loss='clip' leaves 'siglip-test''s logit bias untrained"):
        validate(config)
    config = clip_tiny.get_config("test")
    config.optim.no_decay = (1,)  # was a TypeError from deep inside `re`
    with pytest.raises(ConfigError, match=r"config.optim.no_decay=\(1,\) must be a tuple of regular expressions"):
        validate(config)
    config = clip_tiny.get_config("test")
    config.model_options.attention = "flash"
    with pytest.raises(ConfigError, match=r"config.model_options.attention='flash' must be one of \['xla', 'cudnn'\]"):
        validate(config)
    config.model_options.attention = "cudnn"  # cuDNN's attention takes bf16 or fp16 only
    with pytest.raises(ConfigError, match="attention='cudnn' needs config.model_options.dtype='bfloat16'"):
        validate(config)
    with pytest.raises(AttributeError):
        clip_tiny.get_config("test").batch_sze = 3  # locked: a misspelt key is an error
    # optimizer values that train to NaN (b1 or b2 = 1) or ascend the gradient (a negative learning rate)
    for key, value, message in [("b1", 1.0, r"b1=1.0 must be in \[0, 1\)"), ("b2", 1.5, r"b2=1.5 must be in \[0, 1\)"),
                                ("eps", 0.0, "eps=0.0 must be positive"), ("weight_decay", -0.5, "weight_decay=-0.5"),
                                ("final_lr_ratio", -1.0, r"final_lr_ratio=-1.0 must be in \[0, 1\]")]:
        config = clip_tiny.get_config("test")
        config.optim[key] = value
        with pytest.raises(ConfigError, match=f"config.optim.{message}"):
            validate(config)
    config = clip_tiny.get_config("test")
    config.eval.every = 2  # trained without a word, and without an evaluation
    with pytest.raises(ConfigError, match=r"^config.eval.every=2 evaluates nothing: config.eval.benchmarks is empty "):
        validate(config)


def test_an_auto_loss_trains_each_model_with_its_own_and_records_it(tmp_path):
    """clip-test has no logit bias (CLIP's loss), siglip-test one (the sigmoid loss), flava-test is FLAVA; a run of
    siglip-test with "auto" logs SigLIP's bias and records "sigmoid", its caller's config left as it was."""
    from mmjax.train.config import own_loss
    from mmjax.train.workdir import load_config

    assert [own_loss(models.get_config(name)) for name in ("clip-test", "siglip-test", "flava-test")] == [
        "clip", "sigmoid", "flava"]
    config = clip_tiny.get_config("test")
    config.model, config.loss, config.total_steps = "siglip-test", "auto", 1
    config.optim.warmup_steps = 0
    train(config, str(tmp_path))
    assert config.loss == "auto" and load_config(str(tmp_path)).loss == "sigmoid"
    with open(tmp_path / "metrics.jsonl") as f:
        assert "logit_bias" in json.loads(f.readline())
    config.total_steps = 2  # resumes: "auto" is the recorded run's loss
    train(config, str(tmp_path))
    config.loss = "clip"
    with pytest.raises(ConfigError, match="config.loss='clip' leaves 'siglip-test''s logit bias untrained"):
        train(config, str(tmp_path))


def test_a_damaged_config_json_is_named(tmp_path):
    from mmjax.train.workdir import load_config

    (tmp_path / "config.json").write_text('{"model": "clip-test", "da')
    with pytest.raises(ValueError, match=r"config.json is not valid JSON \(Unterminated string .*\): .* cannot be "
                                         r"resumed or loaded$"):
        load_config(str(tmp_path))


def test_batch_that_does_not_split_over_the_mesh_is_rejected_before_compiling(tmp_path):
    config = clip_tiny.get_config("test")
    config.batch_size = 12
    with pytest.raises(ConfigError, match="multiple of 8"):
        train(config, str(tmp_path))
    assert not os.listdir(tmp_path)


def test_batch_size_multiple_counts_accumulation_and_processes_once():
    mesh = make_mesh(data=4, fsdp=2)  # 8 batch devices
    config = clip_tiny.get_config("test")
    for batch_size, accum_steps, processes in [(8, 1, 2), (8, 1, 8), (16, 2, 2), (24, 3, 1), (8, 1, 4)]:
        config.batch_size, config.accum_steps = batch_size, accum_steps
        # one row a device in each micro-batch: enough (the 8 devices as `processes` processes of equal size)
        check_batch_size(config, mesh, processes, process_of=lambda device: device.id * processes // 8)
    for batch_size, accum_steps, processes, multiple in [(16, 4, 1, 32), (8, 1, 16, 16), (12, 1, 2, 8), (8, 2, 1, 16)]:
        config.batch_size, config.accum_steps = batch_size, accum_steps
        with pytest.raises(ConfigError, match=f"config.batch_size={batch_size} must be a multiple of {multiple}: "):
            check_batch_size(config, mesh, processes)


def test_processes_must_hold_rows_of_their_own():
    """data=2 × tensor=4 over 4 processes of 2 devices: processes 0 and 1 both hold batch shard 0, but each
    loaded its own rows, so the step trained on a smaller batch and the replicas drifted apart."""
    config = clip_tiny.get_config("test")
    config.batch_size = 8
    mesh = make_mesh(data=2, tensor=4)
    assert [d.id for d in mesh.devices.flat] == list(range(8))  # data index = id // 4
    check_batch_size(config, mesh, 2, process_of=lambda device: device.id // 4)
    with pytest.raises(ConfigError, match=re.escape(
            "mesh {'data': 2, 'fsdp': 1, 'tensor': 4} gives the 4 processes overlapping rows of the batch (its "
            "data×fsdp axes span 2 device(s)), but each process loads rows of its own: make config.mesh.data × "
            "config.mesh.fsdp a multiple of the process count")):
        check_batch_size(config, mesh, 4, process_of=lambda device: device.id // 2)


def test_a_run_of_another_number_of_processes_is_refused_before_restoring(tmp_path):
    """Each process stores its own data-iterator state (`data/process_I-of-N.json`): resumed by another number of
    processes, the restore failed and was reported as a damaged checkpoint, to be deleted."""
    config, workdir = clip_tiny.get_config("test"), tmp_path / "lr[3e-4]"  # not a glob pattern
    train(config, str(workdir), stop_after=1)
    data = workdir / "checkpoints" / "1" / "data"
    os.rename(data / "process_0-of-1.json", data / "process_0-of-2.json")  # as the first of two processes wrote it
    with pytest.raises(ConfigError, match=re.escape(f"{workdir} holds a run of 2 process(es), not 1: each process's "
                                                    f"data-iterator state is its own; resume with 2, or use another "
                                                    f"--workdir")):
        train(config, str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1"]


def test_a_key_the_saved_config_lacks_is_named_as_new_not_as_changed_from_none():
    """A workdir written before `model_options.attention` existed resumed with `attention None → 'xla'`, as if
    the run had trained with no attention."""
    from mmjax.train.loop import _changes

    before, after = clip_tiny.get_config("test"), clip_tiny.get_config("test")
    with before.unlocked():
        del before.model_options["attention"]
        for section, keys in [("optim", ("frozen", "layer_decay", "image_layer_decay", "text_layer_decay")),
                              ("model_options", ("activation", "norm_eps")), ("data", ("record_reads",)),
                              ("pretrained", ("weights", "tokenizer", "allow_pickle", "image_size"))]:
            for key in keys:  # later keys, with the value every earlier run had: not a change
                del before[section][key]
    after.total_steps = before.total_steps + 2
    after.optim.text_layer_decay = 0.5
    assert sorted(_changes(before, after)) == ["model_options.attention 'xla' (not in the saved config)",
                                               "optim.text_layer_decay None → 0.5",
                                               f"total_steps {before.total_steps} → {after.total_steps}"]


def test_resuming_a_workdir_with_another_model_is_rejected_and_other_changes_are_named(tmp_path, capsys):
    config = clip_tiny.get_config("test")
    train(config, str(tmp_path), stop_after=1)
    last_line = capsys.readouterr().out.splitlines()[-1]
    workdir = re.escape(str(tmp_path))
    assert re.fullmatch(rf"trained {workdir} from step 0 to 1 \(of 6\) in (\d+ min )?[\d.]+ s; checkpoint "
                        rf"{workdir}/checkpoints/1; next: train with the same config and workdir to go on to step 6",
                        last_line), last_line
    longer = clip_tiny.get_config("test")
    longer.total_steps, longer.optim.learning_rate = 8, 0.5
    train(longer, str(tmp_path), stop_after=2)
    out = capsys.readouterr().out
    assert (f"resuming {tmp_path} at step 1 with a changed config: total_steps 6 → 8; optim.learning_rate 0.002 → 0.5"
            in out)
    assert out.splitlines()[-1].startswith(f"trained {tmp_path} from step 1 to 2 (of 8) in ")
    saved = (tmp_path / "config.json").read_text()
    assert '"total_steps": 8' in saved
    changed = {"model": "clip-tiny", "model_options.scan_layers": True, "data.num_workers": 1,
               "data.tokenizer": "clip-bpe"}
    for key, value in changed.items():  # each would fail later, deep inside Orbax or grain, or be ignored
        refused = clip_tiny.get_config("test")
        section, _, name = key.rpartition(".")
        (refused[section] if section else refused)[name] = value
        old = {"model": "clip-test", "model_options.scan_layers": False, "data.num_workers": 0, "data.tokenizer": ""}
        with pytest.raises(ConfigError, match=re.escape(f"holds a run with {key}={old[key]!r}, not {value!r}")):
            train(refused, str(tmp_path))
    assert (tmp_path / "config.json").read_text() == saved  # a refused resume leaves the run's config as it was
    older = json.loads(saved)  # a run written before mmjax stored these keys still resumes
    del older["data"]["num_workers"], older["data"]["tokenizer"], older["model_options"]["scan_layers"]
    (tmp_path / "config.json").write_text(json.dumps(older))
    resumed = clip_tiny.get_config("test")
    resumed.total_steps = 8
    train(resumed, str(tmp_path), stop_after=3)
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"trained {tmp_path} from step 2 to 3 (of 8) in ")


def test_a_damaged_or_foreign_checkpoint_is_one_line_naming_it_and_the_one_to_go_back_to(tmp_path):
    from mmjax.train.checkpoint import CheckpointError
    from mmjax.train.workdir import load_config, load_trained, save_config

    config = clip_tiny.get_config("test")
    train(config, str(tmp_path), stop_after=1)
    train(config, str(tmp_path), stop_after=2)
    assert load_trained(str(tmp_path)).step == 2
    scanned = load_config(str(tmp_path))
    scanned.model_options.scan_layers = True  # the files hold layers_0, layers_1: nothing for a stacked layout
    save_config(str(tmp_path), scanned)
    with pytest.raises(CheckpointError, match=r"checkpoints/2 has no parameter \['image_encoder'\]\['encoder'\]"
                                              r"\['layers'\]\['attn'\]\['key'\]\['bias'\] of this model"):
        load_trained(str(tmp_path))
    save_config(str(tmp_path), config)
    for path in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # the array data files
            path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"checkpoints/2 cannot be restored \(.*\); if it is damaged, delete "
                                              r"it to resume from checkpoint 1$") as error:
        load_trained(str(tmp_path))
    assert "\n" not in str(error.value)
    # training stops at the restore too, and leaves no filter on Orbax's error reports behind (it hid them for
    # the rest of the process)
    with pytest.raises(CheckpointError, match=r"checkpoints/2 cannot be restored"):
        train(config, str(tmp_path))
    assert not [f for f in logging.getLogger("absl").filters if type(f).__name__ == "_OrbaxErrorReports"]


def test_ctrl_c_during_a_checkpoint_save_takes_effect_after_it():
    import signal
    import threading

    from mmjax import interrupts

    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in `mmjax train`
    finished = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts.deferred():
                signal.raise_signal(signal.SIGINT)
                finished.append("the block")
        assert finished == ["the block"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):  # outside the block Ctrl-C interrupts at once
            signal.raise_signal(signal.SIGINT)
            finished.append("after")
        assert finished == ["the block"]
        interrupts.check()  # both were raised where they happened: nothing was dropped
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("watching", [False, True])
def test_a_ctrl_c_whose_exception_python_dropped_is_raised_at_the_next_check(watching):
    """Python drops an exception raised in a garbage-collector callback (JAX's `_xla_gc_callback`), reporting it
    as "Exception ignored": a run went on to its last step after Ctrl-C. The drop is marked, and raised by the
    next `check()`; inside `watching()` (the training loop) it is not reported."""
    import contextlib
    import gc
    import signal

    from mmjax import interrupts

    previous, previous_hook = signal.signal(signal.SIGINT, signal.default_int_handler), sys.unraisablehook
    reported = []
    sys.unraisablehook = reported.append  # what reports the rest: chained, not replaced
    interrupts.install()
    try:
        def raise_signal_in_gc(phase, info):
            if phase == "start":
                signal.raise_signal(signal.SIGINT)

        gc.disable()  # only the collection below runs the callback (an automatic one could run outside `watching`)
        gc.callbacks.append(raise_signal_in_gc)
        try:
            with interrupts.watching() if watching else contextlib.nullcontext():
                gc.collect()  # the KeyboardInterrupt is raised inside the callback, and dropped
        finally:
            gc.callbacks.remove(raise_signal_in_gc)
            gc.enable()
        # (other reports may arrive meanwhile: Orbax threads of an earlier test in this process finishing late)
        interrupt_reports = [r for r in reported if isinstance(r.exc_value, KeyboardInterrupt)]
        assert len(interrupt_reports) == (0 if watching else 1)
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        interrupts.check()  # once only
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
        interrupts._dropped.clear()  # even when an assertion failed: no later test in this process may see it


def test_a_ctrl_c_python_dropped_during_start_up_stops_before_the_command_without_a_traceback():
    """Dropped during start-up (imports, flag parsing), it was reported as "Exception ignored … Traceback", and
    the run went on starting up and compiling until its first step."""
    script = """if True:
        import gc, signal, sys
        from mmjax import cli

        def raise_signal_once(phase, info):
            if phase == "start" and not raised and sys.unraisablehook is not sys.__unraisablehook__:  # in `main`
                raised.append(True)
                signal.raise_signal(signal.SIGINT)

        raised = []
        gc.callbacks.append(raise_signal_once)
        gc.set_threshold(1)  # a collection, with the Ctrl-C, at an allocation early in `main`
        cli.main(["mmjax", "models"])
        """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip() == "mmjax: interrupted" and done.stdout == ""  # `models` never listed anything


def test_the_saved_config_is_never_seen_half_written(tmp_path, monkeypatch):
    """Process 0 writes config.json while the other processes of a multi-host run read it (a two-process
    run once failed with JSONDecodeError there): a reader in the middle of a save sees the previous config."""
    from mmjax.train.workdir import load_config, save_config

    first, second = clip_tiny.get_config("test"), clip_tiny.get_config("test")
    second.total_steps = 99
    save_config(str(tmp_path), first)
    seen_during_save = []
    to_json = ml_collections.ConfigDict.to_json

    def reading_while_writing(self, *args, **kwargs):
        seen_during_save.append(load_config(str(tmp_path)).total_steps)
        return to_json(self, *args, **kwargs)

    monkeypatch.setattr(ml_collections.ConfigDict, "to_json", reading_while_writing)
    save_config(str(tmp_path), second)
    monkeypatch.undo()
    assert seen_during_save == [first.total_steps] and load_config(str(tmp_path)).total_steps == 99
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_a_resume_may_name_the_runs_tokenizer_file_by_another_path_but_not_another_tokenizer(tmp_path):
    from mmjax.train.loop import _same_tokenizer_file

    (tmp_path / "run").mkdir()
    Tokenizer.for_synthetic(8).save(str(tmp_path / "run" / "tokenizer.json"))  # the run's copy, re-serialised
    Tokenizer.for_synthetic(8).save(str(tmp_path / "same.json"))
    Tokenizer.for_synthetic(16).save(str(tmp_path / "other.json"))
    run = str(tmp_path / "run")
    assert _same_tokenizer_file(run, "tok.json", str(tmp_path / "same.json"))
    assert not _same_tokenizer_file(run, "tok.json", str(tmp_path / "other.json"))
    assert not _same_tokenizer_file(run, "tok.json", str(tmp_path / "missing.json"))
    assert not _same_tokenizer_file(run, "", str(tmp_path / "same.json"))  # the synthetic words → a file
    assert not _same_tokenizer_file(run, "tok.json", "clip-bpe")


def test_a_diverged_run_stops_in_one_line_before_it_saves_nan_parameters(tmp_path):
    """With NaN parameters the run used to go on to its end, checkpoint them, and evaluate to 100 % accuracy."""
    config = clip_tiny.get_config("test")
    config.optim.learning_rate, config.log_every, config.checkpoint_every = 1e30, 1, 2
    with pytest.raises(ValueError, match=r"^training diverged at step (\d+) \((loss|grad_norm) nan.*\); (the last "
                                         r"checkpoint, step \d+, is kept, but its parameters may already be far "
                                         r"off|no checkpoint was saved)\. Lower config.optim.learning_rate.*in a new "
                                         r"--workdir$") as error:
        train(config, str(tmp_path))
    diverged = int(re.search(r"step (\d+)", str(error.value)).group(1))
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert logged[-1]["step"] == diverged and not math.isfinite(logged[-1]["loss"] + logged[-1]["grad_norm"])
    assert all(math.isfinite(line["loss"]) for line in logged[:-1])
    saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) if os.path.isdir(tmp_path / "checkpoints") \
        else []
    assert all(step < diverged for step in saved)


def test_a_workdir_in_use_is_refused_and_config_json_follows_the_checkpoints(tmp_path):
    """Two runs on one workdir wrote over each other's checkpoints (Orbax tracebacks, lost steps); a resumed run
    that stopped before its first checkpoint left its own config.json, which the next resume compared against."""
    from mmjax.train.workdir import workdir_lock

    config = clip_tiny.get_config("test")
    train(config, str(tmp_path), stop_after=3)
    with workdir_lock(str(tmp_path)):  # as another `mmjax train` holds it
        with pytest.raises(ConfigError, match=rf"is being trained by another process \(pid {os.getpid()}\); wait "
                                              r"for it, or use another --workdir$"):
            train(config, str(tmp_path))
    saved = (tmp_path / "config.json").read_text()
    diverging = clip_tiny.get_config("test")
    diverging.optim.learning_rate, diverging.log_every = 1e30, 1
    with pytest.raises(ValueError, match="training diverged"):
        train(diverging, str(tmp_path))
    assert (tmp_path / "config.json").read_text() == saved  # no checkpoint of that run: not its config
    train(config, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == config.total_steps


def test_the_directories_made_for_a_run_refused_in_its_lock_are_removed_and_its_error_kept(tmp_path, monkeypatch):
    """A refused run left its new workdir (and parents) behind; a removal that failed (NFS keeps a removed open
    file as .nfsXXXX) replaced the run's error by an OSError."""
    import errno

    from mmjax.train import workdir

    with pytest.raises(KeyError, match="refused"):
        with workdir.workdir_lock(str(tmp_path / "new" / "parent" / "run")):
            raise KeyError("refused")
    assert os.listdir(tmp_path) == []
    with workdir.workdir_lock(str(tmp_path / "used")):  # a run that wrote something keeps its workdir
        (tmp_path / "used" / "metrics.jsonl").write_text("")
    with pytest.raises(KeyError):
        with workdir.workdir_lock(str(tmp_path / "used")):
            raise KeyError("refused")
    assert sorted(os.listdir(tmp_path / "used")) == [".lock", "metrics.jsonl"]

    def not_empty(path):
        raise OSError(errno.ENOTEMPTY, "Directory not empty", path)

    monkeypatch.setattr(workdir.os, "rmdir", not_empty)
    with pytest.raises(KeyError, match="refused"):
        with workdir.workdir_lock(str(tmp_path / "nfs")):
            raise KeyError("refused")


def test_a_workdir_that_cannot_be_locked_trains_with_a_warning(tmp_path, monkeypatch, capsys):
    import errno

    from mmjax.train import workdir

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(workdir.fcntl, "flock", no_locks)
    with workdir.workdir_lock(str(tmp_path)):
        pass
    assert capsys.readouterr().err == (f"mmjax: warning: cannot lock {tmp_path}/.lock (No locks available): a second "
                                       f"run on this workdir would not be noticed\n")


def test_a_checkpoint_that_cannot_be_written_is_one_line_naming_its_step(tmp_path, monkeypatch):
    """A full disk: Orbax's save threads each logged a traceback (350 lines), then the raw TensorStore error."""
    import logging

    from mmjax.train.checkpoint import CheckpointError, Checkpoints

    checkpoints = Checkpoints(str(tmp_path))
    checkpoints._saving = 12

    def fail():
        raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "12.orbax-checkpoint-tmp/_sharding"\nmore')

    monkeypatch.setattr(checkpoints.manager, "wait_until_finished", fail)
    with pytest.raises(CheckpointError, match=rf"^checkpoint 12 could not be written to {tmp_path}/checkpoints "
                                              r"\(RESOURCE_EXHAUSTED: Error writing local file .*_sharding\"\); none "
                                              r"was written$"):
        checkpoints.wait()
    quiet = checkpoints._quiet
    orbax_report = logging.LogRecord("absl", logging.ERROR, "/x/orbax/checkpoint/_src/futures/future.py", 387,
                                     "_SignalingThread.run() raised an exception", None, None)
    other = logging.LogRecord("absl", logging.ERROR, "/x/grain/_src/python/data_loader.py", 1, "worker failed",
                              None, None)
    assert quiet in logging.getLogger("absl").filters and not quiet.filter(orbax_report) and quiet.filter(other)
    monkeypatch.undo()
    checkpoints.close()
    assert quiet not in logging.getLogger("absl").filters


def test_a_first_step_that_is_logged_is_timed_without_compiling(tmp_path):
    """With log_every=1 (or a resume whose first step is a log step) step 1 logged the compile time as its step
    time: 5.4 s and 3 examples/s, against 0.01 s a step after it."""
    config = clip_tiny.get_config("test")
    config.log_every, config.total_steps = 1, 3
    train(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    first = records[0]
    assert first["step"] == 1 and first["step_time_s"] < first["first_step_s"] / 5
    assert first["examples_per_s"] == pytest.approx(config.batch_size / first["step_time_s"])


def test_sigterm_saves_the_step_reached_and_the_resumed_run_ends_with_the_uninterrupted_parameters(tmp_path,
                                                                                                    monkeypatch):
    """A preemption notice (SIGTERM) killed the run and lost every step since its last checkpoint. It now saves
    the step it has reached and stops; the same command resumes from there."""
    import signal

    import mmjax.train.loop as loop
    from mmjax.train.preemption import Preempted

    config = clip_tiny.get_config("test")
    config.total_steps, config.checkpoint_every = 10, 100  # no checkpoint but the last one of its own
    straight = train(config, str(tmp_path / "straight"))
    write = loop.MetricsWriter.write

    def notice_at_step_4(self, step, metrics):
        write(self, step, metrics)
        if step == 4:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(loop.MetricsWriter, "write", notice_at_step_4)
    with pytest.raises(Preempted, match=r"^stopped by SIGTERM \(a preemption notice\) at step 4, saved as "
                                        r".*preempted/checkpoints/4: run the same command to resume from it$"):
        train(config, str(tmp_path / "preempted"))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler lives as long as the run
    assert sorted(os.listdir(tmp_path / "preempted" / "checkpoints")) == ["4"]
    monkeypatch.undo()
    resumed = train(config, str(tmp_path / "preempted"))
    assert int(resumed.step) == config.total_steps
    jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)
    assert _logged_steps(tmp_path / "preempted") == [2, 4, 6, 8, 10]

    def notice_at_the_last_step(self, step, metrics):  # the run is complete: it finishes as usual
        write(self, step, metrics)
        if step == config.total_steps:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(loop.MetricsWriter, "write", notice_at_the_last_step)
    assert int(train(config, str(tmp_path / "last")).step) == config.total_steps


class FakePreemptionService:
    """JAX's preemption sync protocol as `multihost_utils.reached_preemption_sync_point` documents it: a process
    reports every step; once a notice has arrived, the safe step is the one after the largest step reported."""

    def __init__(self):
        self.largest, self.safe, self.reported = 0, None, []

    def notify(self):
        self.safe = self.largest + 1

    def reached(self, step_id):
        self.reported.append(step_id)
        self.largest = max(self.largest, step_id)
        return step_id == self.safe


def test_a_second_run_in_the_same_process_stops_at_the_step_after_a_preemption_notice(monkeypatch):
    """JAX's service never forgets the largest step it was told. A second `train()` in the same process counted
    from 1 again, so after a first run of 100 steps a notice was due at the second run's step 101: a run of 5
    steps never saw it and was killed at the end of the grace period."""
    import mmjax.train.preemption as preemption

    service = FakePreemptionService()
    monkeypatch.setattr(preemption.jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(preemption.multihost_utils, "reached_preemption_sync_point", service.reached)
    with preemption.PreemptionNotice() as notice:
        assert not any(notice.reached(steps_taken) for steps_taken in range(1, 101))
    stopped_at = None
    with preemption.PreemptionNotice() as notice:
        for steps_taken in range(1, 6):
            if notice.reached(steps_taken):
                stopped_at = steps_taken
                break
            if steps_taken == 2:
                service.notify()
    assert stopped_at == 3
    assert service.reported == list(range(service.reported[0], service.reported[0] + 103))  # one count, no repeats


def test_a_preemption_notice_at_an_evaluation_step_saves_the_checkpoint_before_evaluating(tmp_path, monkeypatch):
    """The evaluation due at the step a SIGTERM stopped ran first, and a grace period that ended during it lost
    the checkpoint; now the checkpoint is on disk when the evaluation starts, and the evaluation is still recorded."""
    import signal

    import mmjax.train.loop as loop
    from mmjax.train.preemption import Preempted

    config = clip_tiny.get_config("test")
    config.total_steps, config.checkpoint_every, config.log_every = 8, 100, 2
    config.eval.every, config.eval.benchmarks = 4, ("synthetic",)
    workdir = tmp_path / "run"
    write, run = loop.MetricsWriter.write, loop.PeriodicEval.run
    checkpoints_at_evaluation = []

    def notice_at_step_4(self, step, metrics):
        write(self, step, metrics)
        if step == 4:
            signal.raise_signal(signal.SIGTERM)

    def recording_run(self, params):
        checkpoints_at_evaluation.append(sorted(os.listdir(workdir / "checkpoints")))
        return run(self, params)

    monkeypatch.setattr(loop.MetricsWriter, "write", notice_at_step_4)
    monkeypatch.setattr(loop.PeriodicEval, "run", recording_run)
    with pytest.raises(Preempted, match="at step 4"):
        train(config, str(workdir))
    assert checkpoints_at_evaluation == [["4"]]
    with open(workdir / "eval_metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [4]


def test_a_skip_log_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    """`2` (a cut `25 shard-…` line) was kept, and the resumed run's next line was glued onto it: `222 shard-…`."""
    from mmjax.data.skips import SkipMonitor

    log = tmp_path / "skipped-process0.txt"
    log.write_text("10 shard-00000.array_record:3 truncated_image\n20 shard-00000.array_record:9 empty_caption\n2")
    SkipMonitor(object(), str(tmp_path), 0.5, 10).resume_at(20)
    assert log.read_text() == ("10 shard-00000.array_record:3 truncated_image\n"
                               "20 shard-00000.array_record:9 empty_caption\n")


def test_the_progress_bar_shows_the_logged_rates_and_ends_before_the_closing_line(tmp_path, monkeypatch):
    """On a terminal the bar showed only loss, learning rate and scale, and the closing line was printed onto the
    bar, which was drawn again after it."""
    import mmjax.train.loop as loop
    from mmjax.train.metrics import MetricsWriter

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    (tmp_path / "bar").mkdir()
    writer = MetricsWriter(str(tmp_path / "bar"), 10, 0)
    writer.write(2, {"loss": 1.5, "learning_rate": 1e-3, "grad_norm": 2.0, "scale": 14.3, "logit_bias": -10.0,
                     "examples_per_s": 1585.0, "step_time_s": 0.16, "data_wait_s": 0.01, "skipped_fraction": 0.0})
    assert sorted(writer.progress.postfix.split(", ")) == sorted(
        ["loss=1.5", "learning_rate=0.001", "grad_norm=2", "scale=14.3", "logit_bias=-10", "examples_per_s=1585",
         "step_time_s=0.16", "skipped_fraction=0"])
    writer.close()
    writer.close()  # the loop closes it, then its cleanup does: once is done

    events = []
    close, closing_line = loop.MetricsWriter.close, loop._closing_line
    monkeypatch.setattr(loop.MetricsWriter, "close", lambda self: (events.append("bar closed"), close(self)))
    monkeypatch.setattr(loop, "_closing_line", lambda *args: (events.append("closing line"), closing_line(*args))[1])
    train(clip_tiny.get_config("test"), str(tmp_path / "run"))
    assert events.index("bar closed") < events.index("closing line")


def test_the_latest_saved_step_is_read_from_step_directories_only(tmp_path):
    """Orbax's `checkpoint_steps` reads any name ending in `_<digits>` as a step: `backup_2000` was restored as step
    2000 ("not found") when the checkpoint was found without a manager. Unfinished saves are not steps either."""
    from mmjax.train.checkpoint import has_checkpoint, latest_saved_step

    assert latest_saved_step(str(tmp_path)) is None and not has_checkpoint(str(tmp_path))
    for name in ("500", "backup_2000", "1500.orbax-checkpoint-tmp-1234"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    assert latest_saved_step(str(tmp_path)) == 500 and has_checkpoint(str(tmp_path))
