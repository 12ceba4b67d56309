"""Maildir message file names: parse, format, and derive a message's identity (its key).

A name is `UNIQUE` or `UNIQUE<sep>INFO`; with INFO `2,FLAGS` the flags are letters: system flags
`D F P R S T` (uppercase, ASCII order) and Dovecot keyword letters `a`-`z`, whose meaning is per
folder. Pure: no file system access here; hostile names are rejected, never cleaned up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

SYSTEM_FLAGS = frozenset("DFPRST")
SEPARATORS = (":", ";", "!")
MAX_NAME = 255
MESSAGE_SUBDIRS = ("cur", "new")  # where a maildir folder keeps its messages
_LOCAL_FIELD = re.compile(r",U=\d+(?=,|$)")
_FORBIDDEN = re.compile(r"[/\x00-\x1f\x7f]")
_SIZE_FIELD = re.compile(r",S=(\d+)")


class InvalidName(ValueError):
    """A file name that cannot be a message of ours (path separator, control byte, too long)."""


@dataclass(frozen=True, slots=True)
class Name:
    """One parsed message file name.

    `unique` is the part before the separator exactly as on disk (it may hold replica-local
    fields such as mbsync's `,U=`); `info` is the text after the separator, or None.
    """

    unique: str
    info: str | None

    @property
    def key(self) -> str:
        """The message identity: the unique part minus replica-local fields."""
        return key_of(self.unique)

    @property
    def has_flags(self) -> bool:
        """True when info is the standard `2,` kind, so `letters` means flags."""
        return self.info is not None and self.info.startswith("2,")

    @property
    def letters(self) -> str:
        """The flag letters of a `2,` info, as on disk; empty otherwise."""
        return self.info[2:] if self.has_flags else ""


def key_of(unique: str) -> str:
    """Strip replica-local fields so one message has one key on every replica."""
    return _LOCAL_FIELD.sub("", unique) if ",U=" in unique else unique


def check_name(name: str) -> None:
    """Raise InvalidName for a name that must never be turned into a path, or that the state
    store could not record (not UTF-8: such a name would stop every run after its copies)."""
    try:
        size = len(name) if name.isascii() else len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidName(f"message file name {name!r} is not UTF-8") from None
    if not name or name in (".", "..") or size > MAX_NAME:
        raise InvalidName(f"invalid message file name {name!r}")
    if _FORBIDDEN.search(name):
        raise InvalidName(f"message file name {name!r} contains a separator or control byte")


def is_listable(name: str) -> bool:
    """Whether a name travels in a block of the agent's `list` reply (docs/protocol.md): a
    valid one. The others (a newline, a control byte, not UTF-8) go apart, for the client to
    skip and report, as a scan of a local maildir does; in a block they would be refused
    as hostile, and one odd file would stop every sync of the maildir."""
    try:
        check_name(name)
    except InvalidName:
        return False
    return True


def is_plain_block(block: bytes) -> bool:
    """Whether a block of names joined by newlines holds printable ASCII only (no slash):
    the common case, checked in one pass in C."""
    return not block.translate(None, _BLOCK_BYTES)


def split_relname(relname: str, subdirs: Sequence[str] = MESSAGE_SUBDIRS) -> tuple[str, str]:
    """("cur", NAME) from "cur/NAME"; InvalidName unless the subdir is one of `subdirs` and
    NAME a valid message file name."""
    sub, _, name = relname.partition("/")
    if sub not in subdirs:
        raise InvalidName(f"invalid message path {relname!r}")
    check_name(name)
    return sub, name


# printable ASCII but the slash, and the separator of a listing's names
_BLOCK_BYTES = bytes(range(0x20, 0x7F)).replace(b"/", b"") + b"\n"


def split_names(block: bytes, subdir: str) -> list[bytes]:
    """The raw relnames (b"SUBDIR/NAME", see from_raw) of one block of a remote's listing:
    file names joined by newlines. Raises InvalidName unless every NAME is valid (check_name)
    and no dot file, which listings leave out.

    A few passes in C over the block instead of a check per name (100,000 names: about
    35 ms, against 90 ms to decode them from JSON and check them), and no str per name: the
    scan compares raw relnames with the base's. Only a block that is not all printable
    ASCII, or looks odd, is checked name by name.
    """
    if not block:
        return []
    prefix = subdir.encode() + b"/"
    if (not is_plain_block(block) or block.startswith((b"\n", b"."))
            or block.endswith(b"\n") or b"\n\n" in block or b"\n." in block):
        names = block.split(b"\n")
        for name in names:
            check_name(from_raw(name))
            if name.startswith(b"."):
                raise InvalidName(f"a dot file {from_raw(name)!r} in a listing")
        return [prefix + name for name in names]
    # printable ASCII, no slash, no empty line, no line starting with a dot: only the
    # length is left to check
    relnames = (prefix + block.replace(b"\n", b"\n" + prefix)).split(b"\n")
    if max(map(len, relnames)) > len(prefix) + MAX_NAME:
        name = from_raw(max(relnames, key=len)[len(prefix):])
        raise InvalidName(f"message file name {name[:40]!r}... is longer than {MAX_NAME} bytes")
    return relnames


def from_raw(raw: bytes) -> str:
    """A name or relname as the rest of mailmirror holds it, from its raw form: UTF-8, with
    bytes that are not (a name check_name refuses) kept as os.fsdecode keeps them."""
    return raw.decode("utf-8", "surrogateescape")


def to_raw(name: str) -> bytes:
    """The inverse of from_raw."""
    return name.encode("utf-8", "surrogateescape")


def parse_name(name: str, sep: str = ":") -> Name:
    """Split a file name into unique part and info. Raises InvalidName for hostile names."""
    check_name(name)
    unique, found, info = name.partition(sep)
    if not unique:
        raise InvalidName(f"message file name {name!r} has an empty unique part")
    return Name(unique, info if found else None)


def format_name(unique: str, letters: str | None, sep: str = ":") -> str:
    """Build a file name; `letters` None means no info at all (a fresh message in new/)."""
    if letters is None:
        return unique
    return f"{unique}{sep}2,{sort_letters(letters)}"


def sort_letters(letters: str) -> str:
    """Flags in ASCII order without repeats, as the Maildir spec asks."""
    return "".join(sorted(set(letters)))


def fresh_unique(key: str, salt: str) -> str:
    """A new unique part for a message that must stop sharing `key` with another one.

    Deterministic (the planner is pure), distinct per salt, and keeps the `,S=`/`,W=` fields
    so readers still know the size without stat().
    """
    import hashlib  # rarely needed, and OpenSSL costs 3.5 MB of every run's memory

    head, comma, fields = key.partition(",")
    digest = hashlib.sha1(f"{key}\0{salt}".encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{head}.mm{digest}{comma}{fields}"


def size_of(unique: str) -> int | None:
    """The `,S=` size field, when the delivering agent wrote one."""
    match = _SIZE_FIELD.search(unique)
    return int(match[1]) if match else None
