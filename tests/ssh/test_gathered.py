"""SSH packets written in one turn of the event loop leave in one socket write: asyncssh writes
each packet (and an SSH_MSG_IGNORE before it) on its own, 65,000 writes per GiB of a copy."""

from __future__ import annotations

import asyncio

from mailmirror.transport.address import Remote
from mailmirror.transport.options import SshOptions
from mailmirror.transport.ssh import GATHER_BYTES, SshSession, _GatheredWrites
from tests.ssh.sshrig import ALIAS, SshRig


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.events: list[str] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.events.append("close")

    def abort(self) -> None:
        self.events.append("abort")

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def test_one_write_per_turn_in_order_and_at_once_past_the_limit() -> None:
    async def run() -> tuple[list[bytes], list[bytes]]:
        inner = Transport()
        gathered = _GatheredWrites(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        for n in range(5):
            gathered.write(bytes([n]) * 10)
        before = list(inner.written)
        await asyncio.sleep(0)
        gathered.write(b"x" * GATHER_BYTES)  # a full write goes at once, with what waited
        return before, inner.written

    before, written = asyncio.run(run())
    assert before == []
    assert written == [b"".join(bytes([n]) * 10 for n in range(5)), b"x" * GATHER_BYTES]


def test_close_sends_what_waits_abort_drops_it_and_the_rest_is_the_transport() -> None:
    async def run() -> Transport:
        inner = Transport()
        gathered = _GatheredWrites(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        gathered.write(b"last words")
        gathered.close()
        gathered.write(b"dropped")
        gathered.abort()
        await asyncio.sleep(0)
        assert gathered.get_extra_info("socket") == "info socket"
        return inner

    inner = asyncio.run(run())
    assert inner.written == [b"last words"]
    assert inner.events == ["close", "abort"]


def test_a_write_that_fails_otherwise_ends_the_connection() -> None:
    """Bytes dropped in the middle of the stream would leave a gap in it: the connection is
    aborted instead, and asyncssh reports it lost."""
    class Broken(Transport):
        def write(self, data: bytes) -> None:
            raise RuntimeError("cannot write")

    async def run() -> Broken:
        inner = Broken()
        gathered = _GatheredWrites(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        gathered.write(b"lost")
        await asyncio.sleep(0)
        return inner

    assert asyncio.run(run()).events == ["abort"]


def test_a_real_session_gathers_its_packets_and_the_bytes_come_back_whole(
        ssh_rig: SshRig) -> None:
    options = SshOptions(config=ssh_rig.ssh_config, identity=ssh_rig.user_key,
                         known_hosts=ssh_rig.known_hosts)
    session = SshSession(Remote(ALIAS, "/"), options)
    sent = b"".join(bytes([n % 256]) * 100 for n in range(200))

    async def echo() -> tuple[bytes, int]:
        process = await session.conn.create_process("cat", encoding=None)
        transport = session.conn._transport
        inner = getattr(transport, "_transport", transport)  # the socket's own
        writes = []
        real_write = inner.write

        def counted(data: bytes) -> None:
            writes.append(len(data))
            real_write(data)

        inner.write = counted
        for at in range(0, len(sent), 100):  # 200 channel packets, each with an ignore
            process.stdin.write(sent[at:at + 100])
        await process.stdin.drain()
        process.stdin.write_eof()
        back = await process.stdout.read()
        await process.wait_closed()
        return back, len(writes)

    try:
        back, writes = session.run(echo(), 30)
    finally:
        session.close()
    assert back == sent
    assert writes < 10
