"""The SSH client acknowledges every read at once (TCP_QUICKACK, re-armed after each read): sshd
keeps Nagle's algorithm on for sessions without a terminal, so a delayed acknowledgement held
its answer to the first channel request back by 40 ms (the bench's no-change sync shows it)."""

from __future__ import annotations

import socket

import pytest

from mailmirror.transport.ssh import _ack_at_once

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")


class Sock:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.closed = False

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if self.closed:
            raise OSError("closed")
        self.calls.append((level, option, value))


class Conn:
    """What _ack_at_once uses of an asyncssh connection (an asyncio Protocol)."""

    def __init__(self, sock: Sock | None) -> None:
        self.sock = sock
        self.got: list[tuple[bytes, int]] = []

    def get_extra_info(self, name: str) -> Sock | None:
        assert name == "socket"
        return self.sock

    def data_received(self, data: bytes) -> None:
        self.got.append((data, len(self.sock.calls) if self.sock else 0))


QUICKACK = (socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def test_every_read_is_acknowledged_at_once_after_the_protocol_had_it() -> None:
    sock = Sock()
    conn = Conn(sock)
    _ack_at_once(conn)  # type: ignore[arg-type]
    assert sock.calls == [QUICKACK]  # what arrived before it was installed
    conn.data_received(b"one")
    conn.data_received(b"two")
    assert conn.got == [(b"one", 1), (b"two", 2)]  # the protocol first, then the option
    assert sock.calls == [QUICKACK] * 3


def test_a_closing_socket_or_none_is_no_error() -> None:
    sock = Sock()
    conn = Conn(sock)
    _ack_at_once(conn)  # type: ignore[arg-type]
    sock.closed = True
    conn.data_received(b"last")
    assert conn.got == [(b"last", 1)]
    bare = Conn(None)
    _ack_at_once(bare)  # type: ignore[arg-type]
    bare.data_received(b"x")
    assert bare.got == [(b"x", 0)]
