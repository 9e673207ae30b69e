"""Test set-up: 8 fake CPU devices so mesh code runs without accelerators, one persistent
compilation cache for the session, and XLA:CPU's LLVM at -O0; `fake_hub`, a Hugging Face Hub served
from local directories.

The flags must be set before JAX creates its backend, so they live here, at
import time of the test session. The cache is a fresh temporary directory, named in the
environment so that pytest-xdist's workers (`make test` runs two) and the `mmjax` processes
that tests start share it: many tests compile the same tiny programs (the CLI's train step
above all), and XLA:CPU compiles dominate the suite.
"""
import atexit
import fnmatch
import os
import shutil
import tempfile

import jax
import pytest

_CACHE = os.environ.get("MMJAX_TEST_JAX_CACHE")
if _CACHE is None:  # the first process of the session (pytest-xdist's workers inherit it)
    _CACHE = tempfile.mkdtemp(prefix="mmjax-test-jax-cache-")
    os.environ["MMJAX_TEST_JAX_CACHE"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# LLVM at -O0 for XLA:CPU: the tests' programs are tiny, so compiling them is most of their time, and -O0
# compiles them in about half the time (tests/test_models.py and tests/test_flamingo.py: 367 -> 270 CPU-s,
# 194 -> 148 s on two workers). Set before JAX makes its backend; `mmjax` processes the tests start inherit it.
# A device count in the caller's XLA_FLAGS is dropped: the tests and their processes choose their own.
_FLAGS = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
          if not flag.startswith("--xla_force_host_platform_device_count")]
if not any(flag.startswith("--xla_backend_optimization_level") for flag in _FLAGS):
    _FLAGS.append("--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = " ".join(_FLAGS)

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """`hf:fake/NAME` served from `tmp_path/hub/NAME`: huggingface_hub's `snapshot_download` copies the files its
    `allow_patterns` match into a fresh directory and records the patterns of each call (the list returned)."""
    import huggingface_hub

    calls = []

    def snapshot_download(name, revision=None, allow_patterns=None):
        calls.append(list(allow_patterns))
        repo, out = tmp_path / "hub" / name.split("/")[1], tmp_path / "downloads" / str(len(calls))
        for file in repo.rglob("*"):
            if file.is_file() and any(fnmatch.fnmatch(file.name, pattern) for pattern in allow_patterns):
                (out / file.relative_to(repo)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, out / file.relative_to(repo))
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls
