"""The keeper behind --keep-connection: one SSH connection held between syncs (see kept.py).

Started by a sync that connected itself (`python -m mailmirror.transport.keeper` in a session
of its own, the spec as JSON on stdin), it connects the way that sync did, starts one agent
for each maildir the sync used, and serves its socket: each client names a command and a
root, gets a ready agent (or a fresh one) and then a plain byte relay to it; once that sync is
over, a replacement agent is started for the next one. It exits when no client came for the
kept seconds, when the connection drops, when its socket or lock is taken from it, or when the
host name no longer leads to the server it is connected to (DNS failover: the next sync
connects to the new server itself), or after the machine was suspended (a laptop's connection
rarely survives that, and a sync would otherwise find out only by its timeout). Failures are
silent: the client falls back to connecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shlex
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_READY = 4  # agents started ahead: each is a session, and sshd allows 10 per connection
RELAY_CHUNK = 256 << 10
REQUEST_MAX = 64 << 10
REQUEST_TIMEOUT = 5.0
SLEPT = 2.0  # seconds of suspend after which the connection is not trusted


def main() -> int:
    try:
        spec = json.loads(sys.stdin.buffer.read(REQUEST_MAX))
    except ValueError:
        return 2
    sys.stdin.close()
    keep(spec)
    return 0


def keep(spec: dict[str, Any]) -> None:
    """Hold the lock of the socket path for the keeper's whole life, then serve."""
    path = Path(spec["socket"])
    with _locked(path.with_suffix(".lock")) as held:
        if not held:
            return  # another keeper serves this path
        path.with_suffix(".lock").write_text(f"{os.getpid()}\n")  # for whoever must stop us
        from mailmirror.errors import ReplicaError
        from mailmirror.transport.address import Remote
        from mailmirror.transport.options import SshOptions
        from mailmirror.transport.ssh import SshSession

        host, root, user, port = spec["remote"]
        opts = spec["options"]
        options = SshOptions(*(Path(opts[k]) if opts[k] else None
                               for k in ("config", "identity", "known_hosts")),
                             connect_timeout=opts["connect_timeout"],
                             io_timeout=opts["io_timeout"], keepalive=opts["keepalive"])
        try:
            session = SshSession(Remote(host, root, user, port), options)
        except ReplicaError:
            return
        try:
            keeper = Keeper(session.conn, path, float(spec["seconds"]),
                            [tuple(agent) for agent in spec["agents"]][-MAX_READY:],
                            session.target())
            session.run(keeper.serve(), None)
        except ReplicaError:
            return  # the connection or the socket failed: the next sync connects itself
        finally:
            session.close()


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[bool]:
    """Whether this keeper holds `lock`; the file is removed on the way out, still locked,
    unless another file has taken its name meanwhile (removed by hand: another keeper's)."""
    fd = _take(lock)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        if _still_ours(lock, os.fstat(fd).st_ino):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        os.close(fd)


def _take(lock: Path) -> int | None:
    """A descriptor of `lock` locked by us, or None when another keeper holds it.

    A keeper that leaves unlinks its lock file before it lets go of it: one starting at that
    moment may lock the unlinked file, so it checks that the path still names the file it
    locked, and otherwise takes the one there now.
    """
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if _still_ours(lock, os.fstat(fd).st_ino):
            return fd
        os.close(fd)


class Keeper:
    """Serves one socket from one connection; see the module docstring."""

    def __init__(self, conn: Any, path: Path, seconds: float,
                 agents: list[tuple[str, str]], target: tuple[str, int] | None) -> None:
        self.conn = conn
        self.path = path
        self.seconds = seconds
        self.target = target  # (host, port) to resolve again per client; None: a proxy
        self.ready: dict[tuple[str, str], Any] = {}
        self.preparing: set[tuple[str, str]] = set()
        self.active = 0
        self.last_used = time.monotonic()
        self.done = asyncio.Event()
        self.agents = agents
        self.asleep = _asleep()

    async def serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # stale: its keeper is gone, or we would not hold the lock
        server = await asyncio.start_unix_server(self._client, path=str(self.path))
        os.chmod(self.path, 0o600)
        inode = os.stat(self.path).st_ino
        for agent in self.agents:
            await self._prepare(agent)
        closed = asyncio.ensure_future(self.conn.wait_closed())
        ends = {closed, asyncio.ensure_future(self.done.wait())}
        try:
            while not any(end.done() for end in ends):
                await asyncio.wait(ends, timeout=min(self.seconds, 5.0))
                idle = time.monotonic() - self.last_used
                if self.active == 0 and idle >= self.seconds:
                    break
                if not _still_ours(self.path, inode) or self._slept():
                    break
        finally:
            # no new clients; syncs under way finish on the connection they started on
            server.close()
            if _still_ours(self.path, inode):
                self.path.unlink()
            for process in self.ready.values():
                process.close()
            while self.active and not closed.done():
                await asyncio.wait({closed}, timeout=1.0)
            for end in ends:
                end.cancel()

    async def _start(self, agent: tuple[str, str]) -> Any:
        program, root = agent
        return await self.conn.create_process(f"{program} {shlex.quote(root)}", encoding=None)

    async def _prepare(self, agent: tuple[str, str]) -> None:
        """Have an agent for `agent` waiting: one per (command, root), for the MAX_READY used
        last (a profile may cover every user of a server)."""
        if agent in self.ready or agent in self.preparing or len(self.preparing) >= MAX_READY:
            return
        self.preparing.add(agent)
        try:
            process = await self._start(agent)
        except Exception:  # noqa: BLE001 (any failure: the client starts its own)
            return
        finally:
            self.preparing.discard(agent)
        self.ready[agent] = process
        while len(self.ready) > MAX_READY:  # the longest unused goes
            self.ready.pop(next(iter(self.ready))).close()

    async def _take(self, agent: tuple[str, str]) -> Any:
        process = self.ready.pop(agent, None)
        if process is not None and process.exit_status is None and not process.is_closing():
            return process
        return await self._start(agent)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            await self._relay_client(reader, writer)
        except Exception:  # noqa: BLE001 (one client's failure never ends the keeper)
            pass
        finally:
            writer.close()
            self.active -= 1
            self.last_used = time.monotonic()

    async def _relay_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        if not _same_user(writer.get_extra_info("socket")):
            return
        request = json.loads(await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT))
        agent = (str(request["command"]), str(request["root"]))
        if self._slept() or not await self._still_there():
            writer.write(json.dumps({"ok": False, "error": "moved"}).encode() + b"\n")
            self.done.set()
            return
        process = await self._take(agent)
        writer.write(b'{"ok": true}\n')
        try:
            await _relay(reader, writer, process)
        finally:
            # after the sync, not during it: starting an agent costs the remote a shell and a
            # Python start, CPU the sync itself wants
            asyncio.ensure_future(self._prepare(agent))

    def _slept(self) -> bool:
        return _asleep() - self.asleep > SLEPT

    async def _still_there(self) -> bool:
        """Whether the host name still resolves to the address this connection went to."""
        if self.target is None:
            return True
        peer = self.conn.get_extra_info("peername")
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                *self.target, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            # no answer from DNS just now: the connection we hold is still the best bet; a
            # name that is gone is gone (a sync of its own would fail to resolve it too)
            return exc.errno == socket.EAI_AGAIN
        return peer is None or any(addr[4][0] == peer[0] for addr in found)


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 process: Any) -> None:
    """Bytes both ways until one side is done. The agent's end ends the client's at once
    (the sync then says what it says for a direct connection); a client that is gone, or
    cut off in the middle of a frame, ends the agent (which publishes nothing half-sent)."""
    async def upstream() -> None:
        while data := await reader.read(RELAY_CHUNK):
            process.stdin.write(data)
            await process.stdin.drain()
        process.stdin.write_eof()

    async def downstream() -> None:
        while data := await process.stdout.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()

    up = asyncio.ensure_future(upstream())
    down = asyncio.ensure_future(downstream())
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if up.done() and not up.cancelled() and up.exception() is None:
            # the client has said all it will (bye): the agent answers and exits
            await asyncio.wait({down}, timeout=REQUEST_TIMEOUT)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        process.close()


def _asleep() -> float:
    """Seconds this machine has spent suspended since boot (0 where that is not known)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return 0.0
    return time.clock_gettime(boottime) - time.monotonic()


def _same_user(sock: socket.socket | None) -> bool:
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return False
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", raw)
    return uid == os.getuid()


def _still_ours(path: Path, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
