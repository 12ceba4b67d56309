"""File-event hints for live mode: which folders of a local maildir changed.

watchdog (inotify on Linux) watches the root recursively, asking the kernel only for creates,
deletes and renames, so mail clients reading messages cost nothing. Each event is mapped to a
folder (maildir.folders.folder_of_path); tmp/ and Dovecot's index files are dropped. Events are
hints: the sync that follows lists the folders itself. Lost events are made visible: an inotify
queue overflow calls on_overflow (the caller then syncs everything), and a watch limit reached
at start raises WatchLimit.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from mailmirror.maildir.folders import folder_of_path

EVENTS = [FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent, FileMovedEvent,
          DirMovedEvent]
# watchdog warns, in many lines on stderr, when a directory it watches is created again
# before its old watch is gone (a quarantine day, a folder renamed back): it replaces the
# callback, which is right; watch's log stays one line per change
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning,
                        module="watchdog")


class WatchLimit(OSError):
    """The kernel refused more inotify watches or instances; events cannot be trusted."""


class _Overflow(logging.Handler):
    """watchdog reports a kernel queue overflow only as a log record: turn it into a call."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.listeners: list[Callable[[], None]] = []
        self.guard = threading.Lock()  # not `lock`: logging.Handler holds that one in emit()

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            with self.guard:
                listeners = list(self.listeners)
            for listener in listeners:
                listener()


_overflow = _Overflow()
logging.getLogger("watchdog.observers.inotify_c").addHandler(_overflow)
logging.getLogger("watchdog.observers.inotify").addHandler(_overflow)


class FolderWatcher:
    """Calls on_change({folder, ...}) from watchdog's thread when folders of `root` change."""

    def __init__(self, root: Path, layout: str, on_change: Callable[[set[str]], None],
                 on_overflow: Callable[[], None]) -> None:
        self.root = os.fspath(root)
        self.layout = layout
        self.on_change = on_change
        self.on_overflow = on_overflow
        self._observer: Observer | None = None

    def start(self) -> None:
        """Start watching; raises WatchLimit when the kernel has no watches left."""
        handler = _Handler(self)
        observer = Observer()
        observer.schedule(handler, self.root, recursive=True, event_filter=EVENTS)
        with _overflow.guard:
            _overflow.listeners.append(self.on_overflow)
        before = _kernel_watches()
        try:
            observer.start()
        except OSError as exc:
            self._forget_overflow()
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                raise WatchLimit(exc.errno, f"{exc.strerror}: raise the limit with sysctl "
                                 "fs.inotify.max_user_watches / max_user_instances") from None
            raise
        self._observer = observer
        # watchdog skips subdirectories it cannot watch without a word; the kernel's own
        # count says whether every directory got its watch
        if _kernel_watches() - before < _directories(self.root):
            self.stop()
            raise WatchLimit(errno.ENOSPC, "inotify watch limit reached: raise it with sysctl "
                             "fs.inotify.max_user_watches")

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            self._forget_overflow()
            observer.stop()
            observer.join(timeout=5)

    def _forget_overflow(self) -> None:
        with _overflow.guard:
            if self.on_overflow in _overflow.listeners:
                _overflow.listeners.remove(self.on_overflow)

    def folders_of(self, event: FileSystemEvent) -> set[str]:
        out = set()
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if not path:
                continue
            rel = os.path.relpath(os.fsdecode(path), self.root)
            if rel == "." or rel.startswith(".." + os.sep):
                continue
            folder = folder_of_path(tuple(rel.split(os.sep)), event.is_directory,
                                    self.layout)
            if folder is not None:
                out.add(folder)
        return out


def _kernel_watches() -> int:
    """inotify watches this process holds, from /proc/self/fdinfo (0 where that is absent)."""
    count = 0
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                count += sum(line.startswith("inotify wd:") for line in info)
        except OSError:
            continue
    return count


def _directories(root: str) -> int:
    """The directories a recursive watch of `root` needs (symlinks are not followed)."""
    if not os.path.isdir("/proc/self/fdinfo"):
        return 0  # no way to count the kernel's watches: trust watchdog
    return 1 + sum(not os.path.islink(os.path.join(top, d))
                   for top, dirs, _ in os.walk(root) for d in dirs)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        folders = self.watcher.folders_of(event)
        if folders:
            self.watcher.on_change(folders)
