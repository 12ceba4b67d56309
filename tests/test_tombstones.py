"""The tombstone file codec: newest line per key wins, expired lines go, bad lines are skipped."""

from __future__ import annotations

from mailmirror.maildir.tombstones import (
    RETENTION_SECONDS,
    format_deletions,
    parse_tombstones,
    prune_tombstones,
)


def test_newest_line_per_key_wins_and_bad_lines_are_skipped():
    text = (format_deletions(100, [("k1", "INBOX", "cur", ["S"])])
            + "garbage\n1\tk/evil\tINBOX\tcur\t\n2\tk2\t../x\tcur\t\n"
            + format_deletions(200, [("k1", "Work", "new", []),
                                     ("k3", "INBOX", "cur", ["F", "S"])]))
    parsed = parse_tombstones(text)
    assert parsed == {"k1": (200, "Work", "new", frozenset()),
                      "k3": (200, "INBOX", "cur", frozenset({"F", "S"}))}


def test_prune_drops_expired_lines_and_keeps_the_rest_readable():
    now = 10 * RETENTION_SECONDS
    text = (format_deletions(now - RETENTION_SECONDS - 1, [("old", "INBOX", "cur", ["S"])])
            + format_deletions(now - 5, [("new", "INBOX", "cur", ["$Label1", "S"])]))
    kept = prune_tombstones(text, now)
    assert parse_tombstones(kept) == {"new": (now - 5, "INBOX", "cur",
                                              frozenset({"$Label1", "S"}))}
