"""Training on ArrayRecord data: exact resume, data-wait and skip metrics, the skip limit, and `mmjax data filter`."""
from __future__ import annotations

import json
import math
import os
import re
import sys

import jax
import numpy as np
import pytest

from mmjax.data import Tokenizer
from mmjax.models import TwoTower
from mmjax.train.loop import train
from mmjax.train.workdir import load_trained
from test_cli import TEST_CONFIG, mmjax
from test_data_convert import image_bytes, read_records
from test_data_pipeline import record, write_data_dir

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import clip_captions  # noqa: E402
import clip_tiny  # noqa: E402

CAPTIONS = ["a red circle", "a blue square", "a small green star at the top", "a large yellow cross",
            "a purple diamond on the left", "a photo of a cyan triangle"]


# Cut to the test models' 6 words, each says 3 words the synthetic world does not have (dog catching frisbee …).
REAL_CAPTIONS = ["a dog catching a frisbee in the park", "the man rides a horse on the beach",
                 "a child in the snow with a sled"]


def write_pairs(directory, count: int, bad_every: int = 0, pool=CAPTIONS) -> dict[str, list[str]]:
    """`count` records (solid images, 1–3 captions from `pool` each); every `bad_every`-th has undecodable image
    bytes."""
    rng = np.random.default_rng(0)
    records, pairs = [], {}
    for n in range(count):
        captions = list(rng.choice(pool, size=1 + n % 3, replace=False))
        bad = bad_every and n % bad_every == 0
        records.append(record(f"k{n}", captions, b"not an image" if bad else image_bytes(n * 37)))
        if not bad:
            pairs[f"k{n}"] = captions
    write_data_dir(directory, [records[i:i + 25] for i in range(0, count, 25)])
    return pairs


def records_config(directory, **data):
    config = clip_tiny.get_config("test")
    config.multi_positive = False
    config.data.name, config.data.sources = "arrayrecord", (str(directory),)
    for key, value in data.items():
        config.data[key] = value
    return config


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("records_run")
    pairs = write_pairs(root / "data", 100, bad_every=10)
    config = records_config(root / "data")
    state = train(config, str(root / "straight"))
    return root, config, state, pairs


@pytest.mark.slow  # ~30 s on 2 busy cores: two more training runs, each compiling its step
def test_resumed_run_on_records_ends_with_the_uninterrupted_parameters(straight_run):
    root, config, straight, _ = straight_run
    train(config, str(root / "resumed"), stop_after=3)
    with open(root / "resumed" / "skipped-process0.txt", "a") as f:  # as if killed after logging step 4
        f.write("4 shard-00000.array_record:99 undecodable_image\n")
    resumed = train(config, str(root / "resumed"))
    jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)
    with open(root / "straight" / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    with open(root / "resumed" / "metrics.jsonl") as f:  # the resumed run also logged its stop step, 3
        resumed_counts = {m["step"]: m["skipped/undecodable_image"] for m in map(json.loads, f)}
    assert {m["step"]: m["skipped/undecodable_image"] for m in logged}.items() <= resumed_counts.items()
    # 6 steps × 16 examples from 90 good records per epoch of 100: the skips seen are those before example 96.
    assert all(m["data_wait_s"] >= 0 and 0 < m["skipped_fraction"] < 0.2 for m in logged)
    skipped_lines = (root / "straight" / "skipped-process0.txt").read_text().split("\n")[:-1]
    assert len(skipped_lines) == logged[-1]["skipped/undecodable_image"] >= 6
    assert all(line.endswith(" undecodable_image") for line in skipped_lines)
    # The resumed run's log names the same skips once each: those of checkpointed batches were flushed with the
    # checkpoint (step 3 is no log step), and lines logged after it were dropped on resume.
    resumed_lines = (root / "resumed" / "skipped-process0.txt").read_text().split("\n")[:-1]
    assert sorted(line.split(" ", 1)[1] for line in resumed_lines) == sorted(
        line.split(" ", 1)[1] for line in skipped_lines)


def test_training_stops_with_one_line_when_too_much_is_skipped(tmp_path):
    write_pairs(tmp_path / "data", 50, bad_every=2)
    result = mmjax("train", "--config", TEST_CONFIG, "--workdir", str(tmp_path / "run"),
                   "--config.multi_positive=False", "--config.data.name=arrayrecord",
                   f"--config.data.sources=('{tmp_path / 'data'}',)", "--config.data.max_skip_fraction=0.2",
                   "--config.data.skip_check_min_samples=16")
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("mmjax: error: stopped at step 2: ") and "Traceback" not in result.stderr
    assert re.search(r"\(\d+\.\d% > config.data.max_skip_fraction=0.2\): undecodable_image \d+;", message), message
    assert "skipped-process0.txt" in message


def test_real_captions_warn_with_the_synthetic_words_and_train_with_the_captions_config(tmp_path, capsys):
    write_pairs(tmp_path / "data", 64, pool=REAL_CAPTIONS)
    train(records_config(tmp_path / "data"), str(tmp_path / "synthetic_words"))
    assert ("mmjax: warning: 50% of the caption words in the first batch are unknown to the tokenizer, "
            "config.data.tokenizer='' (the synthetic world's words)") in capsys.readouterr().err

    config = clip_captions.get_config("test")
    config.data.sources = (str(tmp_path / "data"),)
    state = train(config, str(tmp_path / "bpe"))
    assert "warning" not in capsys.readouterr().err
    trained = load_trained(str(tmp_path / "bpe"))
    assert trained.tokenizer.vocab_size == trained.model.config.text.vocab_size == 49408
    assert trained.tokenizer.unk_id is None  # byte-level BPE spells every caption
    assert int(state.step) == config.total_steps

    train(config, str(tmp_path / "bpe"))
    assert capsys.readouterr().out.strip().endswith(
        f"{tmp_path / 'bpe'} is already at step 6, this run stops at step 6: nothing to train")


def test_a_run_that_stopped_before_its_first_checkpoint_leaves_nothing_the_next_run_reuses(tmp_path):
    failed = records_config(tmp_path / "no_such_data", tokenizer=str(tmp_path / "zoo.json"))
    Tokenizer.from_corpus(["zebra giraffe"], 8).save(tmp_path / "zoo.json")
    with pytest.raises(FileNotFoundError, match="no_such_data"):
        train(failed, str(tmp_path / "run"))
    (tmp_path / "run" / "skipped-process0.txt").write_text("3 k7 undecodable_image\n")
    state = train(clip_tiny.get_config("test"), str(tmp_path / "run"))  # synthetic data: another data.name
    assert int(state.step) == 6
    saved = Tokenizer.load(tmp_path / "run" / "tokenizer.json")
    assert saved.backend.get_vocab() == Tokenizer.for_synthetic(8).backend.get_vocab()
    assert not (tmp_path / "run" / "skipped-process0.txt").exists()

    # A directory with a foreign config.json (a Hugging Face export) is refused, and its files are kept.
    hf_config = json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]})
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(hf_config)
    with pytest.raises(ValueError, match="is not an mmjax training config"):
        train(clip_tiny.get_config("test"), str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "config.json").read_text() == hf_config and sorted(os.listdir(tmp_path / "hf")) == [
        "config.json"]


def test_filter_keeps_exactly_the_pairs_whose_independent_clip_score_passes(straight_run, tmp_path):
    root, config, _, pairs = straight_run
    workdir, out = root / "straight", tmp_path / "filtered"
    result = mmjax("data", "filter", str(root / "data"), "--model", str(workdir), "--out", str(out),
                   "--top_fraction", "0.4", "--batch_size", "32")
    assert result.returncode == 0, result.stderr
    # Independent score: the model's encode functions on hand-made inputs, cosine in float64 NumPy.
    trained = load_trained(str(workdir))
    size = trained.model.config.vision.image_size
    keys = sorted(pairs, key=lambda k: int(k[1:]))
    images = np.stack([np.full((size, size, 3), ((int(k[1:]) * 37) % 256, (int(k[1:]) * 37) // 256, 77), np.float32)
                       for k in keys]) / 255.0
    image_emb = np.asarray(trained.model.apply({"params": trained.params}, (images - 0.5) / 0.5,
                                               method=TwoTower.encode_image), np.float64)
    texts = [(k, c) for k in keys for c in pairs[k]]
    text_emb = np.asarray(trained.model.apply({"params": trained.params}, trained.tokenizer([c for _, c in texts]),
                                              method=TwoTower.encode_text), np.float64)
    image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    row = {k: i for i, k in enumerate(keys)}
    scores = {pair: float(image_emb[row[pair[0]]] @ text_emb[j]) for j, pair in enumerate(texts)}
    cutoff = sorted(scores.values(), reverse=True)[math.ceil(0.4 * len(scores)) - 1]
    margin = 1e-4  # float32 model vs float64 here: pairs this close to the cut-off may go either way
    surely_kept = {pair for pair, s in scores.items() if s >= cutoff + margin}
    surely_dropped = {pair for pair, s in scores.items() if s < cutoff - margin}
    written = read_records(out)
    kept = {(r["key"], c) for r in written for c in r["captions"]}
    assert surely_kept <= kept and not kept & surely_dropped
    assert len(surely_kept) >= 0.3 * len(scores)
    for r in written:
        np.testing.assert_allclose(r["meta"]["clip_score"], [scores[(r["key"], c)] for c in r["captions"]],
                                   atol=1e-4)
        assert r["image"] == image_bytes(int(r["key"][1:]) * 37)
    assert "unreadable records: undecodable_image 10" in result.stdout


def test_a_resume_with_another_number_of_mixture_sources_is_one_line_and_keeps_the_checkpoints(tmp_path):
    """It failed inside the restore, which advised deleting the (sound) checkpoint, then the one before it."""
    for name in ("a", "b", "c"):
        write_pairs(tmp_path / name, 25)
    config = records_config(tmp_path / "a")
    config.data.name, config.data.sources, config.data.weights = "mixture", (str(tmp_path / "a"),
                                                                            str(tmp_path / "b")), (0.5, 0.5)
    train(config, str(tmp_path / "run"), stop_after=1)
    config.data.sources, config.data.weights = tuple(str(tmp_path / n) for n in "abc"), (0.4, 0.3, 0.3)
    with pytest.raises(ValueError, match=r"run holds a run that reads 2 data source\(s\), not 3: a source may move, "
                                         r"but their number stays; use another --workdir$"):
        train(config, str(tmp_path / "run"))
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["1"]
