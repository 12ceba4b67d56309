"""Run one command as a child process and measure its wall time and peak resident memory.

Peak memory comes from GNU time (`/usr/bin/time -f %M`): Linux carries a process's high-water RSS
across exec, so a child forked straight from this (large) Python process would report at least
the harness's own size. GNU time is small and adds about a millisecond.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GNU_TIME = "/usr/bin/time"
OUTPUT_LIMIT = 1 << 20


def check_gnu_time() -> str | None:
    """Why peak memory cannot be measured here, or None."""
    if os.access(GNU_TIME, os.X_OK):
        return None
    return f"{GNU_TIME} not found (apt-get install time)"


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_kib: int
    returncode: int
    stdout: str
    stderr: str
    remote_mb: float | None = None  # over SSH: peak RSS of the remote side (see bench.ssh)

    @property
    def peak_mb(self) -> float:
        return self.peak_kib * 1024 / 1e6

    def failure(self) -> str | None:
        """One line describing a non-zero exit, or None."""
        if self.returncode == 0:
            return None
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-3:]
        return f"exit status {self.returncode}: {' | '.join(tail) or '(no output)'}"


def measure(argv: list[str], env: dict[str, str], timeout: float) -> Measurement:
    """Run argv to completion and measure it; after `timeout` seconds its process group is
    killed (the measurement then shows the signal's exit status)."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err, peak = (Path(tmp) / name for name in ("out", "err", "peak"))
        with out.open("wb") as out_f, err.open("wb") as err_f:
            start = time.perf_counter()
            proc = subprocess.Popen(
                [GNU_TIME, "-f", "%M", "-o", str(peak), *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out_f,
                stderr=err_f,
                start_new_session=True,
            )
            lock, exited = threading.Lock(), False

            def kill() -> None:
                with lock:
                    if not exited:  # not reaped yet, so the group id is still this child's
                        os.killpg(proc.pid, signal.SIGKILL)

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                # Wait without reaping (Popen.wait(timeout) would poll and blur short times).
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                seconds = time.perf_counter() - start
                with lock:
                    exited = True
            except BaseException:  # e.g. Ctrl-C: the child is in its own session, stop it too
                kill()
                proc.wait()
                raise
            finally:
                timer.cancel()
            returncode = proc.wait()
        lines = peak.read_text().split() if peak.exists() else []
        return Measurement(
            seconds=seconds,
            peak_kib=int(lines[-1]) if lines and lines[-1].isdigit() else 0,
            returncode=returncode,
            stdout=out.read_bytes()[:OUTPUT_LIMIT].decode(errors="replace"),
            stderr=err.read_bytes()[:OUTPUT_LIMIT].decode(errors="replace"),
        )
