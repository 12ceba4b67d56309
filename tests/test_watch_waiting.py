"""`watch` syncs a pair again soon after a sync left messages waiting (spec.md F14): a client
was moving them while it listed, and no further event may come to wake it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mailmirror.sync.engine import SyncOptions, SyncReport
from mailmirror.sync.model import Side
from mailmirror.watch.live import WAITING_RETRY, Live, WatchOptions, _Slot


@dataclass
class Settings:
    options: SyncOptions = field(default_factory=SyncOptions)


class Runner:
    """What Live uses of jobs.Runner: reports that leave `waiting` messages, in turn."""

    def __init__(self, waiting: list[int]) -> None:
        self.settings = Settings()
        self.waiting = waiting

    def sync_pair(self, pair: object, options: SyncOptions) -> SyncReport:
        report = SyncReport({Side.A: "a", Side.B: "b"})
        report.waiting = self.waiting.pop(0)
        return report


def test_a_sync_that_left_messages_waiting_is_followed_by_another() -> None:
    live = Live(Runner([3, 0]), [], WatchOptions(), log=lambda line: None)  # type: ignore[arg-type]
    slot = _Slot(job=None, pair=object())  # type: ignore[arg-type]
    before = time.monotonic()
    live._sync(0, slot)
    assert slot.dirty
    assert before + WAITING_RETRY <= slot.retry_at <= time.monotonic() + WAITING_RETRY
    live._sync(0, slot)
    assert not slot.dirty and slot.retry_at == 0.0
