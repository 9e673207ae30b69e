"""Training FLAVA with `mmjax train` (`config.loss="flava"`): sharded steps equal a plain single-device loop,
an exact resume, evaluation during training, and one-line refusals."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mmjax.models as models
from mmjax.commands.checkpoint_source import load_workdir
from mmjax.data import Tokenizer
from mmjax.data.transforms import normalize_images
from mmjax.eval import evaluate_synthetic
from mmjax.losses import CLIP_MAX_SCALE
from mmjax.parallel import make_mesh
from mmjax.pretrained import load_pretrained
from mmjax.train.config import ConfigError, validate
from mmjax.train.loop import check_tokenizer, train
from mmjax.train.optim import make_optimizer
from mmjax.train.step import make_train_step
from test_data_train import REAL_CAPTIONS, write_pairs
from test_train import _batches, sharded_params

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import flava_captions  # noqa: E402
import flava_tiny  # noqa: E402

MEAN_STD = (0.5,) * 3


def _reference(config, batches):
    """A plain loop written out from the FLAVA objective: the caption lengths at the end-of-text token, the
    step's key `fold_in(key(seed), step)`, AdamW, OpenCLIP's clamp of the logit scale."""
    model = models.Flava(models.get_config(config.model))
    eot = Tokenizer.for_synthetic(model.config.text.context_length).eot_id
    tx = make_optimizer(config.optim, config.total_steps)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(config.seed), *models.example_inputs(model.config)))["params"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch, number):
        lengths = jnp.argmax(batch["text"] == eot, axis=1) + 1
        images = normalize_images(batch["image"], MEAN_STD, MEAN_STD)
        key = jax.random.fold_in(jax.random.key(config.seed), number)
        grads = jax.grad(lambda p: model.apply({"params": p}, images, batch["text"], lengths, key,
                                               method="losses")["total"])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0, math.log(CLIP_MAX_SCALE))}, opt_state

    for number, batch in enumerate(batches):
        params, opt_state = step(params, opt_state, batch, number)
    return params


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_sharded_flava_steps_equal_a_plain_single_device_loop(accum_steps):
    """With `accum_steps=2` (`mmjax.train.flava_accumulation`) each micro-batch's rows mine their hard negatives
    among the other's too, and draw the masks the whole batch draws."""
    config = flava_tiny.get_config("test")
    batches = _batches(config, 3)
    want = _reference(config, batches)
    for shape in [(8, 1, 1), (2, 2, 2)]:
        got, metrics = sharded_params(config, batches, make_mesh(*shape, devices=jax.devices()[:math.prod(shape)]),
                                      accum_steps=accum_steps)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), got, want)
    parts = [float(metrics[f"loss_{name}"]) for name in ("contrastive", "itm", "mlm", "mim", "mmm")]
    assert float(metrics["loss"]) == pytest.approx(sum(parts), rel=1e-6) and min(parts) > 0


def test_a_resumed_flava_run_ends_with_the_uninterrupted_parameters_and_evaluates(tmp_path):
    config = flava_tiny.get_config("test")
    config.eval.benchmarks = ("synthetic",)
    straight = train(config, str(tmp_path / "straight"))
    train(config, str(tmp_path / "resumed"), stop_after=3)
    resumed = train(config, str(tmp_path / "resumed"))
    jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)
    with open(tmp_path / "straight" / "eval_metrics.jsonl") as f:
        evaluation = json.loads(f.readline())
    assert evaluation["step"] == config.total_steps
    # what `mmjax eval` computes from the checkpoint of that step
    encoder, trained = load_workdir(str(tmp_path / "straight"))
    want = evaluate_synthetic(encoder.encode_images, encoder.encode_texts, seed=config.data.seed,
                              image_size=trained.model.config.vision.image_size, num_heldout=config.eval.num_heldout,
                              num_retrieval=config.eval.num_retrieval, batch_size=config.eval.batch_size)
    for name in ("acc1", "acc5", "image_retrieval_recall@1", "text_retrieval_recall@5"):
        assert evaluation[f"synthetic/{name}"] == pytest.approx(want[name], abs=1e-9), name
    with open(tmp_path / "straight" / "metrics.jsonl") as f:
        assert {"loss_itm", "loss_mim"} <= set(json.loads(f.readline()))
    with pytest.raises(ValueError, match="holds a FLAVA run .flava-test.: loading and converting handle CLIP"):
        load_pretrained(str(tmp_path / "straight"))


def test_flava_trains_on_converted_captions_with_clip_bpe_and_its_own_mask_id(tmp_path):
    """configs/flava_captions.py: ArrayRecord shards, OpenCLIP's BPE (pad 0, 49 408 ids) and [MASK] = 49 408."""
    write_pairs(tmp_path / "data", 50, pool=REAL_CAPTIONS)
    config = flava_captions.get_config("test")
    config.data.sources = (str(tmp_path / "data"),)
    model_config = models.get_config(config.model)
    assert model_config.mask_token_id == 49_408 == model_config.text.vocab_size - 1
    state = train(config, str(tmp_path / "run"))
    assert int(state.step) == config.total_steps
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        last = [json.loads(line) for line in f][-1]
    assert all(math.isfinite(last[f"loss_{name}"]) and last[f"loss_{name}"] > 0 for name in ("mlm", "mmm", "itm"))


@pytest.mark.parametrize("changes, message", [
    (dict(model="clip-test"), r"config.loss='flava' needs a FLAVA model \(flava-test, flava-test-bpe, flava-tiny, "
     r"flava-tiny-bpe\); 'clip-test'"),
    (dict(loss="clip"), "config.model='flava-test' is a FLAVA model: train it with config.loss='flava'"),
    (dict(multi_positive=True), "config.multi_positive=True is for the two-tower losses"),
])
def test_flava_configs_that_cannot_work_are_one_line_errors(changes, message):
    config = flava_tiny.get_config("test")
    config.unlock().update(changes)
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_a_tokenizer_that_emits_the_mask_id_or_pads_otherwise_is_refused():
    model_config = models.get_config("flava-test")  # vocabulary 64, [MASK] 63, pad 0
    check_tokenizer(Tokenizer.for_synthetic(8), model_config, "flava-test")
    sixty_four = Tokenizer.from_corpus([" ".join(f"w{i}" for i in range(60))], 8)  # + pad, unk, start, end
    with pytest.raises(ConfigError, match="the tokenizer's 64 ids include model flava-test's .MASK. id 63"):
        check_tokenizer(sixty_four, model_config, "flava-test")
    with pytest.raises(ConfigError, match="the tokenizer pads with id 0 but model flava-test reads its captions' "
                                          "lengths from pad id 5"):
        check_tokenizer(Tokenizer.for_synthetic(8), dataclasses.replace(model_config, pad_id=5), "flava-test")


def test_the_benchmarks_refuse_a_flava_model_in_one_line():
    from mmjax.commands.bench import _two_tower_model
    assert _two_tower_model("clip-test") == "clip-test"
    with pytest.raises(ValueError, match="--model=flava-tiny is a FLAVA model; the benchmarks time the two-tower"):
        _two_tower_model("flava-tiny")
    done = subprocess.run([sys.executable, "scripts/check_attention.py", "--model", "flava-test"], capture_output=True,
                          text=True, timeout=120, cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "check_attention.py: error: --model=flava-test is a FLAVA model; check_attention.py checks the two-tower "
        "models (CLIP, SigLIP)")


def test_the_flava_step_refuses_what_its_objective_cannot_do():
    model, tx = models.create_model("flava-test"), optax.sgd(0.1)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="loss='flava' takes multi_positive=False"):
        make_train_step(model, tx, optax.constant_schedule(0.1), mesh, loss="flava", multi_positive=True,
                        image_mean=MEAN_STD, image_std=MEAN_STD)
    for accum_steps in (0, 2.0):  # was a one-pass step, and a TypeError from deep inside the reshape
        with pytest.raises(ValueError, match=f"accum_steps={accum_steps} must be a positive int"):
            make_train_step(model, tx, optax.constant_schedule(0.1), mesh, loss="flava", multi_positive=False,
                            image_mean=MEAN_STD, image_std=MEAN_STD, accum_steps=accum_steps)
