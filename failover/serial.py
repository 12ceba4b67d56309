"""SOA serial arithmetic (RFC 1982) and the YYYYMMDDnn bump policy.

Pure: no clock and no I/O; `today` arrives as an argument. The width is a parameter so tests
can exhaust wrap-around at a few bits; real zones use 32.
"""

from __future__ import annotations

from datetime import date

BITS = 32


def serial_add(serial: int, n: int, bits: int = BITS) -> int:
    """RFC 1982 addition: `n` must be below 2**(bits-1), otherwise the result is undefined."""
    if not 0 <= n < 2 ** (bits - 1):
        raise ValueError(f"cannot add {n} to a {bits}-bit serial")
    return (serial + n) % 2**bits


def serial_gt(a: int, b: int, bits: int = BITS) -> bool:
    """True when `a` is newer than `b` as a secondary sees it (RFC 1982 section 3.2).

    Pairs exactly half the space apart are undefined by the RFC and compare False both ways,
    so callers never pick such a serial as "newer".
    """
    half = 2 ** (bits - 1)
    return (a < b and b - a > half) or (a > b and a - b < half)


def serial_max(a: int | None, b: int | None, bits: int = BITS) -> int | None:
    """The newer of two serials, either possibly unknown; undefined pairs give the larger int."""
    if a is None or b is None:
        return b if a is None else a
    if serial_gt(a, b, bits):
        return a
    if serial_gt(b, a, bits):
        return b
    return max(a, b)


def date_floor(today: date) -> int:
    """The lowest serial for `today`: YYYYMMDD00."""
    return (today.year * 10000 + today.month * 100 + today.day) * 100


def next_serial(current: int | None, floor: int, bits: int = BITS) -> int:
    """The serial to write next: `floor` (YYYYMMDD00) when newer than `current`, else current+1.

    The result is always RFC 1982-newer than `current`, so secondaries accept it. Past nn=99 it
    simply counts on (2024010199 -> 2024010200): larger, never back to a smaller date. Zero is
    skipped because many tools read serial 0 as "unset". Date serials fit 32 bits until the
    year 4294, so the wrap from 2**32-1 to 1 exists for arithmetic, not in practice.
    Needs bits >= 3: at 2 bits, 1 is not newer than 3, so zero cannot be skipped.
    """
    if not 0 <= floor < 2**bits:
        raise ValueError(f"date floor {floor} does not fit a {bits}-bit serial")
    if current is None:
        return floor or 1
    if floor != 0 and serial_gt(floor, current, bits):
        return floor
    return serial_add(current, 1, bits) or 1
