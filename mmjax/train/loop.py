"""The training loop: config → mesh → sharded state → steps → metrics and checkpoints.

Running it again on the same workdir resumes from the latest checkpoint, with
the data iterator where it was, so the resumed run sees the same batches.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mmjax import interrupts
from mmjax.data.pipeline import config_train_dataset
from mmjax.data.shards import data_files
from mmjax.data.skips import SkipMonitor
from mmjax.data.tokenizers import Tokenizer
from mmjax.models import FlamingoConfig, FlavaConfig, build_model, get_config, list_models
from mmjax.parallel import DEFAULT_RULES, batch_sharding, batch_size_multiple, check_tensor_split, make_mesh
from mmjax.parallel.distributed import wait_for_all_processes
from mmjax.parallel.memory import memory_per_device
from mmjax.train.checkpoint import Checkpoints, has_checkpoint, saved_process_count
from mmjax.train.config import (AUTO_LOSS, ConfigError, registered_model, resolved_loss, validate,
                                validate_frozen, validate_model)
from mmjax.train.evaluation import PeriodicEval
from mmjax.train.finetune import (Start, check_before_download, is_finetuning, load_start, place_params,
                                  read_start, recorded_source, save_start, source_name, with_pretrained_params)
from mmjax.train.language_model import (LanguageStart, load_language_model, recorded_language_model,
                                        save_language_model)
from mmjax.train.layer_decay import configured_decays, describe as describe_layer_decay
from mmjax.train.metrics import MetricsWriter
from mmjax.train.multihost import initialize_distributed
from mmjax.train.optim import learning_rate_schedule, make_optimizer
from mmjax.train.preemption import Preempted, PreemptionNotice
from mmjax.train.prefetch import prefetch_to_mesh
from mmjax.train.state import (TrainState, abstract_train_state, create_train_state, state_shardings,
                               train_state_from_params)
from mmjax.train.step import jit_train_step, make_train_step
from mmjax.train.vision_tower import load_vision_tower
from mmjax.train.workdir import (CLIP_BPE, CONFIG_FILE, REAL_CAPTIONS_CONFIGS, TOKENIZER_FILE, load_config,
                                  save_config, save_tokenizer, unknown_words_warning, workdir_lock,
                                  workdir_tokenizer)


# What a resumed run must share with the run its workdir holds: the model and its parameter layout, the loss,
# the data stream and the iterator state's layout (one per worker process), the tokenizer saved in the workdir.
RESUME_KEYS = ("model", "model_options.scan_layers", "model_options.activation", "model_options.norm_eps", "loss",
               "batch_size", "data.seed", "data.name", "data.num_workers", "data.tokenizer", "pretrained.weights",
               "pretrained.tokenizer", "pretrained.allow_pickle", "pretrained.image_size", "optim.frozen",
               "optim.layer_decay", "optim.image_layer_decay", "optim.text_layer_decay")
OWN_WHEN_EMPTY = ("model_options.activation", "model_options.norm_eps")
TOWER_DECAYS = ("optim.image_layer_decay", "optim.text_layer_decay")
# The values of resume keys that a run written before mmjax stored them had (frozen parameters, layer decay,
# fine-tuning, the activation and norm options came later); other absent keys cannot be compared.
# (`init_vision` is not one: only a new run reads it.)
IMPLIED_WHEN_ABSENT = {"model_options.activation": "", "model_options.norm_eps": 0.0,
                       "optim.frozen": (), "optim.layer_decay": 1.0, "optim.image_layer_decay": None,
                       "optim.text_layer_decay": None, "pretrained.weights": "",
                       "pretrained.tokenizer": "", "pretrained.allow_pickle": False, "pretrained.image_size": 0,
                       "data.record_reads": "auto"}


def _saved_run(workdir: str, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """The config of the run `workdir` holds (one with a checkpoint), to resume; None when it holds none.

    A workdir resumes only the run it holds (model, loss, data order); say so before restoring fails deep
    inside Orbax or silently changes the data stream. A run without a checkpoint yet (stopped by a config or
    data error, or killed before its first checkpoint) is replaced; a directory whose config.json is not an
    mmjax config (a Hugging Face export) is refused, and so is a data directory (its shards and index)."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file, not a directory")
    found = data_files(workdir)
    if found:
        raise ConfigError(f"--workdir {workdir} is a data directory ({', '.join(found[:3])}); train into another "
                          f"--workdir")
    has_config = os.path.exists(os.path.join(workdir, CONFIG_FILE))
    if not has_checkpoint(workdir):
        if has_config:
            load_config(workdir)  # raises for a foreign config.json, before it is overwritten
        return None
    before = load_config(workdir)
    for key in RESUME_KEYS:
        old, new = (tuple(value) if isinstance(value, list) else value  # JSON gives a saved tuple back as a list
                    for value in (_lookup(before, key), _lookup(config, key)))
        old = IMPLIED_WHEN_ABSENT.get(key, old) if old is _ABSENT else old
        if key in TOWER_DECAYS:  # a tower's decay left unset is the run's layer_decay
            old = _lookup(before, "optim.layer_decay") if old is None else old
            old = IMPLIED_WHEN_ABSENT["optim.layer_decay"] if old is _ABSENT else old
            new = config.optim.layer_decay if new is None else new
        if key == "data.tokenizer" and _same_tokenizer_file(workdir, old, new):
            continue
        if key in OWN_WHEN_EMPTY and config.model in list_models():  # "" or 0: the registered model's own
            own = getattr(get_config(config.model).options, key.rpartition(".")[2])
            old, new = old or own, new or own
        if key == "model" and old != new and is_finetuning(config) and recorded_source(workdir) == source_name(new):
            continue  # another spelling of the checkpoint's path
        if key == "loss" and new == AUTO_LOSS:
            continue  # a checkpoint's own loss, known once it is read: the one loss that fits the recorded model
        if old is not _ABSENT and old != new:  # a key the run's mmjax version did not write cannot be compared
            raise ConfigError(f"{workdir} holds a run with {key}={old!r}, not {new!r}: use another --workdir")
    processes = saved_process_count(workdir)
    if processes is not None and processes != jax.process_count():
        raise ConfigError(f"{workdir} holds a run of {processes} process(es), not {jax.process_count()}: each "
                          f"process's data-iterator state is its own; resume with {processes}, or use another "
                          f"--workdir")
    old_sources, new_sources = _lookup(before, "data.sources"), _lookup(config, "data.sources")
    if old_sources is not _ABSENT and len(old_sources) != len(new_sources):  # the iterator state counts each one
        raise ConfigError(f"{workdir} holds a run that reads {len(old_sources)} data source(s), not "
                          f"{len(new_sources)}: a source may move, but their number stays; use another --workdir")
    return before


def _same_tokenizer_file(workdir: str, old, new) -> bool:
    """Whether `new`, a tokenizer.json path, names the file the run copied into `WORKDIR/tokenizer.json` from
    `old` (another spelling of the same path, or a copy): the run goes on with the same tokenizer."""
    if not isinstance(old, str) or not isinstance(new, str) or "" in (old, new) or CLIP_BPE in (old, new):
        return False
    saved = os.path.join(workdir, TOKENIZER_FILE)
    if not (os.path.isfile(new) and os.path.isfile(saved)):
        return False
    given, kept = Tokenizer.load(new), Tokenizer.load(saved)  # the copy is re-serialised: compare the tokenizers
    return (given.context_length, given.backend.to_str()) == (kept.context_length, kept.backend.to_str())


def _changes(before: ml_collections.ConfigDict, after: ml_collections.ConfigDict) -> list[str]:
    """`"key old → new"` for every leaf of `after` whose value differs from `before`'s (dotted keys), and
    `"key new (not in the saved config)"` for a leaf `before` lacks (a config written by an earlier version)."""
    def leaves(tree: dict, prefix: str = "") -> dict:
        flat = {}
        for key, value in tree.items():
            flat |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
        return flat

    old, new = leaves(json.loads(before.to_json())), leaves(json.loads(after.to_json()))
    old |= {key: implied for key, implied in IMPLIED_WHEN_ABSENT.items() if key not in old}  # what the run had
    return [f"{key} {old[key]!r} → {value!r}" if key in old else f"{key} {value!r} (not in the saved config)"
            for key, value in new.items() if key not in old or _json_value(old[key]) != value]


def _json_value(value):
    """`value` as a config's JSON gives it back (a tuple as a list)."""
    return list(value) if isinstance(value, tuple) else value


_ABSENT = object()


def _lookup(config: ml_collections.ConfigDict, dotted: str):
    """`config.a.b` for `"a.b"`, or `_ABSENT` when the config has no such key."""
    for part in dotted.split("."):
        if config is _ABSENT or part not in config:
            return _ABSENT
        config = config[part]
    return config


def check_batch_size(config: ml_collections.ConfigDict, mesh, process_count: int,
                     process_of: Callable[[jax.Device], int] = lambda device: device.process_index) -> None:
    """A one-line `ConfigError` unless each of the `accum_steps` micro-batches splits over the mesh's batch
    (data × fsdp) devices and the batch over the processes, which load equal shares of it: the rows each
    process's devices hold must then be a share of their own (`process_of` names a device's process)."""
    devices = batch_size_multiple(mesh)
    multiple = math.lcm(devices * config.accum_steps, process_count)
    if config.batch_size % multiple:
        raise ConfigError(f"config.batch_size={config.batch_size} must be a multiple of {multiple}: each of its "
                          f"config.accum_steps={config.accum_steps} micro-batch(es) is split over the {devices} "
                          f"data×fsdp devices of mesh {dict(mesh.shape)}, and the batch over {process_count} "
                          f"process(es)")
    rows = collections.defaultdict(set)
    for device, index in batch_sharding(mesh).devices_indices_map((config.batch_size,)).items():
        rows[process_of(device)].update(range(*index[0].indices(config.batch_size)))
    if any(len(held) != config.batch_size // process_count for held in rows.values()):
        raise ConfigError(f"mesh {dict(mesh.shape)} gives the {process_count} processes overlapping rows of the batch "
                          f"(its data×fsdp axes span {devices} device(s)), but each process loads rows of its own: "
                          f"make config.mesh.data × config.mesh.fsdp a multiple of the process count")


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> TrainState:
    """Train (or resume) into `workdir` until `config.total_steps`, or until step
    `stop_after` (a checkpoint is written there; run again to continue). `config.loss="auto"` trains with the
    model's own loss (a checkpoint's once it is loaded), which the workdir's config.json records."""
    validate(config, workdir)
    config = copy.deepcopy(config)  # its loss resolved, and a checkpoint's image mean and std
    initialize_distributed(config.distributed)  # before anything touches a device
    mesh = make_mesh(**config.mesh)
    check_batch_size(config, mesh, jax.process_count())
    if not is_finetuning(config):  # a checkpoint's architecture is known once it is loaded, under the lock
        model_config = registered_model(config)
        check_tensor_split(model_config, mesh)
        config.loss = resolved_loss(config.loss, model_config)
    saved_config = _saved_run(workdir, config)
    with workdir_lock(workdir, jax.process_index() == 0):  # before a checkpoint is loaded (or downloaded)
        finetuning = None
        if is_finetuning(config):
            finetuning = _finetuning_start(config, workdir, resuming=saved_config is not None, mesh=mesh)
        model_config = finetuning.model if finetuning else registered_model(config)
        vision_tower = load_vision_tower(config, model_config) if config.init_vision and saved_config is None else None
        language = load_language_model(config, model_config) if config.init_language and saved_config is None else None
        if language:
            model_config = language.model(model_config)
        elif saved_config is not None and not finetuning:
            model_config = recorded_language_model(workdir, model_config)
        check_tensor_split(model_config, mesh)
        return _train(config, workdir, stop_after, mesh, model_config, saved_config, finetuning, vision_tower,
                      language)


def _finetuning_start(config: ml_collections.ConfigDict, workdir: str, resuming: bool, mesh) -> Start:
    """What a run from a pretrained checkpoint starts from: the checkpoint (a new run; an `hf:` one checked from
    its config files first) or the workdir's record of it (a resumed one). `config.data.image_mean` / `image_std`
    become the checkpoint's: its towers were trained on images normalised with them; an "auto" loss becomes its
    own."""
    if not resuming:
        check_before_download(config, mesh)
    start = read_start(workdir, config.model_options) if resuming else load_start(config)
    validate_model(config, start.model)
    config.loss = resolved_loss(config.loss, start.model)
    mean, std = tuple(start.preprocess.mean), tuple(start.preprocess.std)
    changed = (tuple(config.data.image_mean), tuple(config.data.image_std)) != (mean, std)
    if changed and not resuming and jax.process_index() == 0:  # said when the run began
        print(f"mmjax: config.data.image_mean/std {tuple(config.data.image_mean)}/{tuple(config.data.image_std)} "
              f"replaced by {config.model}'s own {mean}/{std}", file=sys.stderr)
    config.data.image_mean, config.data.image_std = mean, std
    return start


def _train(config: ml_collections.ConfigDict, workdir: str, stop_after: int | None, mesh,
           model_config, saved_config: ml_collections.ConfigDict | None, finetuning: Start | None,
           vision_tower: dict | None, language: LanguageStart | None) -> TrainState:
    """`train` once the workdir is this process's (`workdir_lock`)."""
    with contextlib.ExitStack() as cleanup:
        return _train_closing(cleanup, config, workdir, stop_after, mesh, model_config, saved_config, finetuning,
                              vision_tower, language)


def _train_closing(cleanup: contextlib.ExitStack, config: ml_collections.ConfigDict, workdir: str,
                   stop_after: int | None, mesh, model_config,
                   saved_config: ml_collections.ConfigDict | None, finetuning: Start | None,
                   vision_tower: dict | None, language: LanguageStart | None) -> TrainState:
    """`_train`'s work; what it opens (data workers, checkpoints, metric writers) is closed by `cleanup`, also
    when it stops with an error before training. `vision_tower`: a new Flamingo's `vision` parameters
    (`config.init_vision`); `language`: its language model and tokenizer (`config.init_language`)."""
    notice = cleanup.enter_context(PreemptionNotice())  # from here on a SIGTERM saves the run and stops it
    resuming = saved_config is not None
    tokenizer = finetuning.tokenizer if finetuning else language.tokenizer if language else workdir_tokenizer(
        workdir, model_config.text.context_length, config.data.tokenizer, fresh=not resuming)
    check_tokenizer(tokenizer, model_config, config.model)
    model = build_model(model_config)
    evaluation = PeriodicEval(config, model, tokenizer, mesh,  # checks the benchmarks before anything compiles
                              finetuning.preprocess if finetuning else None)  # and before config.json is written
    tx = make_optimizer(config.optim, config.total_steps)
    shardings = state_shardings(model, tx, mesh)
    validate_frozen(config, shardings.params)
    if jax.process_index() == 0 and not resuming:  # the run's checks passed: its files
        save_config(workdir, config)
        if finetuning:
            save_start(workdir, finetuning)
        else:
            save_tokenizer(workdir, tokenizer)
            save_language_model(workdir, language)
    decay, per_tower = configured_decays(config.optim)
    if {decay, *per_tower.values()} != {1.0} and not resuming and jax.process_index() == 0:
        decayed = describe_layer_decay(abstract_train_state(shardings, model, tx).params, decay, per_tower)
        print(f"mmjax: {decayed}", file=sys.stderr)
    data = prefetch_to_mesh(config_train_dataset(config.data, config.batch_size, model_config.vision.image_size,
                                                 tokenizer), mesh, config.data.prefetch_to_device)
    cleanup.callback(data.close)
    skips = SkipMonitor(data, workdir, config.data.max_skip_fraction, config.data.skip_check_min_samples,
                        fresh=not resuming)
    wait_for_all_processes("train_setup")  # Orbax's first sync is a collective
    checkpoints = Checkpoints(workdir, config.keep_checkpoints)
    cleanup.callback(checkpoints.close)  # waits for a save in flight, also after Ctrl-C or an error
    if resuming:
        state = checkpoints.restore(abstract_train_state(shardings, model, tx), data)
        skips.resume_at(int(state.step))
    elif finetuning:
        params = place_params(finetuning.params, abstract_train_state(shardings, model, tx).params)
        state = train_state_from_params(params, tx, shardings)
        finetuning.params = None  # the host copy, as large as the model
    else:
        state = create_train_state(model, tx, jax.random.key(config.seed), shardings)
        pretrained = {**({"vision": vision_tower} if vision_tower is not None else {}),
                      **(language.language.params if language else {})}
        if pretrained:
            state = with_pretrained_params(state, pretrained, tx, shardings)
    step_fn = jit_train_step(
        make_train_step(model, tx, learning_rate_schedule(config.optim, config.total_steps), mesh,
                        loss=config.loss, multi_positive=config.multi_positive,
                        image_mean=config.data.image_mean, image_std=config.data.image_std,
                        accum_steps=config.accum_steps, seed=config.seed, frozen=tuple(config.optim.frozen),
                        eot_id=tokenizer.eot_id),
        shardings, mesh)

    start = int(state.step)
    end = config.total_steps if stop_after is None else min(stop_after, config.total_steps)
    if resuming and jax.process_index() == 0:
        changes = _changes(saved_config, config)
        print(f"resuming {workdir} at step {start}" + (f" with a changed config: {'; '.join(changes)}" if changes
                                                      else ""))
    if start >= end and jax.process_index() == 0:
        evaluate = (f" (evaluate it with mmjax eval --model {workdir} --benchmark NAME)"
                    if config.eval.benchmarks else "")
        print(f"{workdir} is already at step {start}, this run stops at step {end}: nothing to train{evaluate}")
    writer = MetricsWriter(workdir, config.total_steps, start)
    cleanup.callback(writer.close)
    config_json = config.to_dict()
    run_start = last_time = time.perf_counter()
    last_step, first_log, data_wait, preempted_at = start, True, 0.0, None
    config_pending, saves_begun = resuming and jax.process_index() == 0, False  # a resumed run's config.json
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES), interrupts.watching():
        for step in range(start + 1, end + 1):
            interrupts.check()  # a Ctrl-C whose KeyboardInterrupt Python dropped (in a gc callback)
            wait_start = time.perf_counter()
            batch = next(data)
            data_wait += time.perf_counter() - wait_start
            if step == start + 1:  # compile ahead of time to read the program's bytes per device
                local_text = np.concatenate([shard.data for shard in batch["text"].addressable_shards])
                warning = unknown_words_warning(tokenizer, local_text, config.data.tokenizer,
                                                checkpoint=config.model if finetuning else None,
                                                captions_config=REAL_CAPTIONS_CONFIGS[type(model_config)])
                if warning and jax.process_index() == 0:
                    print(warning, file=sys.stderr)
                step_fn = step_fn.lower(state, batch).compile()
                memory = memory_per_device(step_fn)
                wait_for_all_processes("train_compiled")
                compiled_at = time.perf_counter()
            state, metrics = step_fn(state, batch)
            writer.advance(1)
            if step == start + 1:  # the first step compiles: time the rest without it
                jax.block_until_ready(metrics)
                now = time.perf_counter()
                # first_step_s includes compiling; the step's own time (logged when it is a log step) does not
                first_step_s, first_run_s, last_time, last_step = now - last_time, now - compiled_at, now, step
                first_step_wait, data_wait = data_wait, 0.0
            if step % config.log_every == 0 or step == end:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                seconds_per_step = (now - last_time) / (step - last_step) if step > last_step else first_run_s
                metrics.update(step_time_s=seconds_per_step, examples_per_s=config.batch_size / seconds_per_step,
                               data_wait_s=(data_wait / (step - last_step) if step > last_step
                                            else first_step_wait),
                               **skips.update(step))
                if first_log:
                    metrics["first_step_s"], first_log = first_step_s, False  # includes compilation
                    metrics.update(memory)
                writer.write(step, metrics)
                last_time, last_step, data_wait = now, step, 0.0
                stop_if_diverged(step, metrics, checkpoints)
            preempted = notice.reached(step - start) and step < end  # at the last step the run is complete
            evaluate = evaluation.due(step)
            if evaluate and not preempted:  # before the checkpoint: a run killed here evaluates this step again
                last_time += _evaluate(evaluation, state, step, writer)  # step times leave the evaluation out
            if step % config.checkpoint_every == 0 or step == end or preempted:
                stop_if_diverged(step, metrics, checkpoints)  # never a checkpoint of NaN parameters
                skips.flush(step)  # the log holds the skips of every batch the checkpoint has trained on
                writer.flush(step)  # and TensorBoard every step it has logged: a resumed run starts after them
                checkpoints.save(step, state, data, config_json)  # returns once the save before it is on disk
                if config_pending and saves_begun:  # config.json: the config of the newest finished checkpoint
                    save_config(workdir, config)
                    config_pending = False
                saves_begun = True
            if preempted:  # the grace period may not cover both: the checkpoint first, then the evaluation
                with interrupts.deferred():
                    checkpoints.wait()
                if evaluate:
                    _evaluate(evaluation, state, step, writer)
                preempted_at = step
                break
    with interrupts.deferred():  # the save finishes either way (closing waits for it): no Orbax traceback
        checkpoints.wait()
    if config_pending and saves_begun:
        save_config(workdir, config)
    interrupts.check()  # one dropped during the last step's evaluation or checkpoint
    if preempted_at is not None:
        raise Preempted(preempted_at, os.path.join(workdir, "checkpoints", str(preempted_at)))
    writer.close()  # the progress bar ends before the closing line
    if end > start and jax.process_index() == 0:
        print(_closing_line(workdir, start, end, config.total_steps, time.perf_counter() - run_start,
                            isinstance(model_config, FlamingoConfig)))
    return state


def check_tokenizer(tokenizer: Tokenizer, model_config, model: str) -> None:
    """A one-line `ConfigError` unless the tokenizer's ids fit model `model`'s vocabulary; for FLAVA, unless it pads
    with the model's pad id (the caption lengths are read from the padding) and never emits its [MASK] id; for
    Flamingo, unless it never emits the image token's id."""
    if tokenizer.vocab_size > model_config.text.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but model {model} only "
                          f"{model_config.text.vocab_size}")
    if isinstance(model_config, FlavaConfig):
        if tokenizer.pad_id != model_config.pad_id:
            raise ConfigError(f"the tokenizer pads with id {tokenizer.pad_id} but model {model} reads its captions' "
                              f"lengths from pad id {model_config.pad_id}")
        reserved, name = model_config.mask_token_id, "[MASK]"
    elif isinstance(model_config, FlamingoConfig):
        reserved, name = model_config.media_token_id, "image token"
    else:
        return
    if tokenizer.vocab_size > reserved:
        raise ConfigError(f"the tokenizer's {tokenizer.vocab_size} ids include model {model}'s {name} id "
                          f"{reserved}, which must be an id the tokenizer never emits")


def _evaluate(evaluation: PeriodicEval, state: TrainState, step: int, writer: MetricsWriter) -> float:
    """Runs the evaluation of step `step` and records it; the seconds it took."""
    results = evaluation.run(state.params)
    writer.write_eval(step, results)
    return results["eval_s"]


def stop_if_diverged(step: int, metrics: dict, checkpoints: Checkpoints) -> None:
    """A one-line `ValueError` when step `step`'s loss or gradient norm is not finite: the update made (or will
    make) the parameters NaN, and every later step, checkpoint and evaluation would carry them."""
    values = {name: float(value) for name, value in jax.device_get(
        {name: metrics[name] for name in ("loss", "grad_norm")}).items()}
    bad = [f"{name} {value}" for name, value in values.items() if not math.isfinite(value)]
    if bad:
        last = checkpoints.latest_step()
        kept = ("no checkpoint was saved" if last is None else
                f"the last checkpoint, step {last}, is kept, but its parameters may already be far off")
        raise ValueError(f"training diverged at step {step} ({', '.join(bad)}); {kept}. Lower "
                         f"config.optim.learning_rate or lengthen its warmup, and train again in a new --workdir")


def _closing_line(workdir: str, start: int, end: int, total_steps: int, seconds: float,
                  captioner: bool = False) -> str:
    """What the run did and what to run next, e.g. `trained runs/demo from step 0 to 1000 (of 1000) in 2 min 45 s;
    checkpoint runs/demo/checkpoints/1000; next: mmjax eval --model runs/demo` (`mmjax caption --model runs/demo
    IMAGE...` for a `captioner`)."""
    minutes, secs = divmod(round(seconds), 60)
    took = f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"
    finished = f"mmjax caption --model {workdir} IMAGE..." if captioner else f"mmjax eval --model {workdir}"
    following = (finished if end == total_steps
                 else f"train with the same config and workdir to go on to step {total_steps}")
    return (f"trained {workdir} from step {start} to {end} (of {total_steps}) in {took}; "
            f"checkpoint {os.path.join(workdir, 'checkpoints', str(end))}; next: {following}")
