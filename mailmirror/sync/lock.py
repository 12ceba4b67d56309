"""One sync per replica pair at a time: an flock on a file beside the state database.

cron runs and `mailmirror watch` take the same lock, so they never act on a pair together.
A second run waits up to a timeout, then gives up with LockedError (exit 3). The kernel drops
the lock when a holder dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailmirror.errors import LockedError


@contextmanager
def pair_lock(state_path: Path, id_one: str, id_two: str, timeout: float) -> Iterator[None]:
    """Hold the lock of the pair {id_one, id_two} (order does not matter)."""
    low, high = sorted((id_one, id_two))
    lock_dir = state_path.parent / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{low}-{high}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"another sync of this pair is running (lock {path}); it was waited for "
                        f"{timeout:g} s: try again later or raise --lock-timeout") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
