"""split_names (one block of a remote's listing at once) must accept and refuse exactly what the
one-name check does, whatever a hostile agent sends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmirror.maildir.names import (
    MAX_NAME,
    InvalidName,
    check_name,
    from_raw,
    is_listable,
    split_names,
)


def one_by_one(block: bytes, subdir: str = "cur") -> list[str] | None:
    """The oracle: every line a valid name (check_name) and no dot file."""
    if not block:
        return []
    names = block.decode("utf-8", "surrogateescape").split("\n")
    for name in names:
        try:
            check_name(name)
        except InvalidName:
            return None
        if name.startswith("."):
            return None
    return [f"{subdir}/{name}" for name in names]


def batch(block: bytes, subdir: str = "cur") -> list[str] | None:
    try:
        return list(map(from_raw, split_names(block, subdir)))
    except InvalidName:
        return None


# pieces near the edges: separators, control bytes, dots, newlines, the length limit, non-ASCII
_piece = st.sampled_from(["/", ".", "..", "\n", "\n.", "\r", "\x00", "\x7f", "a", ":2,S",
                          "1700000000.M1P1.host", "é", "x" * 250, "cur/", " ", ""])
_block = st.lists(_piece, max_size=8).map(lambda p: "".join(p).encode("utf-8"))


@settings(max_examples=3000, deadline=None)
@given(_block, st.sampled_from(["cur", "new"]))
def test_block_check_agrees_with_the_one_name_check(block: bytes, subdir: str) -> None:
    assert batch(block, subdir) == one_by_one(block, subdir)


@given(st.binary(max_size=40))
def test_block_check_agrees_on_arbitrary_bytes(block: bytes) -> None:
    assert batch(block) == one_by_one(block)


@given(st.lists(st.text(max_size=12), max_size=5))
def test_block_check_agrees_on_arbitrary_text(names: list[str]) -> None:
    block = "\n".join(names).encode("utf-8", "surrogatepass")
    assert batch(block) == one_by_one(block)


def test_limits() -> None:
    assert batch(b"x" * MAX_NAME + b"\nx...\nb", "new") == [
        "new/" + "x" * MAX_NAME, "new/x...", "new/b"]
    assert batch(b"a\n" + b"x" * (MAX_NAME + 1)) is None
    assert batch("é".encode() * 128) is None  # 256 bytes in UTF-8
    assert batch("é".encode() * 127) == ["cur/" + "é" * 127]
    assert batch(b"") == []
    for odd in (b"a\n", b"\na", b"a\n\nb", b".hidden", b"a\n.hidden", b"a\n..", b"a/b",
                b"a\x00b", b"a\rb"):
        assert batch(odd) is None, odd


def test_a_bad_name_anywhere_in_a_long_block_is_refused() -> None:
    names = [f"{i}.M1P1.host:2,S" for i in range(20_005)]
    assert batch("\n".join(names).encode()) == [f"cur/{n}" for n in names]
    for at in (0, 9_999, 20_004):
        for bad in ("a/b", "..", ".x", "", "x" * (MAX_NAME + 1), "é\x00", "a\x1b[31m"):
            block = "\n".join(names[:at] + [bad] + names[at + 1:]).encode()
            assert batch(block) is None, (at, bad)


def test_names_that_are_not_utf8_are_refused_and_travel_apart() -> None:
    """The state store keeps names as UTF-8 text: such a name is skipped and reported; an agent
    sends it apart from its blocks, with the names holding a newline."""
    assert batch(b"1700000000.M1P1.h\xffst:2,S") is None
    assert batch(b"a\n1700000000.M1P1.h\xffst") is None
    for odd in ("1700000000.M1P1.h\udcffst", "a\nb", "x\ud800", "a\x1b[31m", "t\x7f", "/"):
        assert not is_listable(odd)
    for fine in ("1700000000.M1P1.h\u00e9st:2,S", ".hidden", "a b"):
        assert is_listable(fine)
    with pytest.raises(InvalidName, match="not UTF-8"):
        check_name("1700000000.M1P1.h\udcffst:2,S")
