"""`mailmirror watch` as a background process for the live-mode tests: its log lines as they
come, waiting for a condition with a deadline, and stopping it with a signal.
"""

from __future__ import annotations

import mailbox
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import MAILMIRROR, TRANSPORTS, Cli, Pair, make_pair

# live mode holds its connection for as long as it runs: --keep-connection is sync's alone
WATCH_TRANSPORTS = tuple(t for t in TRANSPORTS if t != "kept")
narrowed_pair = pytest.fixture(params=WATCH_TRANSPORTS, name="pair")(make_pair)


class Watch:
    """One running `mailmirror watch`; use as a context manager (killed on exit if needed)."""

    def __init__(self, cli: Cli, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*cli.user.prefix, MAILMIRROR, "watch", *args], env=cli.env(env),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd="/", start_new_session=True)
        self.lines: list[str] = []
        self.stdout = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        """Seconds until `condition` held; fails with the watch log after `timeout`."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if condition():
                return time.monotonic() - start
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{what}: not within {timeout} s (watch rc={self.proc.poll()})\n"
                             f"{self.log()}")

    def wait_log(self, text: str, timeout: float = 20, count: int = 1) -> None:
        self.wait_for(lambda: sum(text in line for line in self.lines) >= count, timeout,
                      f"log line {text!r}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send `sig` and wait for the exit status."""
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()
        return rc


def watch_pair(pair: Pair, *extra: str) -> Watch:
    """`mailmirror watch A B` for an e2e pair, over its transport, with its state database."""
    return Watch(pair.cli, [str(pair.a.root), pair.b_address(), "--state", str(pair.state),
                            *pair.transport_args(watch=True), *extra])


def has_message(root: Path, msgid: str, flags: str | None = None) -> bool:
    """Whether the maildir holds `msgid` (with exactly these flag letters, if given)."""
    from tests.e2e.conftest import read_messages

    try:
        return any(m.message_id == msgid and (flags is None or m.flags == flags)
                   for m in read_messages(root))
    except (FileNotFoundError, mailbox.NoSuchMailboxError):
        return False  # the maildir or a folder of it is being created right now
