"""Dovecot keyword letters: the per-folder `dovecot-keywords` file that maps `a`-`z` to names.

Letters mean different things on different replicas, so sync translates through names. Adding
a keyword follows Dovecot: take the first free number, write the whole file under the
`dovecot-keywords.lock` dot-lock and rename it into place. The file itself is never synced.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

KEYWORDS_FILE = "dovecot-keywords"
LOCK_SUFFIX = ".lock"
MAX_KEYWORDS = 26
STALE_LOCK_SECONDS = 120


def parse_keywords(text: str) -> dict[str, str]:
    """letter -> keyword name; malformed lines are ignored, as Dovecot does."""
    mapping = {}
    for line in text.splitlines():
        number, _, name = line.partition(" ")
        if number.isdigit() and name and int(number) < MAX_KEYWORDS:
            mapping[chr(ord("a") + int(number))] = name
    return mapping


def format_keywords(mapping: dict[str, str]) -> str:
    return "".join(f"{ord(letter) - ord('a')} {name}\n" for letter, name in sorted(mapping.items()))


def assign_letters(mapping: dict[str, str], names: set[str]) -> dict[str, str]:
    """The map with each missing name given the first free letter, as Dovecot does.

    Names left without a letter (26 in use) stay out; the caller reports them.
    """
    missing = sorted(names - set(mapping.values()))
    free = [chr(ord("a") + i) for i in range(MAX_KEYWORDS) if chr(ord("a") + i) not in mapping]
    return {**mapping, **dict(zip(free, missing, strict=False))}


def read_keywords(folder_dir: Path) -> dict[str, str]:
    try:
        return parse_keywords((folder_dir / KEYWORDS_FILE).read_text("utf-8", "replace"))
    except FileNotFoundError:
        return {}


def add_keywords(folder_dir: Path, names: set[str]) -> dict[str, str]:
    """Ensure every name has a letter in this folder; return the full letter -> name map.

    Names that find no free letter (26 in use) stay unmapped; the caller reports them.
    """
    lock = folder_dir / (KEYWORDS_FILE + LOCK_SUFFIX)
    fd = _take_lock(lock)
    published = False
    try:
        mapping = read_keywords(folder_dir)
        if names <= set(mapping.values()):
            return mapping
        mapping = assign_letters(mapping, names)
        os.write(fd, format_keywords(mapping).encode())
        os.fsync(fd)
        os.rename(lock, folder_dir / KEYWORDS_FILE)
        published = True
        return mapping
    finally:
        os.close(fd)
        if not published:
            lock.unlink(missing_ok=True)


def _take_lock(lock: Path) -> int:
    deadline = time.monotonic() + 10
    while True:
        try:
            return os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
                    lock.unlink(missing_ok=True)
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
