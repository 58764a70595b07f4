"""The few file operations that make bytes durable, shared by the ledger (ledger.py) and the checkpoint.

Why one module: both stores need the same three steps (write a whole buffer, fsync a file, fsync the
directory that names it), and a copy that forgets a step loses data only on a power cut, where no test
sees it. Every call here blocks on the disk: none of them belongs on the event loop, except `write_all`
on a page-cache append (the ledger's hot path).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data`; a regular file only writes short on ENOSPC/EFBIG, which then raises next round."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_path(path: Path) -> None:
    """fsync a file by name (one written through another descriptor, or by the previous process)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so the files created, renamed or deleted in it stay so after a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def discard(path: Path) -> None:
    """Remove `path` if it is there: a temp file whose rename never happened holds nothing that counts."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def replace_durably(path: Path, data: bytes) -> None:
    """Make `data` the content of `path` all at once: temp file, fsync, rename, fsync of the directory.

    A crash leaves either the old file or the new one, never a mix; once this returns the new one stays.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)  # the rename itself is durable before anyone relies on it


__all__ = ["discard", "fsync_dir", "fsync_path", "replace_durably", "write_all"]
