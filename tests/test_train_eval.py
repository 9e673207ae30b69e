"""Zero-shot benchmarks during training (config.eval.every / eval.benchmarks): the recorded metrics equal the
same benchmarks run on the checkpoint of that step (so the evaluation sees the parameters of its step,
gathered from an FSDP mesh), a resumed run records each step once, bad benchmarks are config errors before
compiling, and bad data during training is a warning."""

import json
import os
import shutil
import sys

import pytest
from test_benchmarks import write_shard
from test_eval_reproduces import write_heldout_shards
from test_train import _tensorboard_steps

from mmjax.eval import evaluate_synthetic
from mmjax.eval.benchmarks import run_benchmark
from mmjax.inference import Encoder
from mmjax.train.config import ConfigError
from mmjax.train.loop import train
from mmjax.train.workdir import load_trained

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import clip_tiny  # noqa: E402


def checkpoint_metrics(workdir, benchmark_dir):
    """Both benchmarks on the workdir's latest checkpoint, restored replicated on the local devices."""
    trained = load_trained(str(workdir))
    config, size = trained.config, trained.model.config.vision.image_size
    encoder = Encoder(trained.model, trained.params, trained.tokenizer, config.data.image_mean, config.data.image_std,
                      batch_size=config.eval.batch_size)
    synthetic = evaluate_synthetic(encoder.encode_images, encoder.encode_texts, seed=config.data.seed,
                                   image_size=size, num_heldout=config.eval.num_heldout,
                                   num_retrieval=config.eval.num_retrieval, batch_size=encoder.batch_size)
    _, wds = run_benchmark(f"wds:{benchmark_dir}", encoder.encode_images, encoder.encode_texts, image_size=size,
                           batch_size=encoder.batch_size)
    return trained.step, {"synthetic": synthetic, "wds_heldout": wds}


def test_evaluations_during_training_equal_evaluating_the_checkpoint_of_their_step(tmp_path, capsys):
    write_heldout_shards(tmp_path / "heldout", seed=0, image_size=16, count=40)
    (tmp_path / "broken" / "test").mkdir(parents=True)
    write_shard(tmp_path / "broken" / "test" / "0.tar",
                [("a", {"png": b"not an image", "txt": b"a red square"})])
    config = clip_tiny.get_config("test")
    config.mesh = dict(data=2, fsdp=4, tensor=1)  # the evaluation gathers FSDP-sharded parameters
    config.eval.every = 3
    config.eval.benchmarks = ("synthetic", f"wds:{tmp_path / 'heldout'}", f"wds:{tmp_path / 'broken'}")
    workdir = tmp_path / "run"
    train(config, str(workdir))  # evaluates steps 3 and 6 in one run: the second evaluation sees new parameters
    shutil.copytree(workdir, tmp_path / "at_step_3")
    shutil.rmtree(tmp_path / "at_step_3" / "checkpoints" / "6")

    def assert_records_are_their_checkpoints():
        with open(workdir / "eval_metrics.jsonl") as f:
            records = [json.loads(line) for line in f]
        assert [record["step"] for record in records] == [3, 6]
        for record, run in zip(records, [tmp_path / "at_step_3", workdir]):
            step, want = checkpoint_metrics(run, tmp_path / "heldout")
            assert step == record["step"]
            for label, metrics in want.items():
                for name in ["acc1", "acc5", "image_retrieval_recall@1", "text_retrieval_recall@5"]:
                    if name in metrics:
                        assert record[f"{label}/{name}"] == pytest.approx(metrics[name], abs=1e-9), (step, label, name)
            assert not any(key.startswith("wds_broken/") for key in record)
            assert record["eval_s"] > 0
        assert records[0]["synthetic/image_retrieval_recall@1"] != records[1]["synthetic/image_retrieval_recall@1"]

    assert_records_are_their_checkpoints()
    shutil.rmtree(workdir / "checkpoints" / "6")  # as if killed after evaluating step 6, before its checkpoint
    train(config, str(workdir))  # evaluates step 6 again, in place of the first record of step 6
    assert_records_are_their_checkpoints()
    # TensorBoard tags cannot hold "@": tensorboardX made it "_" (recall_1); the tag says "_at_"
    assert set(_tensorboard_steps(workdir, "eval/synthetic/image_retrieval_recall_at_1")) == {3, 6}
    printed = capsys.readouterr()
    assert printed.err.count("mmjax: warning: evaluation on wds:") == 3 and "cannot decode image" in printed.err
    assert printed.out.count("eval      6  synthetic/acc1") == 2


@pytest.mark.parametrize("benchmarks, message", [
    (("synthtic",), r"config.eval.benchmarks: unknown benchmark 'synthtic': did you mean 'synthetic'\? use one of "
                    r"\['cifar10', 'cifar100', 'coco_captions', 'food101', 'imagenet2012', 'imagenet_v2', "
                    r"'oxford_iiit_pet'\], 'synthetic' \(in mmjax eval and config.eval.benchmarks\) or wds:DIR"),
    (("wds:/nonexistent/bench",), "config.eval.benchmarks: no webdataset shards /nonexistent/bench/test"),
    (("synthetic", "wds:/a/bench", "wds:/b/bench/"), r"\['wds:/a/bench', 'wds:/b/bench/'\] would all be recorded as "
                                                     "'wds_bench'"),
])
def test_unusable_benchmarks_are_config_errors_before_compiling(tmp_path, benchmarks, message):
    config = clip_tiny.get_config("test")
    config.eval.benchmarks = benchmarks
    with pytest.raises(ConfigError, match=message) as raised:
        train(config, str(tmp_path))
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "checkpoints").exists()
