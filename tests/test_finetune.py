"""`mmjax train` from a pretrained checkpoint (`config.model` names it): the first step's loss is the checkpoint's own
loss on the first batch, written out in NumPy; the workdir resumes, evaluates and converts without the checkpoint;
every kind of tokenizer comes back from the workdir as it was; bad configs stop in one line before anything
compiles."""

import io
import json
import math
import os
import re
import shutil
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from test_benchmarks import naive_zero_shot_metrics
from test_cli import _assert_one_line_error, mmjax
from test_eval_pretrained import CLASSNAMES, LABELS, TEMPLATES
from test_eval_pretrained import benchmark_dir as wds_benchmark  # noqa: F401 - a fixture

from mmjax.convert import hf_clip, hf_siglip
from mmjax.convert.layout import scan, unscan
from mmjax.data.clip_bpe import ClipBpeTokenizer
from mmjax.data.pipeline import config_train_dataset
from mmjax.data.preprocess import ImagePreprocess
from mmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer
from mmjax.data.tokenizer_record import load_tokenizer, save_tokenizer
from mmjax.data.tokenizers import Tokenizer
from mmjax.models import TwoTower, get_config
from mmjax.parallel import make_mesh
from mmjax.pretrained import Pretrained, load_pretrained
from mmjax.train import train
from mmjax.train.config import ConfigError, validate
from mmjax.train.finetune import check_before_download
from mmjax.train.optim import make_optimizer
from mmjax.train.wise_ft import wise_ft
from mmjax.train.workdir import load_config, load_trained, unknown_words_warning

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
sys.path.insert(0, CONFIGS)
import finetune  # noqa: E402
TEXTS = ["A Photo of a CAT &amp; a dog", "  tabs\tand   spaces ", "ünïcödé ſ words", "<|endoftext|> typed", ""]


def _finetune_config(model: str, **overrides):
    config = finetune.get_config("test")
    config.model = model
    config.data.name = "synthetic"
    config.update(overrides)
    return config


def _random_params(name: str, logit_scale: float, seed: int) -> dict:
    config = get_config(name)
    size, length = config.vision.image_size, config.text.context_length
    variables = nn.unbox(jax.jit(lambda key: TwoTower(config).init(
        key, image=np.zeros((1, size, size, 3), np.float32), text=np.zeros((1, length), np.int32)))(
        jax.random.key(seed)))
    params = jax.tree.map(np.asarray, variables["params"])
    params["logit_scale"] = np.float32(logit_scale)  # not an init value: the run must have read it
    return params


def write_clip_dir(path: str) -> str:
    """Writes a transformers CLIP directory (random weights, CLIP's BPE, OpenAI's mean and std, a bicubic centre
    crop) at `path`; returns `path`."""
    config = get_config("clip-test-bpe")
    hf_clip.export(Pretrained(config, _random_params("clip-test-bpe", math.log(30.0), seed=5),
                              ClipBpeTokenizer.open_clip(context_length=config.text.context_length),
                              ImagePreprocess(config.vision.image_size)), path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_clip_dir(str(tmp_path_factory.mktemp("hf_clip")))


@pytest.fixture(scope="module")
def spiece_model():
    """A T5-style SentencePiece model's bytes (pad 0, `</s>` 1, `<unk>` 2)."""
    corpus = [f"a photo of a {word} {colour}" for word in ("cat", "dog", "circle", "square", "star", "bird")
              for colour in ("red", "green", "blue", "small", "large")] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=28,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, num_threads=1, minloglevel=2)
    return model.getvalue()


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory, spiece_model):
    """A transformers SigLIP directory with a SentencePiece tokenizer and a squash resize."""
    config = get_config("siglip-test")
    path = str(tmp_path_factory.mktemp("hf_siglip"))
    params = _random_params("siglip-test", math.log(7.0), seed=6)
    params["logit_bias"] = np.float32(-3.0)
    tokenizer = SentencePieceTokenizer(spiece_model, context_length=config.text.context_length)
    hf_siglip.export(Pretrained(config, params, tokenizer, ImagePreprocess(
        config.vision.image_size, (0.5,) * 3, (0.5,) * 3, mode="squash", interpolation="bilinear")), path)
    return path


def _naive_first_loss(pretrained: Pretrained, config, loss: str) -> float:
    """The loss of the checkpoint's parameters on the run's first batch, in NumPy: the batch drawn again from the
    run's data config, normalised with the checkpoint's mean and std, the towers applied with the checkpoint's own
    parameters."""
    batch = next(iter(config_train_dataset(config.data, config.batch_size, pretrained.config.vision.image_size,
                                           pretrained.tokenizer)))
    mean, std = np.asarray(pretrained.preprocess.mean), np.asarray(pretrained.preprocess.std)
    images = (np.asarray(batch["image"], np.float32) / 255.0 - mean) / std
    model, params = pretrained.model, pretrained.params
    image_emb = np.asarray(model.apply({"params": params}, images, method=TwoTower.encode_image), np.float64)
    text_emb = np.asarray(model.apply({"params": params}, batch["text"], method=TwoTower.encode_text), np.float64)
    image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    cosines = image_emb @ text_emb.T
    if loss == "sigmoid":
        logits = math.exp(pretrained.logit_scale) * cosines + pretrained.logit_bias
        signs = 2 * np.eye(len(logits)) - 1
        return float(np.sum(np.log1p(np.exp(-signs * logits))) / len(logits))
    logits = min(math.exp(pretrained.logit_scale), 100.0) * cosines

    def cross_entropy(rows):
        rows = rows - rows.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(rows).sum(axis=1)) - np.diag(rows)))

    return (cross_entropy(logits) + cross_entropy(logits.T)) / 2


def _logged(workdir, step: int) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return next(row for row in map(json.loads, f) if row["step"] == step)


@pytest.fixture(scope="module")
def clip_run(clip_dir, tmp_path_factory):
    """Two steps fine-tuned from `clip_dir`: `(workdir, config)`."""
    config, workdir = _finetune_config(clip_dir, total_steps=2), str(tmp_path_factory.mktemp("clip_run"))
    train(config, workdir)
    return workdir, config


@pytest.mark.parametrize("image_size", [0, 24])
def test_the_first_step_trains_the_checkpoints_parameters_with_its_tokenizer_and_preprocessing(clip_dir, clip_run,
                                                                                            tmp_path, image_size):
    """At the checkpoint's 16 px, and at 24 px: a 3 × 3 patch grid, the position table interpolated from 2 × 2."""
    pretrained = load_pretrained(clip_dir, image_size=image_size or None)
    workdir, config = clip_run
    if image_size:
        config, workdir = _finetune_config(clip_dir, total_steps=2), str(tmp_path / "run")
        config.pretrained.image_size = image_size
        train(config, workdir, stop_after=1)
    assert _logged(workdir, 1)["loss"] == pytest.approx(_naive_first_loss(pretrained, config, "clip"), rel=1e-4)
    trained = load_trained(workdir)
    assert trained.config.data.image_mean == list(pretrained.preprocess.mean)  # the checkpoint's, not 0.5
    assert trained.preprocess == pretrained.preprocess and trained.model.config == pretrained.config
    assert isinstance(trained.tokenizer, ClipBpeTokenizer)
    np.testing.assert_array_equal(trained.tokenizer(TEXTS), pretrained.tokenizer(TEXTS))


@pytest.fixture(scope="module")
def siglip_run(siglip_dir, wds_benchmark, tmp_path_factory):  # noqa: F811 - the fixture
    """Two steps of the SigLIP with scanned layers, a grain worker, and the wds benchmark evaluated at the end; the
    loss is configs/finetune.py's "auto"."""
    config = _finetune_config(siglip_dir, total_steps=2)
    config.model_options.scan_layers = True
    config.data.num_workers = 1
    config.eval.benchmarks = (f"wds:{wds_benchmark[0]}",)
    workdir = str(tmp_path_factory.mktemp("siglip_run"))
    train(config, workdir)
    return workdir, config


def test_scanned_layers_start_from_the_checkpoint_too_and_a_siglip_trains_its_sigmoid_loss(siglip_dir, siglip_run):
    """The numbered layers are stacked for `scan_layers`; the SentencePiece tokenizer reaches the grain worker."""
    workdir, config = siglip_run
    pretrained = load_pretrained(siglip_dir)
    logged = _logged(workdir, 1)
    assert logged["loss"] == pytest.approx(_naive_first_loss(pretrained, config, "sigmoid"), rel=1e-4)
    assert logged["logit_bias"] == pytest.approx(-3.0)
    assert config.loss == "auto" and load_config(workdir).loss == "sigmoid"  # the checkpoint's own, recorded
    trained = load_trained(workdir)
    assert isinstance(trained.tokenizer, SentencePieceTokenizer) and trained.preprocess.mode == "squash"
    np.testing.assert_array_equal(trained.tokenizer(TEXTS), pretrained.tokenizer(TEXTS))


def test_a_finetuned_run_evaluates_with_the_checkpoints_own_resize(siglip_dir, siglip_run, wds_benchmark,  # noqa: F811
                                                                   tmp_path):
    """In training and in `mmjax eval`: the benchmark's images squashed as the SigLIP checkpoint squashes them (not
    the centre crop of a run trained from scratch), the metrics written out over the trained parameters."""
    workdir, _ = siglip_run
    root, images = wds_benchmark
    trained, checkpoint = load_trained(workdir), load_pretrained(siglip_dir)
    pixels = checkpoint.preprocess.batch(images)
    image_emb = np.asarray(trained.model.apply({"params": trained.params}, pixels, method=TwoTower.encode_image))

    def encode_text(texts):
        return np.asarray(trained.model.apply({"params": trained.params}, checkpoint.tokenizer(texts),
                                              method=TwoTower.encode_text))

    expected = naive_zero_shot_metrics(image_emb, encode_text, CLASSNAMES, TEMPLATES, np.array(LABELS))
    done = mmjax("eval", "--model", workdir, "--benchmark", f"wds:{root}", "--output", str(tmp_path / "eval.json"))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "eval.json") as f:
        after = json.load(f)["metrics"]
    with open(os.path.join(workdir, "eval_metrics.jsonl")) as f:
        during = json.loads(f.readline())
    for key, value in expected.items():
        assert after[key] == pytest.approx(value, abs=1e-6), key
        assert during[f"wds_{root.name}/{key}"] == pytest.approx(value, abs=1e-6), key


def test_a_finetuned_run_resumes_and_converts_without_the_checkpoint(clip_dir, tmp_path):
    source = str(tmp_path / "checkpoint")
    shutil.copytree(clip_dir, source)
    config = _finetune_config(source, total_steps=3)
    train(config, str(tmp_path / "straight"))
    train(config, str(tmp_path / "resumed"), stop_after=1)
    shutil.rmtree(source)  # the workdir holds all a resumed run needs
    train(config, str(tmp_path / "resumed"))
    straight, resumed = load_trained(str(tmp_path / "straight")), load_trained(str(tmp_path / "resumed"))
    assert resumed.step == 3
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(straight.params))

    exported = str(tmp_path / "exported")
    done = mmjax("convert", str(tmp_path / "resumed"), "--to", "hf", "--out", exported)
    assert done.returncode == 0, done.stderr
    reloaded, original = load_pretrained(exported), load_pretrained(clip_dir)
    assert reloaded.preprocess == original.preprocess and reloaded.config == original.config
    np.testing.assert_array_equal(reloaded.tokenizer(TEXTS), original.tokenizer(TEXTS))
    jax.tree.map(np.testing.assert_array_equal, reloaded.params, jax.device_get(resumed.params))
    assert reloaded.logit_scale != original.logit_scale  # three steps moved it

    # and the fine-tuned workdir is itself a checkpoint to start a new run from
    onwards = _finetune_config(str(tmp_path / "resumed"), total_steps=2)
    train(onwards, str(tmp_path / "onwards"), stop_after=1)
    assert _logged(tmp_path / "onwards", 1)["loss"] == pytest.approx(
        _naive_first_loss(reloaded, onwards, "clip"), rel=1e-4)


def test_bad_finetuning_configs_are_one_line_before_anything_compiles(clip_dir, siglip_dir, tmp_path):
    cases = [
        (_finetune_config(siglip_dir, loss="clip"), "config.loss='clip' leaves"),
        (_finetune_config(clip_dir, loss="sigmoid"), "config.loss='sigmoid' needs a model with a logit bias"),
        (_finetune_config("clip-tiy"), "config.model='clip-tiy' is neither a registered model"),
    ]
    with_tokenizer = _finetune_config(clip_dir)
    with_tokenizer.data.tokenizer = "clip-bpe"
    cases.append((with_tokenizer, "reads its own tokenizer's ids; leave data.tokenizer=''"))
    registered = _finetune_config("clip-test")
    registered.pretrained.weights = "w.safetensors"
    cases.append((registered, "config.pretrained.weights='w.safetensors' is for a pretrained config.model"))
    negative = _finetune_config(clip_dir)
    negative.pretrained.image_size = -1
    cases.append((negative, "config.pretrained.image_size=-1 must be ≥ 0"))
    for config, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            train(config, str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never")
    _assert_one_line_error(mmjax("train", "--config", os.path.join(CONFIGS, "finetune.py:test"), "--workdir",
                                 str(tmp_path / "never"), f"--config.model={tmp_path / 'missing'}",
                                 "--config.data.name=synthetic"),
                           f"config.model='{tmp_path / 'missing'}': there is no such checkpoint file or directory")


def test_an_hf_checkpoint_is_checked_from_its_config_files_before_its_weights_download(clip_dir, tmp_path, fake_hub):
    shutil.copytree(clip_dir, tmp_path / "hub" / "clip")
    sigmoid = _finetune_config("hf:fake/clip", loss="sigmoid")
    split = _finetune_config("hf:fake/clip")
    split.mesh.data, split.mesh.tensor = 1, 8
    for config, message in [(sigmoid, "config.loss='sigmoid' needs a model with a logit bias"),
                            (split, "mesh tensor=8 does not divide the vision tower's 2 heads")]:
        fake_hub.clear()
        with pytest.raises(ValueError, match=re.escape(message)):
            train(config, str(tmp_path / "never"))
        assert fake_hub == [["*.json"]]  # the weights were never asked for
    assert not os.path.exists(tmp_path / "never")
    fake_hub.clear()  # a run that can start passes, its own loss ("auto") at another image size
    fitting = _finetune_config("hf:fake/clip")
    fitting.pretrained.image_size = 24
    check_before_download(fitting, make_mesh(**fitting.mesh))
    assert fake_hub == [["*.json"]]


def test_a_busy_workdir_is_refused_before_the_checkpoint_is_loaded(clip_dir, tmp_path, monkeypatch):
    """The lock came after the load: a second run on a busy workdir read (an `hf:` source downloaded) the
    checkpoint before it was refused."""
    from mmjax.train import loop
    from mmjax.train.workdir import workdir_lock

    loaded = []
    monkeypatch.setattr(loop, "load_start", lambda config: loaded.append(config.model))
    with workdir_lock(str(tmp_path)):  # as another `mmjax train` holds it
        with pytest.raises(ConfigError, match=r"is being trained by another process"):
            train(_finetune_config(clip_dir), str(tmp_path))
    assert loaded == []


def test_a_resumed_run_names_its_checkpoint_as_it_likes_but_changes_nothing_it_started_from(clip_dir, tmp_path,
                                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(clip_dir, tmp_path / "clip_hf")
    train(_finetune_config("clip_hf", total_steps=4), "run", stop_after=1)
    bigger = _finetune_config(str(tmp_path / "clip_hf"), total_steps=4)
    bigger.pretrained.image_size = 24
    with pytest.raises(ConfigError, match="holds a run with pretrained.image_size=0, not 24"):
        train(bigger, "run")
    os.symlink(tmp_path / "clip_hf", tmp_path / "link")
    train(_finetune_config("link", total_steps=4), "run", stop_after=2)  # a link to the same place
    shutil.rmtree(tmp_path / "clip_hf")
    train(_finetune_config("clip_hf", total_steps=4), "run", stop_after=3)  # the name the run started with
    assert load_trained("run").step == 3
    train(_finetune_config(str(tmp_path / "clip_hf"), total_steps=4), "run")  # the same place spelt otherwise
    assert load_trained("run").step == 4
    with pytest.raises(ConfigError, match=f"holds a run with model='{tmp_path}/clip_hf', not '{tmp_path}/elsewhere'"):
        train(_finetune_config(str(tmp_path / "elsewhere"), total_steps=5), "run")


def test_a_registered_name_that_is_also_a_checkpoint_directory_is_refused(clip_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(clip_dir, tmp_path / "clip-test-bpe")
    with pytest.raises(ConfigError, match="config.model='clip-test-bpe' is both a registered model and a checkpoint "
                                          "directory here: write './clip-test-bpe'"):
        train(_finetune_config("clip-test-bpe"), "run")
    (tmp_path / "clip-test").mkdir()  # a directory that is no checkpoint (a workdir named after its model) is not
    validate(_finetune_config("clip-test"))


def test_unknown_words_are_warned_of_with_a_checkpoints_tokenizer_too(spiece_model):
    words = Tokenizer.for_synthetic(8)
    ids = words(["a tabby kitten asleep on a windowsill", "an espresso with foam"])
    warning = unknown_words_warning(words, ids, "", checkpoint="runs/shapes")
    assert warning.startswith("mmjax: warning: ") and "unknown to the tokenizer of runs/shapes" in warning
    assert "clip_captions" in unknown_words_warning(words, ids, "")
    spiece = SentencePieceTokenizer(spiece_model, context_length=8)
    assert unknown_words_warning(spiece, spiece(["zzz qqq"]), "", checkpoint="x") is None


@pytest.mark.parametrize("tokenizer, message", [
    ("x", "the tokenizer's kind 'x' is not one of"),
    ({"kind": "clip_bpe", "file": "tokenizer.json"}, "the clip_bpe tokenizer's description has no 'eot_token'"),
    ({"kind": "tokenizers", "file": None, "eot_token": "<|endoftext|>"},
     "the tokenizers tokenizer's 'file' is None, not a str"),
])
def test_a_damaged_record_of_the_checkpoint_is_one_line(clip_dir, clip_run, tmp_path, tokenizer, message):
    workdir = tmp_path / "run"
    shutil.copytree(clip_run[0], workdir)
    record = json.loads((workdir / "pretrained.json").read_text())
    (workdir / "pretrained.json").write_text(json.dumps({**record, "tokenizer": tokenizer}))
    with pytest.raises(ValueError, match=f"{workdir}/pretrained.json is damaged \\(ValueError: {message}"):
        load_trained(str(workdir))
    (workdir / "pretrained.json").write_text('{"source": "x"')
    with pytest.raises(ValueError, match=f"{workdir}/pretrained.json is damaged"):
        load_trained(str(workdir))
    (workdir / "pretrained.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{workdir}/pretrained.json is missing"):
        train(_finetune_config(clip_dir, total_steps=2), str(workdir))


@pytest.mark.parametrize("kind", ["open_clip_bpe", "transformers_bpe", "word_level", "sentencepiece"])
def test_every_kind_of_tokenizer_comes_back_from_its_record(kind, clip_dir, spiece_model, tmp_path):
    tokenizer = {
        "open_clip_bpe": lambda: ClipBpeTokenizer.open_clip(context_length=12, clean="whitespace"),
        "transformers_bpe": lambda: load_pretrained(clip_dir).tokenizer,
        "word_level": lambda: Tokenizer.from_corpus(["a cat", "a dog & a bird"], context_length=6),
        "sentencepiece": lambda: SentencePieceTokenizer(spiece_model, context_length=7, normalization="lowercase",
                                                        eot_token="</s>", pad_token="<pad>"),
    }[kind]()
    description = json.loads(json.dumps(save_tokenizer(tokenizer, str(tmp_path))))
    again = load_tokenizer(str(tmp_path), description)
    assert type(again) is type(tokenizer)
    assert (again.context_length, again.pad_id, again.eot_id, again.vocab_size) == (
        tokenizer.context_length, tokenizer.pad_id, tokenizer.eot_id, tokenizer.vocab_size)
    np.testing.assert_array_equal(again(TEXTS), tokenizer(TEXTS))


def test_scan_stacks_the_numbered_layers_that_unscan_splits():
    rng = np.random.default_rng(0)
    layer = lambda: {"ln_1": {"scale": rng.normal(size=3)}, "mlp": {"fc1": {"kernel": rng.normal(size=(3, 4))}}}
    numbered = {"encoder": {"layers_0": layer(), "layers_1": layer(), "layers_2": layer(), "ln": {"scale": np.ones(3)}},
                "logit_scale": np.float32(2.0)}
    stacked = scan(numbered)
    kernels = stacked["encoder"]["layers"]["mlp"]["fc1"]["kernel"]
    assert kernels.shape == (3, 3, 4) and set(stacked["encoder"]) == {"layers", "ln"}
    for i in range(3):
        np.testing.assert_array_equal(kernels[i], numbered["encoder"][f"layers_{i}"]["mlp"]["fc1"]["kernel"])
    jax.tree.map(np.testing.assert_array_equal, unscan(stacked), numbered)
    with pytest.raises(ValueError, match=r"layers \[0, 2\] are not numbered 0..1"):
        scan({"layers_0": layer(), "layers_2": layer()})


def test_lit_locks_the_image_tower_and_clips_and_stores_only_the_text_towers(clip_dir, tmp_path):
    """LiT ("locked-image tuning"): the image tower and projection stay the checkpoint's, bit for bit, on an FSDP
    mesh; the logged gradient norm is the text side's alone, from `jax.grad` of the CLIP loss written out; and the
    optimizer keeps moments for the trained parameters only."""
    lit = ("^image_encoder/", "^image_proj/")
    config = _finetune_config(clip_dir, total_steps=2)
    config.optim.frozen = lit
    config.mesh.fsdp = 2
    train(config, str(tmp_path / "run"))
    checkpoint, trained = load_pretrained(clip_dir), load_trained(str(tmp_path / "run"))
    params = jax.device_get(trained.params)
    for tower in ("image_encoder", "image_proj"):
        jax.tree.map(np.testing.assert_array_equal, params[tower], checkpoint.params[tower])
    assert not np.array_equal(params["text_proj"]["kernel"], checkpoint.params["text_proj"]["kernel"])

    batch = next(iter(config_train_dataset(config.data, config.batch_size, 16, checkpoint.tokenizer)))
    mean, std = np.asarray(checkpoint.preprocess.mean), np.asarray(checkpoint.preprocess.std)
    images = ((np.asarray(batch["image"], np.float32) / 255.0 - mean) / std).astype(np.float32)
    model = checkpoint.model

    def loss(p):
        image_emb = model.apply({"params": p}, images, method=TwoTower.encode_image)
        text_emb = model.apply({"params": p}, batch["text"], method=TwoTower.encode_text)
        image_emb = image_emb / jnp.linalg.norm(image_emb, axis=1, keepdims=True)
        text_emb = text_emb / jnp.linalg.norm(text_emb, axis=1, keepdims=True)
        logits = jnp.minimum(jnp.exp(p["logit_scale"]), 100.0) * image_emb @ text_emb.T
        ce = lambda rows: jnp.mean(jax.nn.logsumexp(rows, axis=1) - jnp.diag(rows))
        return (ce(logits) + ce(logits.T)) / 2

    grads = jax.grad(loss)(checkpoint.params)
    text_side = [grads[name] for name in ("text_encoder", "text_proj", "logit_scale")]
    text_norm = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(text_side))))
    assert _logged(tmp_path / "run", 1)["grad_norm"] == pytest.approx(text_norm, rel=1e-4)

    tx = make_optimizer(config.optim, config.total_steps)
    moments = sum(np.size(leaf) for leaf in jax.tree.leaves(tx.init(checkpoint.params)) if np.ndim(leaf))
    trained_size = sum(np.size(leaf) for name in ("text_encoder", "text_proj", "logit_scale")
                       for leaf in jax.tree.leaves(checkpoint.params[name]) if np.ndim(leaf))
    assert moments == 2 * trained_size  # Adam's mu and nu; the frozen tower has none


def test_a_frozen_logit_scale_past_the_clamp_stays_as_the_checkpoint_has_it(tmp_path):
    """OpenAI's checkpoints store logit_scale 4.6052, past float32 log 100, where the step clamps a trained one."""
    config = get_config("clip-test-bpe")
    path = str(tmp_path / "openai_like")
    hf_clip.export(Pretrained(config, _random_params("clip-test-bpe", 4.6052, seed=5),
                              ClipBpeTokenizer.open_clip(context_length=config.text.context_length),
                              ImagePreprocess(config.vision.image_size)), path)
    frozen = _finetune_config(path, total_steps=2)
    frozen.optim.frozen = ("^logit_scale$",)
    train(frozen, str(tmp_path / "run"))
    assert float(load_trained(str(tmp_path / "run")).params["logit_scale"]) == np.float32(4.6052)


def test_frozen_patterns_that_match_nothing_or_everything_are_one_line(tmp_path):
    config = _finetune_config("clip-test")
    config.optim.frozen = ("^image_encoders/",)
    with pytest.raises(ConfigError, match="config.optim.frozen: '\\^image_encoders/' matches no parameter of "
                                          "clip-test \\(paths such as 'image_encoder/cls/token'; top level: "
                                          "image_encoder, image_proj, logit_scale, text_encoder, text_proj\\)"):
        train(config, str(tmp_path / "run"))
    config.optim.frozen = ("encoder/", "proj/", "logit")
    with pytest.raises(ConfigError, match="freezes every parameter of clip-test: nothing would train"):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before its config.json and tokenizer.json were written

    config.optim.frozen = ()  # a run written before mmjax stored optim.frozen trained every parameter
    train(config, str(tmp_path / "run"), stop_after=1)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    del saved["optim"]["frozen"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    config.optim.frozen = ("^image_encoder/",)
    with pytest.raises(ConfigError, match=re.escape("holds a run with optim.frozen=(), not ('^image_encoder/',)")):
        train(config, str(tmp_path / "run"))


def test_wise_ft_writes_the_checkpoint_and_the_fine_tuned_weights_mixed(clip_dir, clip_run, tmp_path):
    run = clip_run[0]
    out = str(tmp_path / "wise")
    done = mmjax("convert", run, "--to", "hf", "--out", out, "--wise_ft", "0.25")
    assert done.returncode == 0, done.stderr
    mixed, checkpoint = load_pretrained(out), load_pretrained(clip_dir)
    tuned = jax.device_get(load_trained(run).params)
    jax.tree.map(lambda m, a, b: np.testing.assert_allclose(m, 0.75 * a + 0.25 * b, rtol=1e-6, atol=1e-7),
                 mixed.params, checkpoint.params, tuned)
    assert not np.allclose(mixed.params["text_proj"]["kernel"], checkpoint.params["text_proj"]["kernel"])
    np.testing.assert_array_equal(mixed.tokenizer(TEXTS), checkpoint.tokenizer(TEXTS))
    assert mixed.preprocess == checkpoint.preprocess
    with pytest.raises(ValueError, match=f"{tmp_path} is not a run fine-tuned from a pretrained checkpoint"):
        wise_ft(str(tmp_path), 0.5)
    with pytest.raises(ValueError, match=r"WiSE-FT's alpha 1.5 must be in \[0, 1\]"):
        wise_ft(run, 1.5)
