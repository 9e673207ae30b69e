"""Two JAX processes (jax.distributed on CPU) read disjoint parts of a data directory whose union is all of it."""
from __future__ import annotations

import pathlib

from test_data_pipeline import clean_dir
from test_multihost_eval import run_two_workers

REPO = pathlib.Path(__file__).resolve().parents[1]

WORKER = """
import json, sys
import jax
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
sys.path.insert(0, sys.argv[3])
import numpy as np
from mmjax.data.arrayrecord_source import RecordSource
from mmjax.data.decode import DecodeOptions
from mmjax.data.pipeline import records_train_dataset
from mmjax.data.tokenizers import Tokenizer
from test_data_pipeline import image_index
assert jax.process_count() == 2
dataset = records_train_dataset([RecordSource(sys.argv[4])], None, 3, 8, DecodeOptions(8, augment=False),
                                Tokenizer.for_synthetic(16), num_epochs=1)  # sharded by ShardByJaxProcess
print(json.dumps([int(i) for batch in dataset for i in image_index(batch["image"])]))
"""


def test_two_processes_read_disjoint_records_covering_the_data_set(tmp_path):
    clean_dir(tmp_path / "data", 70, per_shard=16)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    seen = run_two_workers(script, str(tmp_path / "data"))
    assert len(seen[0]) == len(seen[1]) == 35
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(70))
