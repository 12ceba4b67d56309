"""The agent wire format: length-prefixed frames of a JSON header plus raw message bytes.

frame := header_len (u32 BE) | data_len (u64 BE) | header (UTF-8 JSON object) | data
Pure encode/decode with hard caps, so a hostile or broken peer gives a ProtocolError, never a
huge allocation or a crash. docs/protocol.md documents the requests built on these frames.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

VERSION = 3  # 2: deletions go to the quarantine, prune_quarantine, id without create;
# 3: listings as blocks of newline-joined names in data, not JSON lists
PREFIX = struct.Struct(">IQ")
MAX_HEADER = 64 << 20
MAX_DATA = 2 << 30
SEND_CHUNK = 256 << 10  # bytes per write of a frame's pieces (send_chunks)


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame of this protocol."""


class TruncatedFrame(ProtocolError):
    """The stream ended inside a frame: the peer or the connection went away mid-reply."""


@dataclass(frozen=True, slots=True)
class Frame:
    header: dict
    data: bytes = b""


def encode_frame(header: dict, *data: bytes) -> bytes:
    """One frame; its data is the pieces given, concatenated (one copy, not one per piece)."""
    return b"".join(frame_pieces(header, *data))


def frame_pieces(header: dict, *data: bytes) -> list[bytes]:
    """One frame as pieces to write in turn, its data not copied into one buffer."""
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False,
                     ).encode("utf-8", "surrogateescape")
    size = sum(len(piece) for piece in data)
    if len(raw) > MAX_HEADER or size > MAX_DATA:
        raise ProtocolError("frame too large")
    return [PREFIX.pack(len(raw), size) + raw, *data]


def send_chunks(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """A frame's pieces joined into writes of about SEND_CHUNK bytes.

    One write per piece is a system call per message of a delivery; the frame joined whole is
    a second copy of it (1 MB), and asyncssh copies what it is given once more. A piece of
    SEND_CHUNK bytes or more is a write of its own, not copied: in the benchmark's tree the
    0.2% of messages that large hold 24% of the bytes, and one of 5 MB was held twice.
    """
    chunk: list[bytes] = []
    size = 0
    for piece in pieces:
        if len(piece) >= SEND_CHUNK:
            if chunk:
                yield b"".join(chunk)
                chunk, size = [], 0
            yield piece
            continue
        chunk.append(piece)
        size += len(piece)
        if size >= SEND_CHUNK:
            yield b"".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield b"".join(chunk)


def decode_prefix(prefix: bytes) -> tuple[int, int]:
    """Header and data lengths, refusing sizes past the caps."""
    if len(prefix) != PREFIX.size:
        raise TruncatedFrame("truncated frame prefix")
    header_len, data_len = PREFIX.unpack(prefix)
    if header_len == 0 or header_len > MAX_HEADER:
        raise ProtocolError(f"frame header of {header_len} bytes")
    if data_len > MAX_DATA:
        raise ProtocolError(f"frame data of {data_len} bytes")
    return header_len, data_len


def decode_header(raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8", "surrogateescape"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return header


def read_frame(read_exactly: Callable[[int], bytes]) -> Frame | None:
    """Read one frame with `read_exactly(n)` (returns fewer bytes only at end of stream).

    None at a clean end of stream; ProtocolError for a truncated or malformed frame.
    """
    prefix = read_exactly(PREFIX.size)
    if not prefix:
        return None
    header_len, data_len = decode_prefix(prefix)
    raw = read_exactly(header_len)
    if len(raw) != header_len:
        raise TruncatedFrame("stream ended inside a frame header")
    header = decode_header(raw)
    data = read_exactly(data_len) if data_len else b""
    if len(data) != data_len:
        raise TruncatedFrame("stream ended inside frame data")
    return Frame(header, data)


def exact_reader(stream: BinaryIO) -> Callable[[int], bytes]:
    """read_exactly(n) over a blocking binary stream: fewer bytes only at end of stream."""
    def read_exactly(n: int) -> bytes:
        chunks, want = [], n
        while want:
            chunk = stream.read(min(want, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            want -= len(chunk)
        return b"".join(chunks)

    return read_exactly


def is_mtime(value: object) -> bool:
    """A file mtime in ns as the wire carries it: a whole number a file can have (64 bits)."""
    return type(value) is int and -(1 << 63) <= value < 1 << 63


def split_data(data: bytes, lengths: list[int]) -> list[bytes]:
    """Cut a frame's data into the pieces its header announces."""
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in lengths):
        raise ProtocolError("invalid piece length")
    if sum(lengths) != len(data):
        raise ProtocolError("piece lengths do not add up to the frame data")
    out, at = [], 0
    view = memoryview(data)
    for n in lengths:
        out.append(bytes(view[at:at + n]))
        at += n
    return out
