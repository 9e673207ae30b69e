"""Benchmarks during training: every `config.eval.every` steps and at the last step.

`config.eval.benchmarks` names them as `mmjax eval --benchmark` does: "synthetic" (the built-in
synthetic benchmark), a TFDS benchmark or "wds:DIR". They are checked when training starts, before anything
compiles, so a misspelt name or an unprepared data set is one line then, not an error hours later. The
current parameters are replicated over the training mesh (one program, so FSDP- and
tensor-sharded states on any number of processes work), copied to the host and embedded by
one :class:`~mmjax.inference.Encoder` on this process's devices, compiled once per run. Every
process runs every benchmark and gets the same metrics
(:func:`~mmjax.eval.benchmarks.run_benchmark` divides the embedding between processes).

A captioner (a Flamingo run, `config.loss="captioning"`) is evaluated on its captions instead, written by one
:class:`~mmjax.captioner.Captioner` on this process's devices (not the training mesh): "synthetic" reads them
for the attributes they name (:mod:`mmjax.eval.synthetic_captions`), an image–text benchmark scores them against
its references (BLEU, CIDEr-D: :mod:`mmjax.eval.captioning`); a classification benchmark is refused when
training starts.

Benchmark images are decoded in `config.eval.num_workers` grain processes (0: in this process,
as `mmjax eval --num_workers` by default).
In a single-process run, a benchmark that fails on bad data or a vanished file during training
is reported in one line and skipped at that step; training goes on. With several processes the
error stops the run instead: a failure on one host only (a file missing from its disk) would
leave the other processes waiting in the benchmark's gathers.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mmjax.captioner import Captioner
from mmjax.data.preprocess import ImagePreprocess
from mmjax.data.tokenizers import Tokenizer
from mmjax.eval import evaluate_synthetic
from mmjax.eval.benchmarks import check_benchmark, run_benchmark
from mmjax.eval.captioning import caption_benchmark, check_captioning_benchmark
from mmjax.eval.report import benchmark_label
from mmjax.eval.synthetic_captions import evaluate_synthetic_captions
from mmjax.inference import Encoder
from mmjax.models import Flamingo, Flava, TwoTower
from mmjax.parallel import make_mesh, replicated
from mmjax.train.config import ConfigError

SYNTHETIC = "synthetic"


class PeriodicEval:
    """Runs `config.eval.benchmarks` on the training state's parameters when :meth:`due`.

    :meth:`run` returns flat metrics named `"<label>/<metric>"` (labels from
    :func:`~mmjax.eval.report.benchmark_label`: `synthetic`, `cifar10`, `wds_<dir>`) plus
    `eval_s`, the seconds the evaluation took.
    """

    def __init__(self, config: ml_collections.ConfigDict, model: TwoTower | Flava | Flamingo, tokenizer: Tokenizer,
                 mesh: Mesh,
                 preprocess: ImagePreprocess | None = None):
        """`preprocess`: the resize and crop of the benchmarks' images (a fine-tuned checkpoint's own; None: the
        centre crop)."""
        self.config, self.model, self.tokenizer, self.preprocess = config, model, tokenizer, preprocess
        # replicates one parameter over the training mesh (one at a time: at most one extra parameter
        # per device), whatever its sharding and however many processes the mesh spans
        self._replicate = jax.jit(lambda x: x, out_shardings=replicated(mesh))
        self._local_mesh = make_mesh(data=-1, devices=jax.local_devices())  # the Encoder's
        self.benchmarks = tuple(config.eval.benchmarks)
        self.captioner = isinstance(model, Flamingo)
        self.data_dir = config.data.tfds_data_dir or None
        labels = [benchmark_label(None if name == SYNTHETIC else name) for name in self.benchmarks]
        repeated = next((label for label in labels if labels.count(label) > 1), None)
        if repeated is not None:
            same = [name for name, label in zip(self.benchmarks, labels) if label == repeated]
            raise ConfigError(f"config.eval.benchmarks: {same} would all be recorded as {repeated!r}: "
                              "name each benchmark once, and wds directories with different names")
        for name in self.benchmarks:
            if name == SYNTHETIC:
                continue
            try:
                (check_captioning_benchmark if self.captioner else check_benchmark)(name, self.data_dir)
            except (ValueError, KeyError, OSError) as error:
                raise ConfigError(f"config.eval.benchmarks: {_message(error)}") from None
        self._encoder: Encoder | None = None

    def due(self, step: int) -> bool:
        """Whether step `step` (just trained) is an evaluation step."""
        every = self.config.eval.every
        return bool(self.benchmarks) and (step == self.config.total_steps or (every > 0 and step % every == 0))

    def run(self, params) -> dict[str, float]:
        """Every benchmark on `params` (the state's, sharded on the training mesh)."""
        jax.block_until_ready(params)  # the training steps still running are not the evaluation's time
        start = time.perf_counter()
        host_params = jax.tree.map(lambda x: np.asarray(self._replicate(x).addressable_data(0)), params)
        metrics = self._captions_of(host_params) if self.captioner else self._embeddings_of(host_params)
        metrics["eval_s"] = time.perf_counter() - start
        return metrics

    def _embeddings_of(self, host_params) -> dict[str, float]:
        metrics = {}
        with jax.set_mesh(self._local_mesh):  # not the training mesh, which spans every process
            if self._encoder is None:
                data = self.config.data
                self._encoder = Encoder(self.model, host_params, self.tokenizer, data.image_mean, data.image_std,
                                        batch_size=self.config.eval.batch_size, mesh=self._local_mesh)
            else:
                self._encoder.set_params(host_params)
            try:
                for name in self.benchmarks:
                    metrics |= self._evaluate_or_warn(name, self._evaluate)
            finally:
                self._encoder.params = None  # the devices' memory goes back to training
        return metrics

    def _captions_of(self, host_params) -> dict[str, float]:
        data = self.config.data
        with jax.set_mesh(self._local_mesh):  # each process writes its own captions, not the training mesh's
            captioner = Captioner(self.model, host_params, self.tokenizer, data.image_mean, data.image_std,
                                  batch_size=self.config.eval.batch_size,  # dropped, with its device copy, on return
                                  mesh=self._local_mesh)
            evaluate = functools.partial(self._captions_evaluated, captioner=captioner)
            metrics = {}
            for name in self.benchmarks:
                metrics |= self._evaluate_or_warn(name, evaluate)
        return metrics

    def _evaluate_or_warn(self, name: str, evaluate: Callable[[str], dict[str, float]]) -> dict[str, float]:
        """`evaluate(name)`'s metrics, named `<label>/<metric>`; a one-line warning and none when it fails on bad
        data in a single-process run."""
        label = benchmark_label(None if name == SYNTHETIC else name)
        try:
            results = evaluate(name)
        except (ValueError, OSError) as error:  # what run_benchmark raises for bad data
            if jax.process_count() > 1:
                raise
            print(f"mmjax: warning: evaluation on {name} failed, training goes on: {_message(error)}",
                  file=sys.stderr, flush=True)
            return {}
        return {f"{label}/{key}": float(value) for key, value in results.items()}

    def _evaluate(self, name: str) -> dict[str, float]:
        encoder, eval_config = self._encoder, self.config.eval
        image_size = self.model.config.vision.image_size
        if name == SYNTHETIC:
            return evaluate_synthetic(encoder.encode_images, encoder.encode_texts, seed=self.config.data.seed,
                                      image_size=image_size, num_heldout=eval_config.num_heldout,
                                      num_retrieval=eval_config.num_retrieval, batch_size=encoder.batch_size)
        _, metrics = run_benchmark(name, encoder.encode_images, encoder.encode_texts, image_size=image_size,
                                   data_dir=self.data_dir, batch_size=encoder.batch_size,
                                   max_examples=eval_config.max_examples or None,
                                   num_workers=eval_config.num_workers, preprocess=self.preprocess)
        return metrics


    def _captions_evaluated(self, name: str, captioner: Captioner) -> dict[str, float]:
        image_size, eval_config = self.model.config.vision.image_size, self.config.eval
        caption = functools.partial(captioner.caption, num_beams=eval_config.num_beams,
                                    length_penalty=eval_config.length_penalty)
        if name == SYNTHETIC:
            return evaluate_synthetic_captions(caption, seed=self.config.data.seed, image_size=image_size,
                                               num_images=eval_config.num_retrieval)
        metrics, _ = caption_benchmark(name, caption, image_size=image_size, data_dir=self.data_dir,
                                       batch_size=captioner.batch_size, max_examples=eval_config.max_examples or None,
                                       num_workers=eval_config.num_workers, preprocess=self.preprocess)
        return metrics


def _message(error: BaseException) -> str:
    """One line: KeyError's message without the quotes str() adds."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return str(text).splitlines()[0]
