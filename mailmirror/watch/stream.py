"""The agent's side of live mode: after a `watch` request its connection carries only change
notifications (docs/protocol.md, "Live mode"), until the client closes it.

Events are coalesced for a moment so a burst of renames becomes one frame. A heartbeat every
HEARTBEAT seconds of quiet lets the client tell an idle agent from a dead one. Nothing here
touches a message: the client's next sync does the listing and the work.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import BinaryIO

from mailmirror.replica.local import LocalReplica
from mailmirror.transport.protocol import encode_frame
from mailmirror.watch.observe import FolderWatcher, WatchLimit

HEARTBEAT = 30.0  # seconds of quiet between "alive" frames
COALESCE = 0.02  # seconds of quiet that end a frame's gathering
COALESCE_LIMIT = 0.2  # a long burst still sends a frame this often


def stream_changes(replica: LocalReplica, rid: object, stdin: BinaryIO,
                   stdout: BinaryIO) -> int:
    """Send change notifications for `replica` until the client closes stdin; exit status."""
    changes: queue.Queue[set[str] | None] = queue.Queue()
    closed = threading.Event()

    def wait_for_eof() -> None:
        try:
            while stdin.read(1 << 16):
                pass  # nothing is expected after `watch`; EOF means the client is gone
        except OSError:
            pass
        closed.set()
        changes.put(set())

    def send(header: dict) -> None:
        stdout.write(encode_frame({"id": rid, "ok": True, **header}))
        stdout.flush()

    threading.Thread(target=wait_for_eof, name="mailmirror-eof", daemon=True).start()
    watcher = FolderWatcher(replica.root, replica.layout, changes.put,
                            lambda: changes.put(None))
    try:
        watcher.start()
    except WatchLimit as exc:
        send({"event": "unavailable", "error": f"cannot watch {replica.root}: {exc.strerror}"})
        return 1
    try:
        while not closed.is_set():
            try:
                first = changes.get(timeout=HEARTBEAT)
            except queue.Empty:
                send({"event": "alive"})
                continue
            folders, lost = gather(changes, first, COALESCE, COALESCE_LIMIT)
            if lost:
                send({"event": "overflow"})
            elif folders and not closed.is_set():
                send({"event": "changed", "folders": sorted(folders)})
    except OSError:
        pass  # the client went away while we wrote: nothing to clean up
    finally:
        watcher.stop()
    return 0


def gather(changes: queue.Queue[set[str] | None], first: set[str] | None, pause: float,
           limit: float) -> tuple[set[str], bool]:
    """Collect `first` and whatever arrives until `pause` seconds pass quietly, or `limit`.

    Returns (folders, lost); lost means the kernel dropped events (None in the queue).
    """
    deadline = time.monotonic() + limit
    folders: set[str] = set()
    lost = False
    item: set[str] | None = first
    while True:
        if item is None:
            lost = True
        else:
            folders |= item
        left = deadline - time.monotonic()
        if left <= 0:
            return folders, lost
        try:
            item = changes.get(timeout=min(pause, left))
        except queue.Empty:
            return folders, lost
