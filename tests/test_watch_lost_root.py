"""`watch` treats a local maildir that vanishes while its watch starts (a disk unmounted, the
directory renamed away) as a lost pair to reopen later, never as a crash of the whole watch."""

from __future__ import annotations

import shutil
from pathlib import Path

from mailmirror.replica.local import open_local
from mailmirror.watch.live import Live, WatchOptions, _Slot


def test_a_root_gone_before_its_watch_starts_is_a_lost_pair(tmp_path: Path) -> None:
    root = tmp_path / "B"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    replica = open_local(str(root), "maildir++", ":")
    shutil.rmtree(root)  # gone between opening the replica and watching it
    live = Live(runner=None, jobs=[], options=WatchOptions(),  # type: ignore[arg-type]
                log=lambda line: None)
    slot = _Slot(job=None, pair=object())  # type: ignore[arg-type]

    live._start_source(0, slot, 1, replica, str(root))

    index, epoch, kind, detail = live.events.get_nowait()
    assert (index, epoch, kind) == (0, slot.epoch, "lost"), (kind, detail)
    assert str(root) in str(detail) and "cannot watch" in str(detail), detail
    assert slot.sources == []
