"""Live mode when the kernel's inotify limits bite (issue 4): a queue overflow (events lost) is
detected and said, and the next sync covers everything; a watch limit reached at start makes
watch say so and poll instead. Both with a local B and with B behind the agent over SSH.

The limits are the real sysctls under /proc/sys/fs/inotify, changed for a moment (root only).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.e2e import watchkit
from tests.e2e.conftest import Pair
from tests.e2e.watchkit import has_message, watch_pair

pair = watchkit.narrowed_pair  # the pair fixture without "kept" (see watchkit)

INOTIFY = Path("/proc/sys/fs/inotify")
SETTLE = 20


@contextmanager
def inotify_limit(name: str, value: int) -> Iterator[None]:
    path = INOTIFY / name
    old = path.read_text()
    try:
        path.write_text(str(value))
    except OSError:
        missing(f"a writable {path} (run as root)")
    try:
        yield
    finally:
        path.write_text(old)


def watchers_of(pair: Pair, watch_pid: int) -> list[int]:
    """The processes holding the inotify instances: the watch, and the agents serving B."""
    pids = [watch_pid]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent" in argv and os.fsencode(str(pair.b.root)) in argv:
            pids.append(int(pid))
    return pids


def test_lost_events_are_detected_and_synced(pair: Pair) -> None:
    if pair.transport == "sftp":
        return  # polled: there are no events to lose
    first = pair.a.save("first")
    with inotify_limit("max_queued_events", 16), watch_pair(pair) as watch:
        watch.wait_for(lambda: has_message(pair.b.root, first), SETTLE, "start-up sync")
        frozen = watchers_of(pair, watch.proc.pid)
        assert len(frozen) == (1 if pair.transport == "local" else 3), frozen
        for pid in frozen:  # nobody reads the queues while 100 messages change on each side
            os.kill(pid, signal.SIGSTOP)
        try:
            msgids = [side.save(f"while-frozen-{side.name}{i}")
                      for side in (pair.a, pair.b) for i in range(3)]
            for side in (pair.a, pair.b):
                for i, path in enumerate(sorted((side.root / "new").iterdir())):
                    if i < 100:
                        os.rename(path, path.parent.parent / "cur" / (path.name + ":2,S"))
                for i in range(100):
                    tmp = side.root / "tmp" / f"{side.name}{i}.burst"
                    tmp.write_bytes(f"Message-ID: <burst{side.name}{i}@e2e.test>\n\n".encode())
                    os.rename(tmp, side.root / "new" / tmp.name)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        watch.wait_log("file events were lost")
        watch.wait_for(lambda: all(has_message(side.root, m) for m in msgids
                                   for side in (pair.a, pair.b)), SETTLE, "convergence")
        assert watch.stop() == 0, watch.log()
    pair.assert_in_sync()


@pytest.mark.parametrize("limit", ["max_user_watches"])
def test_no_watches_left_means_polling(pair: Pair, limit: str) -> None:
    if pair.transport == "sftp":
        return  # polled anyway
    with inotify_limit(limit, 1):
        watch = watch_pair(pair, "--poll", "0.5")
        watch.wait_log("connected")
        watch.wait_log("polling every 0.5 s", count=2)  # neither side can watch
    with watch:
        on_a, on_b = pair.a.save("polled-a"), pair.b.save("polled-b")
        watch.wait_for(lambda: has_message(pair.b.root, on_a) and has_message(pair.a.root, on_b),
                       SETTLE, "changes seen by polling")
        assert watch.stop() == 0, watch.log()
    pair.assert_in_sync()
