"""The SSH transport: replica B behind a real OpenSSH sshd on 127.0.0.1 (issue 3's benchmarks).

Reuses the test suite's rig (`tests/ssh/sshrig.py`: own host key, user key, known_hosts and a
client ssh_config) unchanged. On top of it this module adds the remote half of the memory
measurement: `remote-time`, a wrapper that runs its arguments under GNU time and writes the peak
RSS into `peaks/<pid>`. Tools start their remote side through it (mailmirror's
`--remote-command`, unison's `-servercmd`, rsync's `--rsync-path`), and sshd's sftp subsystem is
pointed at a script that does the same for sftp-server. After each run the harness waits until
sshd has no session left (so every remote process has exited and GNU time has written its file)
and takes the highest peak.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bench.measure import GNU_TIME
from bench.tools import SshEndpoint, ssh_env

if TYPE_CHECKING:
    from tests.ssh.sshrig import Sshd, SshRig

REPO = Path(__file__).resolve().parent.parent
SSHD_CANDIDATES = ("/usr/sbin/sshd", "sshd")
IDLE_TIMEOUT = 30.0
"""Seconds to wait for the sessions of the previous run to end."""


def find_sshd() -> str | None:
    for candidate in SSHD_CANDIDATES:
        if found := shutil.which(candidate):
            return found
    return None


def check_ssh() -> str | None:
    """Why the SSH cases cannot run here, or None."""
    missing = [p for p in ("ssh", "ssh-keygen") if not shutil.which(p)]
    if not find_sshd():
        missing.append("sshd")
    return f"{', '.join(missing)} not found (apt-get install openssh-server)" if missing else None


def _children(pid: int) -> list[int]:
    """Pids of the live processes whose parent is `pid` (sshd's per-connection processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


class Ssh:
    """B is reached through the loopback sshd as `127.0.0.1` (its own Host block in the rig's
    ssh_config, as the anchors' commands spell it; the `mailhost` alias works too)."""

    label = "ssh"

    def __init__(self, rig: SshRig, server: Sshd, base: Path) -> None:
        self.rig, self.server = rig, server
        self.peaks = base / "peaks"
        self.ssh = SshEndpoint(
            host="127.0.0.1",
            port=server.port,
            config=rig.ssh_config,
            identity=rig.user_key,
            known_hosts=rig.known_hosts,
            remote_time=base / "remote-time",
        )

    def address(self, path: Path) -> str:
        return f"{self.ssh.host}:{path}"

    def wait_idle(self, kept: Callable[[], int] = lambda: 0) -> bool:
        """Wait until sshd has no session process left but the kept() ones (mailmirror's
        keepers, one connection each); False after IDLE_TIMEOUT."""
        listener = self.server.process.pid
        deadline = time.monotonic() + IDLE_TIMEOUT
        while len(_children(listener)) > kept():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def before_run(self, kept: Callable[[], int] = lambda: 0) -> None:
        self.wait_idle(kept)
        self.peaks.mkdir(exist_ok=True)
        for path in self.peaks.iterdir():
            # GNU time opens its file as it starts: an agent a keeper started ahead (for
            # this run) writes into the one it holds, which must stay
            if _peak_kib(path) is not None or not kept():
                path.unlink()

    def connect_seconds(self, runs: int = 5) -> list[float]:
        """`ssh HOST true` through this sshd: the floor every tool's run pays (issue 3 quotes
        0.29 s). A login shell whose start-up files are slow raises it for every tool alike."""
        argv = ["ssh", *self.ssh.ssh_args.split(), self.ssh.host, "true"]
        env = ssh_env(dict(os.environ))
        seconds = []
        for _ in range(runs):
            self.wait_idle()
            started = time.perf_counter()
            subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=True,
                           stdout=subprocess.DEVNULL, timeout=60)
            seconds.append(time.perf_counter() - started)
        return seconds

    def remote_peak_mb(self, kept: Callable[[], int] = lambda: 0) -> float | None:
        self.wait_idle(kept)
        kib = self._peaks_kib()
        if kept():
            # a kept connection stays, and with it the agent started for the next run (its
            # file is empty until it exits): the agent that served this run writes its peak
            # as it exits, a moment after the client did
            deadline = time.monotonic() + IDLE_TIMEOUT
            while not kib and time.monotonic() < deadline:
                time.sleep(0.02)
                kib = self._peaks_kib()
        return max(kib) * 1024 / 1e6 if kib else None

    def _peaks_kib(self) -> list[int]:
        return [kib for path in self.peaks.iterdir() if (kib := _peak_kib(path)) is not None]


def _peak_kib(path: Path) -> int | None:
    """The peak GNU time wrote into `path`; None while its process runs."""
    lines = path.read_text().split()
    return int(lines[-1]) if lines and lines[-1].isdigit() else None


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@contextmanager
def loopback(base: Path) -> Iterator[Ssh]:
    """A running loopback sshd (the test rig) with the peak-measuring wrappers, as a transport.
    Everything lives under `base`; the sshd is killed on exit."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.ssh import sshrig  # the rig of the SSH tests, unchanged

    sshd = find_sshd()
    if sshd is None:
        raise RuntimeError(check_ssh())
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    remote_time = base / "remote-time"
    _script(remote_time, f'#!/bin/sh\nexec {GNU_TIME} -f %M -o "{base}/peaks/$$" "$@"\n')
    real_sftp_server = sshrig.SFTP_SERVER
    if os.path.exists(real_sftp_server):
        # sshd runs the sftp subsystem through the wrapper too (the rig reads this at start).
        wrapper = base / "sftp-server"
        _script(wrapper, f'#!/bin/sh\nexec {remote_time} {real_sftp_server} "$@"\n')
        sshrig.SFTP_SERVER = str(wrapper)
    rig = sshrig.SshRig(base / "rig", sshd)
    try:
        server = rig.start("a")
        rig.point(server)  # `mailhost`
        rig.point(server, "127.0.0.1")  # so that `ssh -F cfg 127.0.0.1` uses the rig's files
        transport = Ssh(rig, server, base)
        transport.before_run()
        yield transport
    finally:
        rig.close()
        sshrig.SFTP_SERVER = real_sftp_server
