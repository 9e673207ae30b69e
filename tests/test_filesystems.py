"""Network storage told from the mount table (`mmjax.data.filesystems`), on a mount table written here."""

import os

import pytest

from mmjax.data import filesystems
from mmjax.data.filesystems import filesystem_type, is_network_type, mount_type, on_network_storage

MOUNTS = """/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
server:/export /mnt/nfs nfs4 rw,vers=4.2 0 0
my-bucket /mnt/my\\040bucket fuse.gcsfuse rw,user_id=0 0 0
/dev/sdb1 /mnt/windows fuseblk rw 0 0
tmpfs /mnt/nfs/cache tmpfs rw 0 0
systemd-1 /data autofs rw 0 0
server:/data /data nfs4 rw 0 0
fuse-overlayfs /home/me/containers fuse.fuse-overlayfs rw 0 0
"""


@pytest.mark.parametrize("path, kind, network", [
    ("/home/me/data", "ext4", False),
    ("/mnt/nfs/laion/shards", "nfs4", True),
    ("/mnt/nfs", "nfs4", True),
    ("/mnt/nfsother/data", "ext4", False),  # a sibling whose name starts like the mount point
    ("/mnt/my bucket/cc3m", "fuse.gcsfuse", True),  # the mount point's space is written \\040
    ("/mnt/windows/data", "fuseblk", False),  # a local disk through FUSE
    ("/mnt/nfs/cache/shards", "tmpfs", False),  # the longest mount point above the path wins
    ("/data/laion", "nfs4", True),  # an automount point, mounted: the later mount covers the autofs one
    ("/home/me/containers/data", "fuse.fuse-overlayfs", False),  # a rootless container's overlay
])
def test_the_mount_holding_a_path_tells_its_filesystem(path, kind, network):
    assert mount_type(path, MOUNTS) == kind
    assert is_network_type(kind) == network


def test_a_path_is_looked_up_by_its_real_path_in_the_mount_table(tmp_path, monkeypatch):
    table = tmp_path / "mounts"
    (tmp_path / "share").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "share")
    table.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/x {os.path.realpath(tmp_path / 'share')} nfs4 rw 0 0\n")
    monkeypatch.setattr(filesystems, "MOUNTS_FILE", str(table))
    assert filesystem_type(str(tmp_path / "link" / "shards")) == "nfs4"
    assert on_network_storage(str(tmp_path / "link")) and not on_network_storage(str(tmp_path))
    monkeypatch.setattr(filesystems, "MOUNTS_FILE", str(tmp_path / "absent"))
    assert filesystem_type(str(tmp_path)) is None and not on_network_storage(str(tmp_path))
