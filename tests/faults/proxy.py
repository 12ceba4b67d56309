"""A small TCP relay on 127.0.0.1 in front of the test sshd, to break the network on purpose.

It relays every connection to the target port on its own event loop thread and counts the
bytes of each direction. A test can cut every connection once a direction has carried a
number of bytes (`cut_after`), or stall them: keep the sockets open and relay nothing more, as
a dead NAT or a pulled cable does (`stall`). Nothing in mailmirror knows it is there.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from mailmirror.transport.loop import LoopThread
from tests.ssh.sshrig import ALIAS, Sshd, SshRig

UP, DOWN = "up", "down"  # client -> server, server -> client


class Proxy:
    """See the module docstring; use as a context manager."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.bytes = {UP: 0, DOWN: 0}
        self.cuts = 0
        self._limit: tuple[str, int] | None = None
        self._stalled = False
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task] = set()
        self._lock = threading.Lock()
        self._loop = LoopThread("test-proxy")
        self._server = self._loop.run(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self.port: int = self._server.sockets[0].getsockname()[1]

    def cut_after(self, direction: str, nbytes: int) -> None:
        """Cut every connection once `direction` has carried `nbytes` in all (from now)."""
        with self._lock:
            self._limit = (direction, self.bytes[direction] + nbytes)

    def stall(self) -> None:
        """From now on relay nothing, and close nothing."""
        self._stalled = True

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        self._loop.run(stop(), 5)
        self._loop.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pump(reader, up_writer, UP),
                             self._pump(up_reader, writer, DOWN), return_exceptions=True)
        for w in (writer, up_writer):
            w.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    direction: str) -> None:
        while chunk := await src.read(16384):
            while self._stalled:
                await asyncio.sleep(3600)
            with self._lock:
                limit = self._limit
                if limit is not None and limit[0] == direction:
                    room = limit[1] - self.bytes[direction]
                    if room <= len(chunk):
                        chunk = chunk[:max(room, 0)]
                        self._limit = None
                        self.cuts += 1
                        dst.write(chunk)
                        for w in self._writers:
                            w.transport.abort()
                        return
                self.bytes[direction] += len(chunk)
            dst.write(chunk)
            await dst.drain()
        dst.close()


def route_through(rig: SshRig, proxy: Proxy, server: Sshd, base: Path) -> tuple[Path, Path]:
    """An ssh_config whose `mailhost` leads to the proxy, and a known_hosts for that port;
    returns (ssh_config, known_hosts)."""
    config, known = base / "proxy_ssh_config", base / "proxy_known_hosts"
    known.write_text(f"[127.0.0.1]:{proxy.port} ssh-ed25519 {server.host_pub}\n")
    config.write_text(
        f"Host {ALIAS}\n    HostName 127.0.0.1\n    Port {proxy.port}\n    User {rig.user}\n"
        f"    IdentityFile {rig.user_key}\n    UserKnownHostsFile {known}\n"
        "    StrictHostKeyChecking yes\n    IdentitiesOnly yes\n    BatchMode yes\n")
    return config, known
