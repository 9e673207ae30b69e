"""Writing files whole or not at all, and a full disk said in one line naming the file (`mmjax.files`); the
training metrics and the evaluation results go through it."""

import errno
import os

import pytest

from mmjax.files import naming_the_file, write_atomically, write_text_atomically

FULL = "/dev/full"  # Linux: every write fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not os.path.exists(FULL), reason="needs Linux's /dev/full")


@needs_dev_full
def test_a_full_disk_met_by_a_flush_names_the_file_being_written():
    with pytest.raises(OSError) as raised, naming_the_file("runs/x/metrics.jsonl"):
        with open(FULL, "w") as f:
            f.write("a line\n")
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, "runs/x/metrics.jsonl")
    assert str(raised.value) == "[Errno 28] No space left on device: 'runs/x/metrics.jsonl'"


@pytest.mark.parametrize("error", [
    RuntimeError("write() failed: No space left on device; writing d/shard-00000.array_record.tmp-1; at byte 65536"),
    Exception("Error while serializing: IoError(Os { code: 122, kind: FilesystemQuotaExceeded, message: "
              "\"Disk quota exceeded\" })"),
])
def test_a_librarys_error_carrying_the_systems_full_disk_message_becomes_one_naming_the_file(error):
    with pytest.raises(OSError) as raised, naming_the_file("d/shard-00000.array_record"):
        raise error
    code = errno.EDQUOT if "quota" in str(error) else errno.ENOSPC
    assert (raised.value.errno, raised.value.filename) == (code, "d/shard-00000.array_record")


@pytest.mark.parametrize("error", [ValueError("bad value"), RuntimeError("open() failed"),
                                   FileNotFoundError(errno.ENOENT, "No such file or directory", "elsewhere"),
                                   OSError("cannot write mode F as PNG"), OSError(errno.EIO, "Input/output error")])
def test_other_errors_pass_unchanged(error):
    with pytest.raises(type(error)) as raised, naming_the_file("d/file"):
        raise error
    assert raised.value is error


@needs_dev_full
def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_text_atomically(str(path), "old\n")

    def write(temporary):
        with open(temporary, "w") as f:
            f.write("half of the ")
        with open(FULL, "w") as f:  # the disk fills up
            f.write("new results\n")

    with pytest.raises(OSError, match=r"^\[Errno 28\] No space left on device: '.*results.json'$"):
        write_atomically(str(path), write)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["results.json"]


def test_training_metrics_that_cannot_be_written_name_their_directory(tmp_path):
    from mmjax.train.metrics import MetricsWriter

    class FullDisk:  # tensorboardX's writer, flushing its queue onto a full disk
        def close(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer = MetricsWriter(str(tmp_path), total_steps=4, initial_step=0)
    writer.tensorboard.close()
    writer.tensorboard = FullDisk()
    with pytest.raises(OSError) as raised:
        writer.flush(2)
    assert raised.value.filename == str(tmp_path / "tensorboard") and raised.value.errno == errno.ENOSPC


def test_results_are_written_through_a_link_and_into_what_is_not_a_file(tmp_path):
    import json

    from mmjax.eval.report import write_results

    (tmp_path / "runs").mkdir()
    (tmp_path / "latest.json").symlink_to(tmp_path / "runs" / "results.json")
    write_results(tmp_path / "latest.json", {"acc1": 0.5})
    assert (tmp_path / "latest.json").is_symlink()
    assert json.loads((tmp_path / "runs" / "results.json").read_text()) == {"acc1": 0.5}
    write_results(os.devnull, {"acc1": 0.5})  # `--output /dev/stdout` and the like: written to, not replaced
    assert not os.path.isfile(os.devnull)
