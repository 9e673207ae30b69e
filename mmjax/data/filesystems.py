"""Whether a path lies on network storage, from the mount table (Linux `/proc/self/mounts`).

Reading a batch's records pays off differently there: on network storage (NFS, a FUSE bucket mount such as
gcsfuse, Lustre) each read waits on the network, and reading many at once in threads hides it; on a local disk
a read is a memory copy, and the threads cost more CPU than they save (`mmjax.data.arrayrecord_source`).
"""

from __future__ import annotations

import os
import re

# Types (before any ".subtype": gcsfuse mounts as "fuse.gcsfuse") of filesystems whose reads cross a network.
# "fuseblk" (a local disk through FUSE, e.g. NTFS) is not among them.
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse", "lustre", "gpfs", "ceph", "glusterfs", "9p",
                       "beegfs", "afs", "davfs", "orangefs", "virtiofs")
MOUNTS_FILE = "/proc/self/mounts"


def _unescape(field: str) -> str:
    """A mount table field with its octal escapes (`\\040` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def filesystem_type(path: str, mounts: str | None = None) -> str | None:
    """The type of the filesystem that holds `path` ("ext4", "fuse.gcsfuse", …): the mount with the longest mount
    point above its real path in `mounts` (the text of `/proc/self/mounts`, read when None); None where there is
    no mount table (not Linux)."""
    if mounts is None:
        try:
            with open(MOUNTS_FILE, encoding="utf-8", errors="replace") as f:
                mounts = f.read()
        except OSError:
            return None
    real, best, kind = os.path.realpath(path), "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def on_network_storage(path: str, mounts: str | None = None) -> bool:
    """Whether `path` lies on a filesystem whose reads cross a network (`NETWORK_FILESYSTEMS`)."""
    kind = filesystem_type(path, mounts)
    return kind is not None and kind.split(".")[0] in NETWORK_FILESYSTEMS
