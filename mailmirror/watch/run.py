"""`mailmirror watch` around the live loop: output, signals and the runner's lifetime.

On a terminal a status line stays at the bottom and state changes print above it; otherwise
(systemd, a pipe) every line carries a timestamp. SIGINT and SIGTERM end the loop after the
slice being synced is recorded; a second signal ends the process at once (safe too: a killed
sync leaves nothing half-written, see docs/spec.md).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import FrameType

from mailmirror.errors import EXIT_OK
from mailmirror.jobs import Job, Runner, Settings
from mailmirror.watch.live import Live, WatchOptions


def watch_forever(jobs: list[Job], settings: Settings, interval: float, poll: float,
                  tty: bool) -> int:
    """Run until a signal; the exit status. Fatal errors (state store, usage) raise."""
    options = WatchOptions(interval=interval, poll=poll)
    with _output(tty) as (log, status):
        with Runner(replace(settings, options=replace(settings.options, progress=None)),
                    log) as runner:
            live = Live(runner, jobs, options, log, status)
            with _signals(live, log):
                live.run()
            log(f"stopped after {live.syncs} syncs")
    return EXIT_OK


@contextmanager
def _signals(live: Live, log: Callable[[str], None]) -> Iterator[None]:
    def stop(signum: int, frame: FrameType | None) -> None:
        live.stop.set()
        live.wake()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            log(f"{signal.Signals(signum).name}: finishing the current step, then stopping")
        except RuntimeError:  # it came in the middle of another line on stderr (reentrant)
            pass

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def _output(tty: bool) -> Iterator[tuple[Callable[[str], None], Callable[[str], None] | None]]:
    if not tty:
        def log(line: str) -> None:
            print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} mailmirror: {line}", file=sys.stderr,
                  flush=True)

        yield log, None
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True)
    with console.status("starting") as line:
        def show(text: str) -> None:
            line.update(text)

        def log_tty(text: str) -> None:
            console.print(Text.assemble((time.strftime("%H:%M:%S"), "dim"), " ", text))

        yield log_tty, show
