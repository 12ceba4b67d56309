"""Low-level file operations Maildir safety rests on: no-clobber rename and batch durability.

`rename_noreplace` is atomic and refuses to overwrite (Linux renameat2 RENAME_NOREPLACE, with a
link+unlink fallback on file systems without it). `sync_filesystem` is the one flush barrier a
batch of deliveries waits for, instead of one fsync round trip per message.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


@functools.cache
def _libc() -> ctypes.CDLL:
    """Loaded on first use: a sync with nothing to write never pays for it."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc: ask the loader (slower: may run ldconfig)
        from ctypes.util import find_library

        return ctypes.CDLL(find_library("c"), use_errno=True)


def rename_noreplace(source: str, target: str) -> None:
    """Rename atomically; FileExistsError if target exists, FileNotFoundError if source is gone."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is not None:
        rc = renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                        _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), source, None, target)
    # No renameat2 here (NFS, CIFS, many FUSE file systems): link refuses to clobber. A crash
    # between the two calls leaves a second name for the message, which the next run takes
    # for a duplicate (known gap: it gets a key of its own).
    os.link(source, target)
    linked = os.lstat(target).st_ino
    try:
        os.unlink(source)
    except OSError:
        # a mail client renamed the source meanwhile: take our name back, or the message
        # would have two
        if os.lstat(target).st_ino == linked:
            os.unlink(target)
        raise


def sync_filesystem(path: str) -> None:
    """Flush every dirty page of the file system holding `path` (syncfs), else all (sync)."""
    syncfs = getattr(_libc(), "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a temp file of a dead one is stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
