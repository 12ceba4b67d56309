"""check_relnames (a remote's whole listing at once) must accept and refuse exactly what the
one-name check does, whatever a hostile agent sends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmirror.maildir.names import (
    MAX_NAME,
    RELNAME_CHUNK,
    InvalidName,
    check_name,
    check_relnames,
)


def one_by_one(relnames: list[str]) -> bool:
    for relname in relnames:
        sub, _, name = relname.partition("/")
        if sub not in ("cur", "new"):
            return False
        try:
            check_name(name)
        except InvalidName:
            return False
    return True


def batch(relnames: list[str]) -> bool:
    try:
        check_relnames(relnames)
    except InvalidName:
        return False
    return True


# names near the edges: separators, control bytes, dots, newlines, the length limit, non-ASCII
_piece = st.sampled_from(["cur/", "new/", "tmp/", "/", ".", "..", "\n", "\r", "\x00", "\x7f",
                          "a", "1700000000.M1P1.host", ":2,S", "é", "x" * 250, "cur", ""])
_relname = st.lists(_piece, max_size=6).map("".join)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_relname, max_size=5))
def test_batch_check_agrees_with_the_one_name_check(relnames: list[str]) -> None:
    assert batch(relnames) == one_by_one(relnames)


@given(st.lists(st.text(max_size=12).map(lambda t: "cur/" + t), max_size=5))
def test_batch_check_agrees_on_arbitrary_text(relnames: list[str]) -> None:
    assert batch(relnames) == one_by_one(relnames)


def test_limits() -> None:
    assert batch(["cur/" + "x" * MAX_NAME, "new/.hidden", "cur/..."])
    assert not batch(["cur/" + "x" * (MAX_NAME + 1)])
    assert not batch(["cur/" + "é" * 128])  # 256 bytes in UTF-8
    assert not batch(["cur/a\ncur/b"])  # one name with a newline, not two names
    assert not batch(["cur/a", 3])  # type: ignore[list-item]
    assert batch([])


@pytest.mark.parametrize("at", [0, RELNAME_CHUNK - 1, RELNAME_CHUNK, 2 * RELNAME_CHUNK + 4])
def test_a_bad_name_in_any_chunk_is_refused(at: int) -> None:
    """Long listings are checked RELNAME_CHUNK names at a time: every chunk counts."""
    relnames = [f"cur/{i}.M1P1.host:2,S" for i in range(2 * RELNAME_CHUNK + 5)]
    assert batch(relnames)
    for bad in ("cur/a/b", "cur/..", "tmp/x", "cur/x\ny", "cur/" + "x" * (MAX_NAME + 1),
                "cur/é\x00"):
        assert not batch(relnames[:at] + [bad] + relnames[at + 1:]), (at, bad)
