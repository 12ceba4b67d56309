"""The crash switch, for tests only: `MAILMIRROR_CRASH_AFTER=N` SIGKILLs the process right after
its N-th file operation (create in tmp/, write, flush, rename, unlink, mkdir, state commit).

The crash-point sweep (tests/faults/test_crash_sweep.py) runs a sync with N = 1, 2, ... to stop
it between any two steps, on the client and on the agent. The variable is read here, once, at
import, and nowhere else; unset (always, outside tests) a file operation costs one test of an
integer. Never set it on a real mailbox: the process kills itself mid-sync on purpose.
"""

from __future__ import annotations

import os
import signal

ENV = "MAILMIRROR_CRASH_AFTER"
_limit = int(os.environ.get(ENV) or 0)
_count = 0


def after(what: str) -> None:
    """Count one finished file operation; `what` names it in the last words of a crash."""
    global _count
    if not _limit:
        return
    _count += 1
    if _count >= _limit:
        os.write(2, f"mailmirror: {ENV}: killed after file operation {_count} ({what})\n"
                 .encode())
        os.kill(os.getpid(), signal.SIGKILL)
