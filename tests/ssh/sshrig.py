"""A real OpenSSH sshd on 127.0.0.1 for tests: its config, keys and the client files to reach it.

An SshRig owns one temp directory with a user key, authorized_keys, a known_hosts file and a
client ssh_config whose Host aliases (default `mailhost`) can be repointed from one sshd to
another, as DNS failover does. It can run several sshd instances (`a`, `b`), each with its own
host key and port. Fixtures that use it live in conftest.py; this module never skips or fails.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from mailmirror.transport.loop import LoopThread

ALIAS = "mailhost"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
START_TIMEOUT = 10.0


@dataclass
class Sshd:
    """One running sshd: `name` is the test's label for the server ("a", "b")."""

    name: str
    port: int
    host_key: Path
    config: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def host_pub(self) -> str:
        return self.host_key.with_suffix(".pub").read_text().split()[1]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def descendants(self, program: str) -> list[int]:
        """Pids of running processes named `program` started by this sshd (e.g. sftp-server),
        for tests that kill one to drop a connection."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if os.path.basename(os.fsdecode(argv0)) == program and self._is_ancestor(int(pid)):
                found.append(int(pid))
        return found

    def _is_ancestor(self, pid: int) -> bool:
        while pid > 1:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            pid = int(stat.rsplit(")", 1)[1].split()[1])
            if pid == self.process.pid:
                return True
        return False


@dataclass
class SshRig:
    """Keys, client files and the sshd instances of one test run; see the module docstring."""

    base: Path
    sshd_path: str
    servers: dict[str, Sshd] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.user_key = self.base / "id_ed25519"
        self.known_hosts = self.base / "known_hosts"
        self.ssh_config = self.base / "ssh_config"
        self.authorized_keys = self.base / "authorized_keys"
        _keygen(self.user_key)
        self.authorized_keys.write_text(self.user_key.with_suffix(".pub").read_text())
        self.known_hosts.write_text("")
        self.ssh_config.write_text("")

    def start(self, name: str, extra_config: tuple[str, ...] = ()) -> Sshd:
        """Start sshd `name` on a free port and add its host key to known_hosts."""
        if name in self.servers:
            raise ValueError(f"sshd {name!r} is already running")
        host_key = self.base / f"host_{name}"
        if not host_key.exists():
            _keygen(host_key)
        last = ""
        for _ in range(5):  # a free port can be taken between probing and binding
            port = _free_port()
            server = self._spawn(name, port, host_key, extra_config)
            if _wait_listening(server):
                self.servers[name] = server
                self._write_known_hosts()
                return server
            last = server.log_text()
            _stop(server)
        raise RuntimeError(f"sshd {name} did not start:\n{last}")

    def stop(self, name: str) -> None:
        """Kill sshd `name` (the listener; sessions end when their connections close)."""
        _stop(self.servers.pop(name))
        self._write_known_hosts()

    def point(self, server: Sshd, alias: str = ALIAS) -> None:
        """Make `alias` in the client ssh_config lead to `server` (HostName, Port, keys)."""
        self.aliases[alias] = server.name
        blocks = []
        for name, target in sorted(self.aliases.items()):
            if target not in self.servers:
                continue
            blocks.append(
                f"Host {name}\n"
                "    HostName 127.0.0.1\n"
                f"    Port {self.servers[target].port}\n"
                f"    User {self.user}\n"
                f"    IdentityFile {self.user_key}\n"
                f"    UserKnownHostsFile {self.known_hosts}\n"
                "    StrictHostKeyChecking yes\n"
                "    IdentitiesOnly yes\n"
                "    BatchMode yes\n")
        tmp = self.ssh_config.with_suffix(".new")
        tmp.write_text("\n".join(blocks))
        os.replace(tmp, self.ssh_config)

    def connect_options(self, host: str = ALIAS, port: int | None = None) -> dict[str, Any]:
        """Keyword arguments for asyncssh.connect(host, **...) with this rig's files only.

        With an alias, HostName and Port come from the ssh_config; `port` overrides it (for
        host "127.0.0.1" give the server's port). No ssh-agent and no ~/.ssh file is used.
        """
        options: dict[str, Any] = {
            "config": [str(self.ssh_config)],
            "known_hosts": str(self.known_hosts),
            "client_keys": [str(self.user_key)],
            "username": self.user,
            "agent_path": None,
        }
        if port is not None:
            options["port"] = port
        return options

    async def connect(self, host: str = ALIAS,
                      port: int | None = None) -> asyncssh.SSHClientConnection:
        """Open an asyncssh connection through this rig's config, keys and known_hosts."""
        return await asyncssh.connect(host, **self.connect_options(host, port))

    def close(self) -> None:
        """Stop every sshd and end its connections: one held past the test (a keeper's, left
        by a sync's default --keep-connection auto) then ends, and its keeper with it.

        Only the per-connection sshd processes are told to go (SIGTERM), never what runs in
        a session: a login shell killed in the middle of its start-up (pyenv's rehash, in
        root's .bashrc here) can leave a lock behind that slows every later login."""
        for name in list(self.servers):
            server = self.servers[name]
            sessions = [int(pid) for pid in filter(str.isdigit, os.listdir("/proc"))
                        if _parent(int(pid)) == server.process.pid]
            self.stop(name)
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def _spawn(self, name: str, port: int, host_key: Path,
               extra_config: tuple[str, ...]) -> Sshd:
        config = self.base / f"sshd_config_{name}"
        sftp = SFTP_SERVER if os.path.exists(SFTP_SERVER) else "internal-sftp"
        lines = [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {self.base / f'sshd_{name}.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "MaxStartups 100",
            "MaxSessions 100",
            "LogLevel INFO",
            f"Subsystem sftp {sftp}",
            *extra_config,
        ]
        config.write_text("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privsep directory
        log = self.base / f"sshd_{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [self.sshd_path, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        return Sshd(name, port, host_key, config, log, process)

    def _write_known_hosts(self) -> None:
        self.known_hosts.write_text("".join(
            f"[127.0.0.1]:{s.port} ssh-ed25519 {s.host_pub}\n" for s in self.servers.values()))


@contextmanager
def running_rig(base: Path, sshd_path: str) -> Iterator[SshRig]:
    """An SshRig with sshd `a` running and the `mailhost` alias pointing at it."""
    rig = SshRig(base, sshd_path)
    try:
        rig.point(rig.start("a"))
        yield rig
    finally:
        rig.close()


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name,
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_listening(server: Sshd) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        if "Server listening" in server.log_text():
            return True
        time.sleep(0.01)
    return False


def _stop(server: Sshd) -> None:
    if server.process.poll() is None:
        server.process.kill()
    server.process.wait(timeout=5)


@contextmanager
def sftp_client(rig: SshRig, host: str = ALIAS) -> Iterator[tuple[LoopThread, asyncssh.SFTPClient]]:
    """An SFTP client to `host` living on its own loop thread, as the sync engine needs it."""
    with LoopThread("sftp-test") as loop:
        conn = loop.run(rig.connect(host))
        try:
            sftp = loop.run(_start_sftp(conn))
            yield loop, sftp
            sftp.exit()
        finally:
            conn.close()
            loop.run(conn.wait_closed(), 5)


async def _start_sftp(conn: asyncssh.SSHClientConnection) -> asyncssh.SFTPClient:
    return await conn.start_sftp_client()
