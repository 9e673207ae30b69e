"""Training Flamingo to caption with `mmjax train` (`config.loss="captioning"`): sharded steps equal a plain loop
whose loss is written out with NumPy's indexing, an exact resume, `mmjax caption` writing what greedy decoding
writes, and one-line refusals."""

import functools
import io
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
from test_train import _batches, sharded_params

import mmjax.models as models
from mmjax.captioner import Captioner
from mmjax.data import Tokenizer, synthetic
from mmjax.eval.synthetic_captions import caption_metrics, named_attributes
from mmjax.models.flamingo import captioning_inputs
from mmjax.models.generation import generate
from mmjax.parallel import make_mesh
from mmjax.train.config import ConfigError, own_loss, validate
from mmjax.train.loop import check_tokenizer, train
from mmjax.train.optim import make_optimizer
from mmjax.train.step import make_train_step
from mmjax.train.workdir import load_trained

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import flamingo_tiny  # noqa: E402

MEAN_STD = (0.5,) * 3
ROOT = os.path.join(os.path.dirname(__file__), "..")


def _np_caption_loss(logits, text, eot):
    """The mean next-token cross-entropy of captions after their image's token, written out per row: the model
    read `[media, text[:-1]]`; position t predicts text[t] for each caption token t up to the end of text."""
    logits = np.asarray(logits, np.float64)
    total, count = 0.0, 0
    for row, tokens in zip(logits, np.asarray(text)):
        for t, token in enumerate(tokens):
            log_probs = row[t] - row[t].max() - np.log(np.exp(row[t] - row[t].max()).sum())
            total, count = total - log_probs[token], count + 1
            if token == eot:
                break
    return total / count


def _reference(config, batches, eot):
    """A plain unsharded loop: the logits of `[media, text[:, :-1]]`, the loss above, AdamW."""
    model = models.create_model(config.model)
    media = model.config.media_token_id
    tx = make_optimizer(config.optim, config.total_steps)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(config.seed), *models.example_inputs(model.config)))["params"]
    opt_state = tx.init(params)

    def logits_of(params, batch):
        images = (batch["image"].astype(jnp.float32) / 255 - 0.5) / 0.5
        ids = jnp.concatenate([jnp.full((len(batch["text"]), 1), media, jnp.int32), batch["text"][:, :-1]], axis=1)
        return model.apply({"params": params}, images[:, None], ids)

    def loss_fn(params, batch):
        log_probs = jax.nn.log_softmax(logits_of(params, batch))
        picked = jnp.take_along_axis(log_probs, batch["text"][..., None], axis=-1)[..., 0]
        ended = np.cumsum(batch["text"] == eot, axis=1) - (batch["text"] == eot)  # end of texts before t
        counted = ended == 0
        return -(picked * counted).sum() / counted.sum()

    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    losses = []
    for batch in batches:
        value, grads = grad_fn(params, batch)
        losses.append(float(value))
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(losses[0], _np_caption_loss(jax.jit(logits_of)(
        nn.unbox(jax.jit(model.init)(jax.random.key(config.seed), *models.example_inputs(model.config)))["params"],
        batches[0]), batches[0]["text"], eot), rtol=1e-5)
    return params, losses


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_sharded_captioning_steps_equal_a_plain_single_device_loop(accum_steps):
    """With `accum_steps=2` each micro-batch holds captions of other lengths than the other's: its sum is divided
    by the whole batch's token count, not averaged per micro-batch."""
    config = flamingo_tiny.get_config("test")
    eot = Tokenizer.for_synthetic(8).eot_id
    batches = [dict(batch, text=np.array(batch["text"])) for batch in _batches(config, 3)]
    assert (batches[0]["text"][:, -1] == eot).all()  # captions that fill the context: their last token counts too
    for batch in batches:  # a short caption, and one holding the padding's id as a word (OpenCLIP's "!")
        batch["text"][0, 3:] = [eot, 0, 0, 0, 0]
        batch["text"][1, 2] = 0
    want, losses = _reference(config, batches, eot)
    for shape in [(2, 2, 2)]:  # data, FSDP and tensor parallel at once
        got, metrics = sharded_params(config, batches, make_mesh(*shape, devices=jax.devices()[:math.prod(shape)]),
                                      eot_id=eot, accum_steps=accum_steps)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), got, want)
        assert float(metrics["loss"]) == pytest.approx(losses[-1], rel=1e-5)
        assert set(metrics) == {"loss", "grad_norm", "learning_rate"}


def test_a_caption_ends_at_its_end_of_text_whatever_pads_it():
    """OpenCLIP's BPE pads with id 0, the token "!": a "!" inside a caption is one of its tokens."""
    from mmjax.data.clip_bpe import ClipBpeTokenizer
    from mmjax.train.step import caption_tokens

    tokenizer = ClipBpeTokenizer.open_clip(context_length=10)
    text = tokenizer(["a!$ b", "hi"])
    np.testing.assert_array_equal(text[0], [49406, 320, 0, 259, 321, 49407, 0, 0, 0, 0])  # "!" is id 0 here
    np.testing.assert_array_equal(caption_tokens(jnp.asarray(text), 49407), [[1] * 6 + [0] * 4, [1] * 3 + [0] * 7])
    assert [tokenizer.decode(row) for row in text] == ["a !$ b", "hi"]


def test_captioning_inputs_put_the_image_token_first():
    text = np.array([[2, 7, 8, 3, 0, 0], [2, 5, 6, 7, 8, 3]], np.int32)
    np.testing.assert_array_equal(captioning_inputs(jnp.asarray(text), 9), [[9, 2, 7, 8, 3, 0], [9, 2, 5, 6, 7, 8]])


def test_a_resumed_flamingo_run_ends_with_the_uninterrupted_parameters_and_captions(tmp_path, capsys):
    config = flamingo_tiny.get_config("test")
    config.total_steps, config.optim.learning_rate = 12, 1e-2
    straight = train(config, str(tmp_path / "straight"))
    assert capsys.readouterr().out.strip().endswith(
        f"next: mmjax caption --model {tmp_path / 'straight'} IMAGE...")
    train(config, str(tmp_path / "resumed"), stop_after=6)
    resumed = train(config, str(tmp_path / "resumed"))
    jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)

    trained = load_trained(str(tmp_path / "straight"))
    tokenizer, model = trained.tokenizer, trained.model
    pixels = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    captioner = Captioner(model, trained.params, tokenizer, MEAN_STD, MEAN_STD, batch_size=2)
    got = captioner.caption(pixels, prompt="a small")
    # written out: [image, start, "a", "small"], greedy to the end of text, the words after the image token
    vocab = {i: w for w, i in tokenizer.backend.get_vocab().items()}
    prompt = [model.config.media_token_id, tokenizer.backend.token_to_id("<|startoftext|>"),
              tokenizer.backend.token_to_id("a"), tokenizer.backend.token_to_id("small")]
    buffer = np.zeros((3, 8), np.int32)
    buffer[:, :4] = prompt
    written = generate(model, trained.params, ((pixels / 255 - 0.5) / 0.5)[:, None].astype(np.float32), buffer,
                       np.full(3, 4), num_tokens=4, eos_id=tokenizer.eot_id)
    want = []
    for row in written:
        words = []
        for token in row[2:]:
            if token in (tokenizer.eot_id, 0):
                break
            words.append(vocab[int(token)])
        want.append(" ".join(words))
    assert got == want and all(caption.startswith("a small") for caption in got)


@pytest.fixture(scope="module")
def captioner_run(tmp_path_factory):
    """A flamingo-test workdir trained 30 steps: captions that name sizes."""
    run = tmp_path_factory.mktemp("captioner") / "run"
    config = flamingo_tiny.get_config("test")
    config.total_steps, config.checkpoint_every, config.optim.learning_rate = 30, 30, 1e-2
    train(config, str(run))
    return run


def test_a_captioner_splits_its_batches_over_the_devices_and_writes_what_one_device_writes(captioner_run):
    """11 images in batches of 5, each filled up to 8 rows over the 8 test devices, against one device: greedy
    and sampled (batch i draws with seed + i: the batches must be one device's)."""
    trained = load_trained(str(captioner_run))
    pixels = np.random.default_rng(2).integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)
    sharded = Captioner(trained.model, trained.params, trained.tokenizer, MEAN_STD, MEAN_STD, batch_size=5)
    assert len(sharded.params["resampler"]["latents"].sharding.device_set) == 8
    one_device = Captioner(trained.model, trained.params, trained.tokenizer, MEAN_STD, MEAN_STD, batch_size=5,
                           mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    got, want = sharded.caption(pixels, prompt="a"), one_device.caption(pixels, prompt="a")
    assert got == want and len(set(got)) > 1, got
    assert sharded.caption(pixels[:3], prompt="a") == want[:3]
    sample = dict(prompt="a", temperature=1.5, seed=1)
    assert sharded.caption(pixels, **sample) == one_device.caption(pixels, **sample) != got
    short = dict(prompt="a", num_tokens=2)  # where this model's beams and greedy captions differ
    beams = sharded.caption(pixels, num_beams=3, **short)
    assert beams == one_device.caption(pixels, num_beams=3, **short) != sharded.caption(pixels, **short), beams
    assert not any("<pad>" in caption for caption in beams)  # cut short by num_tokens: no padding words


def mmjax(*args):
    return subprocess.run([sys.executable, "-m", "mmjax.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_mmjax_caption_prints_each_image_and_refuses_other_runs_in_one_line(captioner_run, tmp_path):
    from PIL import Image
    from test_benchmarks import write_classification

    run = captioner_run
    rng = np.random.default_rng(1)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"image{i}.png"))
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")

    done = mmjax("caption", "--model", str(run), *paths)
    assert done.returncode == 0, done.stderr
    trained = load_trained(str(run))
    from mmjax.eval.images import load_images
    pixels, _ = load_images(paths, 16)
    captioner = Captioner(trained.model, trained.params, trained.tokenizer, MEAN_STD, MEAN_STD)
    assert done.stdout.splitlines() == [f"{path}\t{caption}" for path, caption in zip(paths, captioner.caption(pixels))]
    done = mmjax("caption", "--model", str(run), "--num_beams", "3", "--length_penalty", "0.5", "--prompt", "a",
                 "--num_tokens", "2", *paths)
    want = captioner.caption(pixels, "a", 2, num_beams=3, length_penalty=0.5)
    assert want != captioner.caption(pixels, "a", 2)  # the beams were searched
    assert done.stdout.splitlines() == [f"{path}\t{caption}" for path, caption in zip(paths, want)], done.stderr

    errors = {
        ("caption", "--model", str(run), "--num_beams", "3", "--temperature", "0.5", paths[0]):
            "--num_beams=3 chooses the likeliest captions, --temperature=0.5 samples them: give one of the two",
        ("eval", "--model", str(run), "--length_penalty", "0"):
            "--length_penalty=0.0 scores the captions of a beam search: add --num_beams (3, say)",
        ("eval", "--model", "hf:google/siglip-base-patch16-224", "--benchmark", "cifar10", "--num_beams", "3"):
            "--num_beams: for a Flamingo's captions; hf:google/siglip-base-patch16-224 is a model with embeddings",
        ("caption", "--model", str(run), str(tmp_path / "broken.png")):
            f"cannot read image {tmp_path / 'broken.png'}",
        ("caption", "--model", str(run), "--prompt", "a " * 10, paths[0]):
            "fills the model's 8-token context; shorten it",
        ("embed", "--model", str(run), "--images", str(tmp_path), "--out", str(tmp_path / "i.npz")):
            f"{run} holds a Flamingo run (flamingo-test), a captioner without image or text embeddings",
        ("caption", "--model", "hf:google/siglip-base-patch16-224", paths[0]):
            "mmjax caption takes a Flamingo training workdir (configs/flamingo_tiny.py); hf:google/siglip-base",
        ("eval", "--model", str(run), "--benchmark", "cifar10"):
            "cifar10 is a classification benchmark, without reference captions to score captions against",
        ("eval", "--model", str(run), "--benchmark", write_classification(tmp_path / "classes", [[0, 1]])):
            "is a classification benchmark, without reference captions to score captions against",
        ("eval", "--model", str(run), "--figure", str(tmp_path / "f.png")):
            "holds a Flamingo run, a captioner: --figure draws the retrievals of a model with embeddings",
        ("classify", "--model", str(run), "--labels", "a,b", paths[0]): "holds a Flamingo run",
        ("convert", str(run), "--to", "hf", "--out", str(tmp_path / "hf")): "holds a Flamingo run",
    }
    done = mmjax("caption", "--model", str(run), "--prompt", "A zebra, grazing", paths[0])
    assert done.returncode == 0 and done.stderr.strip() == (
        f"mmjax: warning: the tokenizer of {run} does not know the prompt's 'zebra', ',', 'grazing': the "
        f"model reads <unk> there")
    done = mmjax("eval", "--model", str(run), "--output", str(tmp_path / "captions.json"))
    assert done.returncode == 0, done.stderr
    assert "synthetic-shapes (captioning)" in done.stdout and "shape_accuracy" in done.stdout
    with open(tmp_path / "captions.json") as f:  # NaN is written as null
        got = {name: math.nan if value is None else value for name, value in json.load(f)["metrics"].items()}
    # the run's own 32 retrieval images (config.eval.num_retrieval), captioned and read here
    source = synthetic.SyntheticSource("retrieval", 0, 32)
    labels = np.stack([source[i]["image_labels"] for i in range(32)])
    pixels = synthetic.render_images(labels, np.stack([source[i]["key"] for i in range(32)]), 16)
    want = caption_metrics(Captioner(trained.model, trained.params, trained.tokenizer, MEAN_STD, MEAN_STD)
                           .caption(pixels), labels)
    assert got == pytest.approx(want | {"num_images": 32}, nan_ok=True) and got["size_named"] > 0
    for args, message in errors.items():
        done = mmjax(*args)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, (
            args, done.stderr)


def write_synthetic_pairs(directory, count: int) -> tuple[np.ndarray, list[list[str]]]:
    """The first `count` synthetic retrieval images (16 px PNGs) with two captions each, as a clip_benchmark
    webdataset image–text benchmark in `directory`; the images uint8 `[count, 16, 16, 3]` and their captions."""
    from PIL import Image
    from test_benchmarks import write_shard

    def png_bytes(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()

    source = synthetic.SyntheticSource("retrieval", 0, count)
    labels = np.stack([source[i]["image_labels"] for i in range(count)])
    pixels = synthetic.render_images(labels, np.stack([source[i]["key"] for i in range(count)]), 16)
    references = [[synthetic.caption(row, template) for template in (0, 1)] for row in labels]
    (directory / "test").mkdir(parents=True)
    write_shard(directory / "test" / "0.tar", [(f"k{i}", {"png": png_bytes(image), "txt": "\n".join(
        texts).encode()}) for i, (image, texts) in enumerate(zip(pixels, references))])
    return pixels, references


def test_mmjax_eval_scores_a_runs_captions_of_an_image_text_benchmark(captioner_run, tmp_path):
    """`mmjax eval --benchmark wds:DIR` on a captioner: the synthetic retrieval images (16 px PNGs, no resizing)
    with two captions each as references; the run's greedy captions of them, scored by `caption_scores` (checked
    against pycocoevalcap in test_eval_captioning)."""
    from mmjax.eval.caption_scores import caption_scores

    pixels, references = write_synthetic_pairs(tmp_path / "pairs", 6)
    done = mmjax("eval", "--model", str(captioner_run), "--benchmark", f"wds:{tmp_path / 'pairs'}", "--output",
                 str(tmp_path / "scores.json"), "--batch_size", "4")
    assert done.returncode == 0, done.stderr
    assert f"wds:{tmp_path / 'pairs'} (captioning)" in done.stdout and "cider" in done.stdout
    with open(tmp_path / "scores.json") as f:
        results = json.load(f)
    trained = load_trained(str(captioner_run))
    want = Captioner(trained.model, trained.params, trained.tokenizer, MEAN_STD, MEAN_STD).caption(pixels)
    assert results["captions"] == [{"caption": c, "references": r} for c, r in zip(want, references)]
    metrics = results["metrics"]
    assert metrics == pytest.approx(caption_scores(want, references) | {
        "num_images": 6, "num_texts": 12, "images_per_s": metrics["images_per_s"]})
    assert metrics["bleu_1"] > 0.1 and results["task"] == "captioning" and results["step"] == 30


def test_a_captioner_is_evaluated_on_its_captions_during_training(tmp_path):
    """config.eval.benchmarks of a Flamingo run: the synthetic captions read, an image–text benchmark scored, by
    beam search (`eval.num_beams`, `eval.length_penalty`); the last step's records equal the evaluations of its checkpoint. A
    classification benchmark is refused first."""
    from test_benchmarks import write_classification

    from mmjax.eval.captioning import caption_benchmark
    from mmjax.eval.synthetic_captions import evaluate_synthetic_captions

    write_synthetic_pairs(tmp_path / "pairs", 5)
    config = flamingo_tiny.get_config("test")
    config.total_steps, config.optim.learning_rate = 4, 1e-2
    config.eval.every, config.eval.num_retrieval, config.eval.batch_size = 2, 8, 4
    config.eval.benchmarks, config.eval.num_beams = ("synthetic", f"wds:{tmp_path / 'pairs'}"), 3
    config.eval.length_penalty = 0.0  # short captions, here scored otherwise than length penalty 1's
    train(config, str(tmp_path / "run"))
    with open(tmp_path / "run" / "eval_metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [record["step"] for record in records] == [2, 4]
    trained = load_trained(str(tmp_path / "run"))
    captioner = Captioner(trained.model, trained.params, trained.tokenizer, MEAN_STD, MEAN_STD)
    caption = functools.partial(captioner.caption, num_beams=3, length_penalty=0.0)
    want = {f"synthetic/{name}": value for name, value in evaluate_synthetic_captions(
        caption, seed=0, image_size=16, num_images=8).items()}
    scores, _ = caption_benchmark(f"wds:{tmp_path / 'pairs'}", caption, image_size=16)
    want |= {f"wds_pairs/{name}": value for name, value in scores.items()}
    got = {name: math.nan if value is None else value for name, value in records[-1].items()}
    assert got.keys() == want.keys() | {"step", "eval_s"}
    for name, value in want.items():
        if not name.endswith("images_per_s"):
            assert got[name] == pytest.approx(value, nan_ok=True), name

    config.eval.benchmarks = (write_classification(tmp_path / "classes", [[0, 1]]),)
    with pytest.raises(ConfigError, match="config.eval.benchmarks: wds:.* is a classification benchmark, without "
                                          "reference captions to score"):
        train(config, str(tmp_path / "refused"))


@pytest.mark.parametrize("changes, message", [
    (dict(model="clip-test"), r"config.loss='captioning' needs a Flamingo model \(flamingo-test, flamingo-test-bpe, "
     r"flamingo-tiny, flamingo-tiny-bpe\); 'clip-test' is a two-tower model: use loss='clip'"),
    (dict(loss="clip"), "config.model='flamingo-test' is a Flamingo model: train it with config.loss='captioning'"),
    (dict(multi_positive=True), "config.multi_positive=True is for the two-tower losses; a captioner"),
    (dict(eval=dict(num_beams=0)), r"config.eval.num_beams=0 must be ≥ 1 \(1: greedy captions\)"),
    (dict(model="clip-test", loss="clip", eval=dict(num_beams=3)),
     "config.eval.num_beams=3 decodes a Flamingo's captions; 'clip-test' is a two-tower model, with embeddings"),
    (dict(model="clip-test", loss="clip", eval=dict(length_penalty=0.5)),
     "config.eval.length_penalty=0.5 decodes a Flamingo's captions; 'clip-test' is a two-tower model"),
    (dict(eval=dict(length_penalty=0.5)),
     r"config.eval.length_penalty=0.5 scores the captions of a beam search: set config.eval.num_beams \(3, say\)"),
    (dict(eval=dict(num_beams=3, length_penalty=-1.0)), "config.eval.length_penalty=-1.0 must be ≥ 0"),
    (dict(optim=dict(layer_decay=0.5)), "config.optim.layer_decay=0.5: 'flamingo-test''s language model is no "
     "tower that layer decay knows; its vision tower takes --config.optim.image_layer_decay"),
    (dict(optim=dict(text_layer_decay=0.5)), "config.optim.text_layer_decay=0.5: 'flamingo-test'"),
])
def test_flamingo_configs_that_cannot_work_are_one_line_errors(changes, message):
    config = flamingo_tiny.get_config("test")
    with config.unlocked():
        for key, value in changes.items():
            if isinstance(value, dict):
                config[key].update(value)
            else:
                config[key] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_auto_is_captioning_and_the_tokenizer_must_not_emit_the_image_token(tmp_path):
    model_config = models.get_config("flamingo-test")  # vocabulary 64, image token 63
    assert own_loss(model_config) == "captioning" and model_config.media_token_id == 63
    check_tokenizer(Tokenizer.for_synthetic(8), model_config, "flamingo-test")
    sixty_four = Tokenizer.from_corpus([" ".join(f"w{i}" for i in range(60))], 8)  # + pad, unk, start, end
    with pytest.raises(ConfigError, match="the tokenizer's 64 ids include model flamingo-test's image token id 63"):
        check_tokenizer(sixty_four, model_config, "flamingo-test")
    sixty_four.save(str(tmp_path / "sixty_four.json"))
    config = flamingo_tiny.get_config("test")
    config.data.tokenizer = str(tmp_path / "sixty_four.json")
    with pytest.raises(ConfigError, match="the tokenizer's 64 ids include"):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # it held no config.json, no tokenizer.json: the lock removed it


def test_the_captioning_step_and_the_benchmarks_refuse_what_they_cannot_do():
    from mmjax.commands.bench import _two_tower_model

    model, tx = models.create_model("flamingo-test"), optax.sgd(0.1)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="loss='captioning' takes multi_positive=False"):
        make_train_step(model, tx, optax.constant_schedule(0.1), mesh, loss="captioning", multi_positive=True,
                        image_mean=MEAN_STD, image_std=MEAN_STD, eot_id=3)
    with pytest.raises(ValueError, match="loss='captioning' needs eot_id"):
        make_train_step(model, tx, optax.constant_schedule(0.1), mesh, loss="captioning", multi_positive=False,
                        image_mean=MEAN_STD, image_std=MEAN_STD)
    with pytest.raises(ValueError, match="--model=flamingo-tiny is a Flamingo model; the benchmarks time"):
        _two_tower_model("flamingo-tiny")


def test_a_captioner_trains_on_converted_captions_with_clip_bpe_and_writes_words(tmp_path):
    """configs/flamingo_captions.py: ArrayRecord shards, OpenCLIP's BPE (49 408 ids), the image token 49 408; a
    caption decodes the ids greedy decoding writes as OpenCLIP's SimpleTokenizer decodes them."""
    open_clip = pytest.importorskip("open_clip")
    import flamingo_captions
    from test_data_train import REAL_CAPTIONS, write_pairs

    write_pairs(tmp_path / "data", 50, pool=REAL_CAPTIONS)
    config = flamingo_captions.get_config("test")
    config.data.sources = (str(tmp_path / "data"),)
    config.optim.learning_rate = 1e-2
    assert models.get_config(config.model).media_token_id == 49_408
    train(config, str(tmp_path / "run"))
    trained = load_trained(str(tmp_path / "run"))
    mean, std = trained.config.data.image_mean, trained.config.data.image_std
    pixels = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    got = Captioner(trained.model, trained.params, trained.tokenizer, mean, std).caption(pixels, prompt="a dog")

    reference = open_clip.tokenizer.SimpleTokenizer()
    sot, eot = reference.encoder["<start_of_text>"], reference.encoder["<end_of_text>"]
    prompt = [49_408, sot, *reference.encode("a dog")]
    buffer = np.zeros((2, 8), np.int32)
    buffer[:, :len(prompt)] = prompt
    images = ((pixels / 255 - np.array(mean)) / np.array(std)).astype(np.float32)[:, None]
    written = generate(trained.model, trained.params, images, buffer, np.full(2, len(prompt)),
                       num_tokens=8 - len(prompt), eos_id=eot)
    want = [reference.decode([int(i) for i in row[2:] if i not in (eot, 0)]) for row in written]
    assert [" ".join(caption.split()) for caption in got] == [" ".join(text.split()) for text in want]
    assert all(caption.startswith("a dog") for caption in got)


def test_captions_are_read_for_the_attributes_they_name():
    assert named_attributes("a photo of a small red circle at the top left.") == (0, 0, 0, 0)
    assert named_attributes("there is a large pink star at the bottom right") == (5, 6, 2, 8)
    assert named_attributes("a cyan shape in the center") == (-1, 3, -1, 4)
    assert named_attributes("a shape on the left, at the top") == (-1, -1, -1, 3)  # the first phrase
    labels = np.array([[0, 0, 0, 0], [5, 6, 2, 8], [1, 3, 1, 4]])  # circle red small top-left; …; square cyan …
    metrics = caption_metrics(["a small red circle at the top left", "a large pink cross at the bottom right",
                               "a cyan shape"], labels)
    assert metrics["shape_named"] == pytest.approx(2 / 3) and metrics["shape_accuracy"] == 0.5
    assert metrics["colour_named"] == 1.0 and metrics["colour_accuracy"] == 1.0
    assert metrics["size_named"] == pytest.approx(2 / 3) and metrics["size_accuracy"] == 1.0
    assert metrics["position_named"] == pytest.approx(2 / 3) and metrics["chance_position_accuracy"] == 1 / 9
    assert np.isnan(caption_metrics(["a shape"], labels[:1])["shape_accuracy"])
