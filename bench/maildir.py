"""List Maildir++ trees as plain data and check that a sync left them right.

Owns the benchmark's own, deliberately independent view of a maildir (it imports nothing from
mailmirror, so a bug there cannot hide itself here). A message's key is (folder, unique name),
the unique name being the file name before the `:` info separator; its state is (subdir, flags).
"""

from __future__ import annotations

import filecmp
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

INBOX = "INBOX"
SUBDIRS = ("cur", "new")

Key = tuple[str, str]
"""(folder, unique name): a message's identity within a tree."""
State = dict[Key, tuple[str, str]]
"""What a tree should hold: key -> (subdir, flags), flags as sorted letters."""


def split_name(name: str) -> tuple[str, str]:
    """Return (unique name, flags) of a message file name; flags are '' without `:2,` info."""
    unique, _, info = name.partition(":")
    flags = info[2:] if info.startswith("2,") else ""
    return unique, "".join(sorted(set(flags)))


def format_name(unique: str, flags: str) -> str:
    """The cur/ file name of a message with these flags."""
    return f"{unique}:2,{''.join(sorted(set(flags)))}"


def folder_dir(root: Path, folder: str) -> Path:
    """Directory of a Maildir++ folder: the root for INBOX, else `.Name`."""
    return root if folder == INBOX else root / f".{folder}"


def iter_folders(root: Path) -> Iterator[tuple[str, Path]]:
    """Every folder of a Maildir++ tree (a directory holding cur/), INBOX first."""
    if (root / "cur").is_dir():
        yield INBOX, root
    with os.scandir(root) as it:
        subs = sorted(e.name for e in it if e.name.startswith(".") and e.is_dir())
    for name in subs:
        if (root / name / "cur").is_dir():
            yield name[1:], root / name


@dataclass(frozen=True)
class Entry:
    """One message file as found on disk."""

    folder: str
    subdir: str
    name: str

    @property
    def key(self) -> Key:
        return self.folder, split_name(self.name)[0]

    @property
    def flags(self) -> str:
        return split_name(self.name)[1]

    def path(self, root: Path) -> Path:
        return folder_dir(root, self.folder) / self.subdir / self.name


@dataclass
class Listing:
    """Every message of a tree by key, plus keys found more than once (a duplicate is a bug)."""

    entries: dict[Key, Entry]
    duplicates: list[Key]
    tmp_files: list[str]

    def state(self) -> State:
        return {k: (e.subdir, e.flags) for k, e in self.entries.items()}


def scan(root: Path) -> Listing:
    """List a Maildir++ tree: names only, plus anything left behind in tmp/."""
    entries: dict[Key, Entry] = {}
    duplicates: list[Key] = []
    tmp_files: list[str] = []
    for folder, path in iter_folders(root):
        for subdir in SUBDIRS:
            for name in os.listdir(path / subdir):
                if name.startswith("."):
                    continue
                entry = Entry(folder, subdir, name)
                if entry.key in entries:
                    duplicates.append(entry.key)
                entries[entry.key] = entry
        if (path / "tmp").is_dir():
            tmp_files += [f"{folder}/tmp/{n}" for n in os.listdir(path / "tmp")]
    return Listing(entries, duplicates, tmp_files)


def _examples(keys: list[Key]) -> str:
    shown = ", ".join(f"{f}/{u}" for f, u in sorted(keys)[:3])
    return f" (e.g. {shown}{', ...' if len(keys) > 3 else ''})"


def compare(want: State, got: State, label: str) -> list[str]:
    """Differences between the wanted and the found state of one tree, one line per kind."""
    problems = []
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    common = [k for k in want if k in got]
    flags = [k for k in common if want[k][1] != got[k][1]]
    place = [k for k in common if want[k][0] != got[k][0]]
    for keys, what in (
        (missing, "missing"),
        (extra, "unexpected"),
        (flags, "with wrong flags"),
        (place, "in the wrong subdir (new/cur)"),
    ):
        if keys:
            problems.append(f"{label}: {len(keys)} messages {what}{_examples(keys)}")
    return problems


def verify(a: Path, b: Path, want: State, content_samples: int = 200) -> list[str]:
    """Check that both trees hold exactly `want`, with equal file sizes, equal bytes for a
    deterministic sample of messages, no duplicates and nothing left in tmp/.

    Returns one line per kind of problem; an empty list means the sync is correct.
    """
    listings = {"A": scan(a), "B": scan(b)}
    problems: list[str] = []
    for label, listing in listings.items():
        problems += compare(want, listing.state(), label)
        if listing.duplicates:
            problems.append(
                f"{label}: {len(listing.duplicates)} duplicated messages"
                f"{_examples(listing.duplicates)}"
            )
        if listing.tmp_files:
            problems.append(f"{label}: {len(listing.tmp_files)} files left in tmp/")
    ea, eb = listings["A"].entries, listings["B"].entries
    common = sorted(k for k in ea if k in eb)
    sizes = [k for k in common if ea[k].path(a).stat().st_size != eb[k].path(b).stat().st_size]
    if sizes:
        problems.append(f"A/B: {len(sizes)} messages differ in size{_examples(sizes)}")
    step = max(1, len(common) // content_samples)
    sample = [k for k in common[::step] if k not in sizes]
    bytes_differ = [
        k for k in sample if not filecmp.cmp(ea[k].path(a), eb[k].path(b), shallow=False)
    ]
    if bytes_differ:
        problems.append(
            f"A/B: {len(bytes_differ)} of {len(sample)} sampled messages differ in content"
            f"{_examples(bytes_differ)}"
        )
    return problems
