"""Whether a path lies on network storage, from the mount table (Linux `/proc/self/mounts`).

Reading a batch's records pays off differently there: on network storage (NFS, a FUSE bucket mount such as
gcsfuse, Lustre) each read waits on the network, and reading many at once in threads hides it; on a local disk
a read is a memory copy, and the threads cost more CPU than they save (`mmjax.data.arrayrecord_source`).
"""

from __future__ import annotations

import os
import re

# Types (before any ".subtype": gcsfuse mounts as "fuse.gcsfuse") of filesystems whose reads cross a network, or a
# virtual machine's boundary (9p, virtiofs). "fuseblk" (a local disk through FUSE, e.g. NTFS) is not among them,
# nor are the FUSE filesystems in `LOCAL_FUSE` (rootless containers' overlays, images, unions of local folders).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse", "lustre", "gpfs", "ceph", "glusterfs", "9p",
                       "beegfs", "afs", "davfs", "orangefs", "virtiofs", "wekafs", "panfs")
LOCAL_FUSE = ("fuse.fuse-overlayfs", "fuse.squashfuse", "fuse.bindfs", "fuse.mergerfs")
MOUNTS_FILE = "/proc/self/mounts"


def _unescape(field: str) -> str:
    """A mount table field with its octal escapes (`\\040` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem that holds `path` ("ext4", "fuse.gcsfuse", …): `mount_type` of its real path in
    `MOUNTS_FILE`; None where there is no mount table (not Linux)."""
    try:
        with open(MOUNTS_FILE, encoding="utf-8", errors="surrogateescape") as f:
            mounts = f.read()
    except OSError:
        return None
    return mount_type(os.path.realpath(path), mounts)


def mount_type(real: str, mounts: str) -> str | None:
    """The type of the mount with the longest mount point above the absolute, resolved path `real` in `mounts`
    (the text of `/proc/self/mounts`; the later of two mounts on one point, which covers the earlier)."""
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def is_network_type(kind: str | None) -> bool:
    """Whether a filesystem of type `kind` (None: unknown) reads across a network (`NETWORK_FILESYSTEMS`)."""
    return kind is not None and kind not in LOCAL_FUSE and kind.split(".")[0] in NETWORK_FILESYSTEMS


def on_network_storage(path: str) -> bool:
    """Whether `path` lies on network storage (`filesystem_type`, `is_network_type`)."""
    return is_network_type(filesystem_type(path))
