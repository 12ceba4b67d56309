"""Tombstones: each replica remembers the messages deleted on it, and in what state.

A pair that has no base for a message one side lacks asks that side's tombstones, so a
deletion made through another pair is not undone by a copy (three replicas synced in a ring).
Kept in `mailmirror-tombstones` at the maildir root, one line per deletion, newest last;
lines older than the retention are dropped when the file is rewritten. Pure codec here.
"""

from __future__ import annotations

from collections.abc import Iterable

from mailmirror.maildir.folders import InvalidFolder, check_folder
from mailmirror.maildir.names import InvalidName, check_name

TOMBSTONES_FILE = "mailmirror-tombstones"
RETENTION_SECONDS = 180 * 86400


def format_tombstone(when: int, key: str, folder: str, subdir: str, flags: Iterable[str]) -> str:
    return f"{when}\t{key}\t{folder}\t{subdir}\t{' '.join(sorted(flags))}\n"


def format_deletions(when: int, items: Iterable[tuple[str, str, str, Iterable[str]]]) -> str:
    """Lines for messages deleted now: (key, folder, subdir, flags) each."""
    return "".join(format_tombstone(when, *item) for item in items)


def prune_tombstones(text: str, now: int) -> str:
    """The file without lines past the retention, one line per key (the newest)."""
    return "".join(format_tombstone(when, key, folder, subdir, flags)
                   for key, (when, folder, subdir, flags) in parse_tombstones(text).items()
                   if when > now - RETENTION_SECONDS)


def parse_tombstones(text: str) -> dict[str, tuple[int, str, str, frozenset[str]]]:
    """key -> (time, folder, subdir, flags) of its newest line; bad lines are skipped."""
    out = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 5 or not parts[0].isdigit() or parts[3] not in ("new", "cur"):
            continue
        when, key, folder, subdir, flags = parts
        try:
            check_name(key)
            check_folder(folder)
        except (InvalidName, InvalidFolder):
            continue
        out[key] = (int(when), folder, subdir, frozenset(flags.split()) if flags else frozenset())
    return out
