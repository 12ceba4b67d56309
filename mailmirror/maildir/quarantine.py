"""The quarantine: messages a sync deleted are moved here, not unlinked, and kept for a while.

Where: Maildir++ keeps it in `ROOT/mailmirror-quarantine/` (Dovecot lists only dot directories
there as mailboxes); the fs layout keeps it in `ROOT/tmp/mailmirror-quarantine/`, because fs
lists every directory except cur/ new/ tmp/. Dovecot's 36-hour tmp/ cleanup unlinks old *files*
directly in tmp/ and skips directories, so the quarantine survives it. Either way it is inside
the root, on the same file system, so a message goes in and comes back with one atomic rename.

Inside: `DAY/FOLDER/SUBDIR/NAME`, DAY the UTC date of the deletion (`2024-05-31`), FOLDER the
canonical folder name percent-encoded (`INBOX`, `Lists%2FDebian`), SUBDIR `cur` or `new`, NAME
the file name it had. Whole days are pruned once older than the retention. This module owns the
layout (pure helpers) and the local operations on it; SFTP replicas reuse the helpers.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TypeVar
from urllib.parse import quote, unquote

from mailmirror.errors import UsageError
from mailmirror.maildir.folders import (
    MAILDIRPP,
    InvalidFolder,
    check_folder,
    create_folder,
    folder_dir,
    list_folders,
)
from mailmirror.maildir.fsops import fsync_dir, rename_noreplace
from mailmirror.maildir.names import (
    SEPARATORS,
    InvalidName,
    check_name,
    fresh_unique,
    key_of,
    parse_name,
)

P = TypeVar("P", bound=PurePath)

QUARANTINE_DIR = "mailmirror-quarantine"
DEFAULT_KEEP_DAYS = 30
MAX_KEEP_DAYS = 36500  # a century: far past it, the day arithmetic overflows
_DAY_SECONDS = 86400
_HEADER_BYTES = 64 << 10


def quarantine_dir(root: P, layout: str = MAILDIRPP) -> P:
    """The quarantine directory of a maildir root (see the module docstring for why there)."""
    return root / QUARANTINE_DIR if layout == MAILDIRPP else root / "tmp" / QUARANTINE_DIR


def day_name(seconds: float) -> str:
    """The UTC date of a moment, as the name of a quarantine day directory."""
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def is_day_name(name: str) -> bool:
    try:
        return time.strftime("%Y-%m-%d", time.strptime(name, "%Y-%m-%d")) == name
    except ValueError:
        return False


def expired_days(names: list[str], now: float, keep_days: int) -> list[str]:
    """Day directories whose messages were deleted more than keep_days days before `now`."""
    limit = day_name(now - keep_days * _DAY_SECONDS)
    return sorted(n for n in names if is_day_name(n) and n < limit)


def encode_folder(folder: str) -> str:
    return quote(folder, safe="")


def decode_folder(text: str, layout: str = MAILDIRPP) -> str:
    """The folder a quarantine directory name stands for; InvalidFolder for foreign names."""
    folder = unquote(text)
    check_folder(folder, layout)
    return folder


def entry_path(qdir: P, day: str, folder: str, relname: str) -> P:
    """Where the message `folder`/`relname` goes when it is quarantined on `day`."""
    sub, _, name = relname.partition("/")
    return qdir / day / encode_folder(folder) / sub / name


@dataclass(frozen=True)
class Quarantined:
    """One message in the quarantine."""

    day: str
    folder: str
    subdir: str
    name: str
    path: Path

    def key(self, sep: str = ":") -> str:
        return key_of(parse_name(self.name, sep).unique)


# -- local operations ----------------------------------------------------------------------
def quarantine(root: Path, layout: str, source: str, folder: str, relname: str,
               now: float) -> str:
    """Move the message file at `source` (folder/relname) into the quarantine; no clobbering.

    Returns the directory that got the name (for the caller's directory fsync). Raises
    FileNotFoundError when the source is gone and FileExistsError when another message of
    that name was already quarantined today. The same message quarantined twice in a day (a
    pair whose base was behind copied it back, and it was deleted again) is there already:
    the source is removed.
    """
    target = entry_path(quarantine_dir(root, layout), day_name(now), folder, relname)
    if not os.path.lexists(source):
        raise FileNotFoundError(source)
    os.makedirs(target.parent, mode=0o700, exist_ok=True)
    try:
        rename_noreplace(source, str(target))
    except FileExistsError:
        if not filecmp.cmp(source, target, shallow=False):
            raise
        os.unlink(source)
    return str(target.parent)


def entries(root: Path, layout: str = MAILDIRPP) -> Iterator[Quarantined]:
    """Every message in the quarantine, oldest day first; foreign files are left out."""
    qdir = quarantine_dir(root, layout)
    for day in sorted(_names(qdir)):
        if not is_day_name(day):
            continue
        for encoded in sorted(_names(qdir / day)):
            try:
                folder = decode_folder(encoded, layout)
            except InvalidFolder:
                continue
            for sub in ("cur", "new"):
                base = qdir / day / encoded / sub
                for name in sorted(_names(base)):
                    try:
                        check_name(name)
                    except InvalidName:
                        continue
                    if os.path.isfile(base / name) and not os.path.islink(base / name):
                        yield Quarantined(day, folder, sub, name, base / name)


def describe(item: Quarantined, sep: str = ":") -> dict[str, str | int]:
    """What a user needs to pick a message: its headers (From, Subject, Date) and size."""
    import email.parser  # only `quarantine list` reads headers: 2.4 MB left out of syncs
    import email.policy

    headers: dict[str, str] = {}
    try:
        with open(item.path, "rb") as f:
            head = f.read(_HEADER_BYTES)
        size = os.stat(item.path).st_size
        parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            head, headersonly=True)
        for field in ("from", "subject", "date"):
            value = parsed.get(field)
            headers[field] = " ".join(str(value).split()) if value is not None else ""
    except (OSError, ValueError, TypeError, LookupError):
        size = 0
    return {"key": item.key(sep), "day": item.day, "folder": item.folder,
            "subdir": item.subdir, "name": item.name, "size": size, **headers}


def restore(root: Path, layout: str, sep: str, item: Quarantined) -> str:
    """Move a quarantined message back into its folder, under a fresh unique name.

    The fresh name makes it a new message for every sync pair: its old key may be in a base
    or a tombstone, which would delete it again. The folder is created when it is gone.
    Returns the restored relname. Raises FileExistsError (never clobbers) and OSError.
    """
    parsed = parse_name(item.name, sep)
    unique = fresh_unique(key_of(parsed.unique), f"restored {item.day} {item.name}")
    name = unique if parsed.info is None else f"{unique}{sep}{parsed.info}"
    target_dir = create_folder(root, item.folder, layout) / item.subdir
    rename_noreplace(str(item.path), str(target_dir / name))
    fsync_dir(str(target_dir))
    fsync_dir(str(item.path.parent))
    for parent in (item.path.parent, item.path.parent.parent, item.path.parent.parent.parent):
        try:
            os.rmdir(parent)  # only when empty: the quarantine keeps no empty days
        except OSError:
            break
    return f"{item.subdir}/{name}"


def present_keys(root: Path, layout: str, sep: str) -> dict[str, str]:
    """key -> folder of every message in the maildir (restore refuses to duplicate one)."""
    found = {}
    for folder in list_folders(root, layout):
        for sub in ("cur", "new"):
            for name in _names(folder_dir(root, folder, layout) / sub):
                try:
                    found[key_of(parse_name(name, sep).unique)] = folder
                except InvalidName:
                    continue
    return found


def restore_keys(root: Path, layout: str, sep: str, keys: list[str]
                 ) -> Iterator[tuple[str, str]]:
    """Restore the newest quarantined message of each key, yielding (folder, relname) as
    each is back (so a failure on a later one leaves the earlier ones said).

    Raises UsageError (nothing restored) when a key is not in the quarantine or is still in
    the maildir (restoring it would make a second copy), or when its name shows another
    separator than `sep` (its fresh name would keep the old key, and the next sync would
    delete it again).
    """
    if sep not in SEPARATORS:
        raise UsageError(f"--separator must be one of {' '.join(SEPARATORS)}")
    newest: dict[str, Quarantined] = {}
    for item in entries(root, layout):
        newest[item.key(sep)] = item  # entries() runs oldest day first
    missing = [k for k in keys if k not in newest]
    if missing:
        raise UsageError(f"not in the quarantine of {root}: {', '.join(missing)} (see "
                         "`mailmirror quarantine list`)")
    present = present_keys(root, layout, sep)
    there = [f"{k} (in {present[k]})" for k in keys if k in present]
    if there:
        raise UsageError(f"already in {root}, not restored: {', '.join(there)}")
    for k in keys:
        name = newest[k].name
        other = next((s for s in SEPARATORS if s != sep and f"{s}2," in name), None)
        if other is not None and f"{sep}2," not in name:
            raise UsageError(f"{name} has {other!r} between its key and flags: this maildir "
                             f"uses --separator {other!r}; nothing restored")
    for k in dict.fromkeys(keys):
        yield newest[k].folder, restore(root, layout, sep, newest[k])


def listing_lines(items: list[dict[str, str | int]]) -> list[str]:
    """`mailmirror quarantine list` as text: one line per message, newest last."""
    return [f"{i['day']}  {i['folder']}  {i['key']}  {i.get('from', '')}  "
            f"{i.get('subject', '')}".rstrip() for i in items]


def prune(root: Path, layout: str, keep_days: int, now: float) -> int:
    """Remove the days past the retention; the number of messages removed with them."""
    qdir = quarantine_dir(root, layout)
    removed = 0
    for day in expired_days(_names(qdir), now, keep_days):
        for _, _, files in os.walk(qdir / day):
            removed += len(files)
        shutil.rmtree(qdir / day, ignore_errors=True)
    return removed


def _names(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
