"""Replica addresses (transport/address.py): what is remote, what is local, and one clear
line for what is neither."""

from __future__ import annotations

import pytest

from mailmirror.errors import UsageError
from mailmirror.transport.address import Remote, parse_address


@pytest.mark.parametrize(("text", "parsed"), [
    ("/srv/mail", "/srv/mail"),
    ("./a:b", "./a:b"),
    ("Maildir", "Maildir"),
    ("dir/a:b", "dir/a:b"),
    ("host:Maildir", Remote("host", "Maildir")),
    ("alice@host:", Remote("host", ".", "alice")),
    ("[::1]:M", Remote("::1", "M")),
    ("ssh://alice@host:2222/srv/m", Remote("host", "/srv/m", "alice", 2222)),
    ("ssh://host/~/Maildir", Remote("host", "Maildir")),
    ("ssh://[::1]/m", Remote("::1", "/m")),
])
def test_addresses(text: str, parsed: object) -> None:
    assert parse_address(text) == parsed


@pytest.mark.parametrize(("text", "says"), [
    ("ssh://[::1/Maildir", "is not a valid address: write ssh://[user@]host[:port]/path"),
    ("ssh:///Maildir", "has no host"),
    ("ssh://host:99999/m", "has an invalid port"),
    ("ssh://host/", "has no maildir path"),
    ("alice@:Maildir", "has no host: write [user@]host:path, or ./alice@:Maildir for a local"),
    (":Maildir", "has no host"),
])
def test_what_is_neither_a_path_nor_an_address_is_one_line(text: str, says: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_address(text)
    assert says in str(raised.value) and "\n" not in str(raised.value)
