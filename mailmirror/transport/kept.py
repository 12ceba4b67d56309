"""Kept connections, the client side: reach an agent through a keeper instead of connecting.

With --keep-connection SECONDS a sync that connected itself leaves a keeper behind
(transport/keeper.py): a small process of the same user that holds the SSH connection and an
agent started ahead for each maildir. The next sync to the same host, with the same options,
finds the keeper's socket and talks to that agent through it: no asyncssh import, no key
exchange, no remote shell and Python start (about 0.5 s of a 0.6 s no-change sync).

This module never imports asyncssh: that is the point of the fast path. Anything that goes
wrong before the agent has answered hello (no keeper, a stale socket, a keeper that refuses)
makes `open_kept` return None and the caller connects itself, as without the option.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mailmirror import __version__
from mailmirror.errors import ReplicaError
from mailmirror.transport.address import Remote
from mailmirror.transport.options import SshOptions
from mailmirror.transport.protocol import send_chunks

KEEPER_VERSION = 1  # of the request line and the spec the keeper is started with
REPLY_MAX = 4096  # bytes of the keeper's one-line answer
READ_BUFFER = 256 << 10
NAME_HEX = 20  # hex digits of a socket's name (80 bits)
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa", "id_ed25519_sk", "id_ecdsa_sk")
SSH_FILE_KEYWORDS = {"include", "userknownhostsfile", "globalknownhostsfile", "identityfile",
                     "certificatefile"}
MAX_SSH_FILES = 64  # ssh_config files read for one socket name (an Include loop stops here)
SUN_PATH_MAX = 107  # bytes of a Unix socket's path (Linux), less the final NUL


class KeepUnavailable(Exception):
    """There is no private directory for keeper sockets; the message says what to fix."""


def runtime_dir() -> Path:
    """A directory only this user can enter, for keeper sockets.

    $XDG_RUNTIME_DIR/mailmirror where the session has one; else mailmirror-UID in the temp
    dir. Either must be ours and closed to others (KeepUnavailable otherwise): a socket there
    hands out a logged-in connection.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = (Path(base) / "mailmirror" if base
            else Path(tempfile.gettempdir()) / f"mailmirror-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise KeepUnavailable(f"cannot create {path} ({exc.strerror}): connections are not "
                              "kept; set XDG_RUNTIME_DIR to a private directory") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise KeepUnavailable(f"{path} is not a directory of yours closed to others (mode "
                              f"{stat.S_IMODE(info.st_mode):o}): connections are not kept; "
                              "remove it, or chmod 700 it if it is yours")
    if len(os.fsencode(path)) + len("/.sock") + NAME_HEX > SUN_PATH_MAX:
        raise KeepUnavailable(f"{path} is too long a path for a Unix socket: connections are "
                              "not kept; set XDG_RUNTIME_DIR to a shorter one")
    return path


def _stamp(path: Path) -> list[object]:
    """A file's identity and version: editing ssh_config or known_hosts retires a keeper."""
    try:
        info = os.stat(path)
    except OSError:
        return [str(path)]
    return [str(path), info.st_ino, info.st_mtime_ns, info.st_size]


def socket_path(remote: Remote, options: SshOptions) -> Path:
    """Where the keeper for this host and these options listens (KeepUnavailable: nowhere).

    Named by everything the connection was made from, files by their stamps, so a keeper is
    only ever used for a connection this run would have made the same way.
    """
    directory = runtime_dir()
    home = Path("~/.ssh").expanduser()
    files = [*_ssh_files(options.config or home / "config"),
             options.known_hosts or home / "known_hosts",
             *([options.identity] if options.identity else
               [home / name for name in DEFAULT_IDENTITIES])]
    parts = {
        "keeper": KEEPER_VERSION, "mailmirror": __version__,
        "host": remote.host, "port": remote.port, "user": remote.user,
        "files": [_stamp(path) for path in files],
        "auth_sock": os.environ.get("SSH_AUTH_SOCK"),
        "connect_timeout": options.connect_timeout, "keepalive": options.keepalive,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:NAME_HEX]
    return directory / f"{digest}.sock"


def _ssh_files(config: Path) -> list[Path]:
    """The ssh_config file and every file it names that decides a connection: the files it
    includes (read the same way) and the known_hosts, identity and certificate files.

    A plain reading of the keywords, whatever Host or Match block they are in: a file named
    for another host only retires a keeper more often than needed.
    """
    home = Path("~/.ssh").expanduser()
    configs, named = [config], []
    for path in configs:
        if len(configs) > MAX_SSH_FILES:
            break
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            words = line.strip().replace("=", " ", 1).split()
            if len(words) < 2 or words[0].lower() not in SSH_FILE_KEYWORDS:
                continue
            for word in words[1:]:
                if word.lower() == "none":
                    continue
                found = Path(os.path.expanduser(word.strip('"')))
                if not found.is_absolute():
                    found = home / found
                if words[0].lower() == "include":
                    configs += [Path(p) for p in sorted(glob.glob(str(found)))
                                if Path(p) not in configs]
                else:
                    named.append(found)
    return configs + named


class KeptChannel:
    """A Channel (see replica/remote.py) to an agent, through a keeper's Unix socket."""

    def __init__(self, sock: socket.socket, host: str, io_timeout: float) -> None:
        self.sock = sock
        self.host = host
        self.io_timeout = io_timeout
        self._reader = sock.makefile("rb", buffering=READ_BUFFER)

    def send(self, pieces: Sequence[bytes]) -> None:
        try:
            for chunk in send_chunks(pieces):
                self.sock.sendall(chunk)
        except TimeoutError:
            raise self._stalled() from None
        except (BrokenPipeError, ConnectionResetError):
            raise self._ended() from None

    def read_exactly(self, n: int) -> bytes:
        try:
            data = self._reader.read(n)
        except TimeoutError:
            raise self._stalled() from None
        except ConnectionResetError:  # the keeper died with our batch unread in its socket
            data = b""
        if n and not data:
            # the keeper closes this end when the agent's output ends, and the kernel when
            # the keeper is gone: which one, this end cannot tell
            raise self._ended()
        return data

    def _ended(self) -> ReplicaError:
        return ReplicaError(f"{self.host}: the kept connection ended (its keeper, or the "
                            "agent behind it, is gone); nothing half-written was published: "
                            "run the sync again")

    def _stalled(self) -> ReplicaError:
        return ReplicaError(f"{self.host}: no answer for {self.sock.gettimeout():g} s through "
                            "the kept connection: the connection stalled (check the network)")

    def answered(self) -> None:
        self.sock.settimeout(self.io_timeout)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._reader.close()
        self.sock.close()


def open_kept(path: Path, program: str, root: str, host: str,
              timeout: float, io_timeout: float) -> KeptChannel | None:
    """A channel to an agent for `root` through the keeper at `path`, or None.

    `timeout` bounds the keeper's answer and, on the channel, the agent's hello: a keeper
    whose server has died is a host that does not answer.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        request = {"keeper": KEEPER_VERSION, "command": program, "root": root}
        sock.sendall(json.dumps(request).encode() + b"\n")
        channel = KeptChannel(sock, host, io_timeout)
        line = channel._reader.readline(REPLY_MAX)
        reply = json.loads(line) if line.endswith(b"\n") else None
    except (OSError, ValueError):
        sock.close()
        return None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        channel.close()
        return None
    return channel


def start_keeper(path: Path, remote: Remote, options: SshOptions, seconds: float,
                 agents: Sequence[tuple[str, str]]) -> None:
    """Leave a keeper behind for `remote` (it connects on its own; any failure is silent:
    this run is done, and the next one connects itself)."""
    spec = {"keeper": KEEPER_VERSION, "socket": str(path), "seconds": seconds,
            "remote": [remote.host, remote.path, remote.user, remote.port],
            "options": {"config": _text(options.config), "identity": _text(options.identity),
                        "known_hosts": _text(options.known_hosts),
                        "connect_timeout": options.connect_timeout,
                        "keepalive": options.keepalive, "io_timeout": options.io_timeout},
            "agents": [list(agent) for agent in agents]}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mailmirror.transport.keeper"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, close_fds=True, cwd="/",
                                start_new_session=True)
        with proc.stdin:  # type: ignore[union-attr]
            proc.stdin.write(json.dumps(spec).encode())  # type: ignore[union-attr]
    except OSError:
        return
    # not waited for: it outlives this run (its own session; init reaps it)
    _started.append(proc)


_started: list[subprocess.Popen[bytes]] = []


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)
