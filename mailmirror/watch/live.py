"""Live mode: keep replica pairs in sync within about a second, both ways.

One loop owns every pair of the invocation. Change hints from each side land in one queue: the
FolderWatcher of a local maildir, the agent's notifications over a second channel of the same
SSH connection, or a poll timer (SFTP, or when the kernel refuses more watches). After a short
debounce the pairs with hints are synced by the same engine, lock and store as `mailmirror
sync` (so cron and watch can overlap); the engine lists only folders whose directory times
moved. A periodic sync backstops lost events. A pair whose remote fails is retried with capped
exponential backoff, trying its candidates in order, so a laptop falls over to the backup and
returns to main when main answers again. Errors are logged as one line per state change.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mailmirror.errors import LockedError, MailmirrorError, SafetyStop, StoreError, UsageError
from mailmirror.jobs import Job, Pair, Runner
from mailmirror.replica.base import Replica
from mailmirror.replica.local import LocalReplica
from mailmirror.replica.remote import AgentReplica, WatchUnavailable
from mailmirror.watch.observe import FolderWatcher, WatchLimit

WAITING_RETRY = 2.5
"""Seconds before a pair that left messages waiting (moved while listed) is synced again: past
the sync's 2 s margin, their folders' mtimes tell again."""

Log = Callable[[str], None]


@dataclass(frozen=True)
class WatchOptions:
    interval: float = 600.0  # seconds between backstop syncs of every pair
    poll: float = 5.0  # seconds between polls where no events are available (SFTP)
    debounce: float = 0.05  # quiet time that ends a burst of events
    debounce_limit: float = 0.5  # a long burst is still synced this often
    backoff_first: float = 1.0
    backoff_max: float = 60.0


@dataclass
class _Slot:
    """One job's live state: its open pair, its event sources and when to act next."""

    job: Job
    pair: Pair | None = None
    candidate: int = 0  # index of the B in use among the job's candidates
    address: str | None = None  # the B last connected to, kept while offline
    epoch: int = 0  # events carry the epoch of their sources; older ones are stale
    sources: list[Callable[[], None]] = field(default_factory=list)  # stop functions
    dirty: bool = True
    retry_at: float = 0.0
    delay: float = 0.0
    stopped_by: str = ""  # a safety stop's message, until a sync succeeds again
    synced_at: float = 0.0  # wall clock of the last sync that completed


class Live:
    """Runs every job of one `mailmirror watch` until `stop` is set."""

    def __init__(self, runner: Runner, jobs: list[Job], options: WatchOptions, log: Log,
                 status: Callable[[str], None] | None = None) -> None:
        self.runner = runner
        self.slots = [_Slot(job) for job in jobs]
        self.options = options
        self.log = log
        self.status = status
        self.events: queue.Queue[tuple[int, int, str, object]] = queue.Queue()
        self.stop = threading.Event()
        self.syncs = 0

    def wake(self) -> None:
        """Make the loop look at `stop` now (from a signal handler or another thread)."""
        self.events.put((-1, -1, "wake", None))

    def run(self) -> None:
        """Sync every pair, then follow events until stop is set; raises only fatal errors."""
        next_backstop = time.monotonic() + self.options.interval
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_backstop:
                next_backstop = now + self.options.interval
                for i, slot in enumerate(self.slots):
                    slot.dirty = True
                    if slot.pair is not None and slot.candidate > 0:
                        self._try_preferred(i, slot)
            for i, slot in enumerate(self.slots):
                if self.stop.is_set():
                    break
                if slot.pair is None and now >= slot.retry_at:
                    self._connect(i, slot)
                if slot.pair is not None and slot.dirty and now >= slot.retry_at:
                    self._sync(i, slot)
            self._show()
            self._wait(next_backstop)
        for slot in self.slots:
            self._close(slot)

    # -- events ----------------------------------------------------------------------------
    def _wait(self, next_backstop: float) -> None:
        """Block until an event arrives or something is due, then gather the burst."""
        due = [next_backstop] + [s.retry_at for s in self.slots if s.retry_at > 0
                                 and (s.pair is None or s.dirty)]
        if any(s.dirty and s.pair is not None and s.retry_at <= time.monotonic()
               for s in self.slots):
            return
        timeout = max(0.0, min(due) - time.monotonic())
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        deadline = time.monotonic() + self.options.debounce_limit
        while True:
            self._take(*item)
            left = deadline - time.monotonic()
            if self.stop.is_set() or left <= 0:
                return
            try:
                item = self.events.get(timeout=min(self.options.debounce, left))
            except queue.Empty:
                return

    def _take(self, i: int, epoch: int, kind: str, detail: object) -> None:
        if i < 0:
            return
        slot = self.slots[i]
        if epoch != slot.epoch:
            return  # from sources of a connection that is gone
        if kind == "changed":
            slot.dirty = True
        elif kind == "overflow":
            self.log(f"{self._name(slot)}: file events were lost ({detail}): syncing every "
                     "folder")
            slot.dirty = True
        elif kind == "lost":
            self._lose(slot, str(detail))

    def _post(self, i: int, epoch: int, kind: str, detail: object = None) -> None:
        self.events.put((i, epoch, kind, detail))

    # -- connections -----------------------------------------------------------------------
    def _connect(self, i: int, slot: _Slot) -> None:
        try:
            pair = self.runner.open_pair(slot.job)
        except (MailmirrorError, OSError) as exc:
            if isinstance(exc, UsageError):
                raise
            self._backoff(slot, f"cannot connect: {_line(exc)}")
            return
        self._attach(i, slot, pair)

    def _try_preferred(self, i: int, slot: _Slot) -> None:
        """On a later candidate (the backup): go back to an earlier one if it answers now."""
        current = slot.pair
        assert current is not None
        candidates = self.runner.candidates(slot.job)
        for index in range(slot.candidate):
            try:
                b = self.runner.open(candidates[index], slot.job.remote_command)
            except (MailmirrorError, OSError):
                continue
            self._close(slot)
            self.runner.close(current.b)
            self.runner.drop(current.b_address, keep=candidates[index])
            self._attach(i, slot, Pair(slot.job, current.a, b, candidates[index]))
            return

    def _attach(self, i: int, slot: _Slot, pair: Pair) -> None:
        candidates = self.runner.candidates(slot.job)
        before, slot.address = slot.address, pair.b_address
        slot.pair = pair
        slot.candidate = candidates.index(pair.b_address)
        slot.epoch += 1
        slot.dirty = True
        slot.delay = 0.0
        slot.retry_at = 0.0
        if before is None:
            self.log(f"connected: {self._name(slot)}")
        elif before != pair.b_address:
            self.log(f"remote switched: {self._name(slot)} (was {before})")
        else:
            self.log(f"reconnected: {self._name(slot)}")
        for side, replica, address in ((0, pair.a, slot.job.a), (1, pair.b, pair.b_address)):
            self._start_source(i, slot, side, replica, address)

    def _start_source(self, i: int, slot: _Slot, side: int, replica: Replica,
                      address: str) -> None:
        epoch = slot.epoch
        label = replica.label
        if isinstance(replica, LocalReplica):
            watcher = FolderWatcher(
                replica.root, replica.layout,
                lambda folders: self._post(i, epoch, "changed", folders),
                lambda: self._post(i, epoch, "overflow", f"{label}: inotify queue overflow"))
            try:
                watcher.start()
            except WatchLimit as exc:
                self._say_polling(f"{label}: cannot watch for changes ({exc.strerror})")
            except OSError as exc:
                # the maildir went away between opening and watching it (a disk unmounted,
                # a directory renamed): as a dropped connection, reopened with backoff
                self._post(i, epoch, "lost", f"{label}: cannot watch ({exc.strerror})")
                return
            else:
                slot.sources.append(watcher.stop)
                return
        elif isinstance(replica, AgentReplica):
            try:
                notifier = self.runner.open(address, slot.job.remote_command)
            except (MailmirrorError, OSError) as exc:
                self._say_polling(f"{label}: no live notifications ({_line(exc)})")
            else:
                assert isinstance(notifier, AgentReplica)
                thread = threading.Thread(target=self._follow, args=(i, epoch, notifier),
                                          name=f"mailmirror-notify-{i}-{side}", daemon=True)
                thread.start()
                slot.sources.append(notifier.close)
                return
        self._start_poll(i, slot)

    def _follow(self, i: int, epoch: int, notifier: AgentReplica) -> None:
        try:
            for folders in notifier.watch():
                if folders is None:
                    self._post(i, epoch, "overflow", f"{notifier.label}: the agent's event "
                               "queue overflowed")
                elif folders:
                    self._post(i, epoch, "changed", folders)
        except WatchUnavailable as exc:
            self._say_polling(_line(exc))
            self._poll_until(i, epoch)
        except (MailmirrorError, OSError) as exc:
            self._post(i, epoch, "lost", _line(exc))

    def _say_polling(self, why: str) -> None:
        self.log(f"{why}; polling every {self.options.poll:g} s instead")

    def _start_poll(self, i: int, slot: _Slot) -> None:
        thread = threading.Thread(target=self._poll_until, args=(i, slot.epoch),
                                  name=f"mailmirror-poll-{i}", daemon=True)
        thread.start()

    def _poll_until(self, i: int, epoch: int) -> None:
        """A change hint every `poll` seconds while this connection (epoch) lasts."""
        slot = self.slots[i]
        while not self.stop.wait(self.options.poll) and slot.epoch == epoch:
            self._post(i, epoch, "changed", None)

    def _lose(self, slot: _Slot, why: str) -> None:
        if slot.pair is None:
            return
        self.log(f"lost: {self._name(slot)}: {why}")
        address = slot.pair.b_address
        self._close(slot)
        self.runner.drop(address)
        self.runner.drop(slot.job.a)
        slot.pair = None
        slot.epoch += 1
        # the first retry comes soon, and its failure is said (then they back off quietly)
        slot.delay = 0.0
        slot.retry_at = time.monotonic() + self.options.backoff_first

    def _backoff(self, slot: _Slot, why: str | None) -> None:
        first = slot.delay == 0.0
        slot.delay = min(self.options.backoff_max,
                         max(self.options.backoff_first, slot.delay * 2))
        slot.retry_at = time.monotonic() + slot.delay
        if why is not None and first:
            self.log(f"{self._name(slot)}: {why}; retrying with backoff up to "
                     f"{self.options.backoff_max:g} s")

    def _close(self, slot: _Slot) -> None:
        sources, slot.sources = slot.sources, []
        for stop in sources:
            try:
                stop()
            except (MailmirrorError, OSError):
                pass

    # -- syncing ---------------------------------------------------------------------------
    def _sync(self, i: int, slot: _Slot) -> None:
        pair = slot.pair
        assert pair is not None
        slot.dirty = False
        options = replace(self.runner.settings.options, should_stop=self.stop.is_set)
        try:
            report = self.runner.sync_pair(pair, options)
        except LockedError as exc:
            slot.dirty = True
            self._backoff(slot, _line(exc))
            return
        except SafetyStop as exc:
            if slot.stopped_by != str(exc):
                self.log(f"stopped: {_line(exc)} (retried every {self.options.interval:g} s)")
            slot.stopped_by = str(exc)
            slot.dirty = True
            slot.retry_at = time.monotonic() + self.options.interval
            return
        except (StoreError, sqlite3.Error):
            raise
        except (MailmirrorError, OSError) as exc:
            if isinstance(exc, UsageError):
                raise
            self._lose(slot, _line(exc))
            return
        self.syncs += 1
        slot.delay = 0.0
        slot.retry_at = 0.0
        if report.waiting:
            # messages a client was moving: their folders settle within the margin
            slot.dirty = True
            slot.retry_at = time.monotonic() + WAITING_RETRY
        if slot.stopped_by:
            self.log(f"resumed: {self._name(slot)}")
            slot.stopped_by = ""
        slot.synced_at = time.time()
        for line in report.notices:
            self.log(f"{self._name(slot)}: {line}")
        for line in report.skipped:
            self.log(f"skipped: {line}")
        if report.counts:
            changes = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
            self.log(f"synced {self._name(slot)}: {changes} ({report.seconds:.2f} s)")

    # -- output ----------------------------------------------------------------------------
    def _name(self, slot: _Slot) -> str:
        b = slot.pair.b_address if slot.pair else " | ".join(slot.job.candidates)
        return f"{slot.job.a} <-> {b}"

    def _show(self) -> None:
        if self.status is None:
            return
        parts = []
        for slot in self.slots:
            if slot.pair is None:
                wait = max(0.0, slot.retry_at - time.monotonic())
                parts.append(f"{slot.job.a}: offline, retry in {wait:.0f} s")
            elif slot.stopped_by:
                parts.append(f"{slot.job.a}: stopped (safety)")
            elif slot.synced_at:
                when = time.strftime("%H:%M:%S", time.localtime(slot.synced_at))
                parts.append(f"{slot.job.a} <-> {slot.pair.b_address}: synced at {when}")
            else:
                parts.append(f"{slot.job.a} <-> {slot.pair.b_address}: syncing")
        self.status(" | ".join(parts))


def _line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
