"""Network storage told from the mount table (`mmjax.data.filesystems`), on a mount table written here."""

import pytest

from mmjax.data.filesystems import filesystem_type, on_network_storage

MOUNTS = """/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
server:/export /mnt/nfs nfs4 rw,vers=4.2 0 0
my-bucket /mnt/my\\040bucket fuse.gcsfuse rw,user_id=0 0 0
/dev/sdb1 /mnt/windows fuseblk rw 0 0
tmpfs /mnt/nfs/cache tmpfs rw 0 0
"""


@pytest.mark.parametrize("path, kind, network", [
    ("/home/me/data", "ext4", False),
    ("/mnt/nfs/laion/shards", "nfs4", True),
    ("/mnt/nfs", "nfs4", True),
    ("/mnt/nfsother/data", "ext4", False),  # a sibling whose name starts like the mount point
    ("/mnt/my bucket/cc3m", "fuse.gcsfuse", True),  # the mount point's space is written \\040
    ("/mnt/windows/data", "fuseblk", False),  # a local disk through FUSE
    ("/mnt/nfs/cache/shards", "tmpfs", False),  # the longest mount point above the path wins
])
def test_the_mount_holding_a_path_tells_its_filesystem(path, kind, network):
    assert filesystem_type(path, MOUNTS) == kind
    assert on_network_storage(path, MOUNTS) == network


def test_without_a_mount_table_nothing_is_network_storage(tmp_path, monkeypatch):
    monkeypatch.setattr("mmjax.data.filesystems.MOUNTS_FILE", str(tmp_path / "absent"))
    assert filesystem_type(str(tmp_path)) is None and not on_network_storage(str(tmp_path))
