"""List Maildir++ trees as plain data and check that a sync left them right.

Owns the benchmark's own, deliberately independent view of a maildir (it imports nothing from
mailmirror, so a bug there cannot hide itself here). A message's key is (folder, unique name),
the unique name being the file name before the `:` info separator; its state is (subdir, flags).
For a tool that names the files it writes itself (mbsync), `MessageIds` finds the unique name
from the message's Message-ID header instead.
"""

from __future__ import annotations

import filecmp
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

INBOX = "INBOX"
SUBDIRS = ("cur", "new")

Key = tuple[str, str]
"""(folder, unique name): a message's identity within a tree."""
State = dict[Key, tuple[str, str]]
"""What a tree should hold: key -> (subdir, flags), flags as sorted letters."""
Identify = Callable[[Path, str], str]
"""The unique name a message file stands for, given its path and file name."""
HEAD_BYTES = 4096
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\n]*>)", re.IGNORECASE | re.MULTILINE)


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


def by_name(path: Path, name: str) -> str:
    """The unique name of a message file that kept the name it was given: its own."""
    return split_name(name)[0]


def message_id(data: bytes) -> str | None:
    """The Message-ID of a message, from its first bytes (the header), or None."""
    match = MESSAGE_ID.search(data[:HEAD_BYTES].split(b"\n\n", 1)[0])
    return match.group(1).decode(errors="replace") if match else None


@dataclass(frozen=True)
class Entry:
    """One message file as found on disk, and the unique name it stands for (its key's)."""

    folder: str
    subdir: str
    name: str
    unique: str

    @property
    def key(self) -> Key:
        return self.folder, self.unique

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


def scan(root: Path, identify: Identify = by_name) -> Listing:
    """List a Maildir++ tree, plus anything left behind in tmp/. Names only, unless `identify`
    reads the files."""
    entries: dict[Key, Entry] = {}
    duplicates: list[Key] = []
    tmp_files: list[str] = []
    for folder, path in iter_folders(root):
        for subdir in SUBDIRS:
            for name in os.listdir(path / subdir):
                if name.startswith("."):
                    continue
                entry = Entry(folder, subdir, name, identify(path / subdir / name, name))
                if entry.key in entries:
                    duplicates.append(entry.key)
                entries[entry.key] = entry
        if (path / "tmp").is_dir():
            tmp_files += [f"{folder}/tmp/{n}" for n in os.listdir(path / "tmp")]
    return Listing(entries, duplicates, tmp_files)


class MessageIds:
    """Identify message files by their Message-ID header, for a tool that writes copies under
    names of its own (mbsync): each Message-ID of the generated tree and of the delta maps to the
    generator's unique name. A file without a known Message-ID stands for its own name, so it
    shows up as unexpected; two files with the same Message-ID in a folder, as a duplicate."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def add(self, data: bytes, unique: str) -> None:
        mid = message_id(data)
        if mid is None:
            raise ValueError(f"message {unique} has no Message-ID")
        if self.names.setdefault(mid, unique) != unique:
            raise ValueError(f"messages {unique} and {self.names[mid]} share the Message-ID {mid}")

    def add_tree(self, root: Path, listing: Listing) -> None:
        for entry in listing.entries.values():
            with entry.path(root).open("rb") as f:
                self.add(f.read(HEAD_BYTES), entry.unique)

    def __call__(self, path: Path, name: str) -> str:
        with path.open("rb") as f:
            mid = message_id(f.read(HEAD_BYTES))
        known = self.names.get(mid) if mid else None
        return known or by_name(path, name)


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


def without_header(data: bytes, name: bytes) -> bytes:
    """The message without the header lines called `name` (e.g. b"X-TUID"), if it has any."""
    head, sep, body = data.partition(b"\n\n")
    prefix = name.lower() + b":"
    lines = [line for line in head.split(b"\n") if not line.lower().startswith(prefix)]
    return b"\n".join(lines) + sep + body


def _size_without(path: Path, name: bytes) -> int:
    """A message file's size without its `name` header lines (found in its first bytes)."""
    size = path.stat().st_size
    if not name:
        return size
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    return size - len(head) + len(without_header(head, name))


def verify(
    a: Path,
    b: Path,
    want: State,
    want_b: State | None = None,
    identify: Identify = by_name,
    added_header: bytes = b"",
    content_samples: int = 200,
) -> list[str]:
    """Check that tree A holds exactly `want` and tree B `want_b` (by default the same), with
    equal file sizes, equal bytes for a deterministic sample of the messages both hold, no
    duplicates and nothing left in tmp/. Sizes and bytes are compared without the header lines
    called `added_header`, if given (a line the tool writes into each copy, mbsync's X-TUID).

    Returns one line per kind of problem; an empty list means the sync is correct.
    """
    listings = {"A": scan(a, identify), "B": scan(b, identify)}
    wants = {"A": want, "B": want if want_b is None else want_b}
    problems: list[str] = []
    for label, listing in listings.items():
        problems += compare(wants[label], listing.state(), label)
        if listing.duplicates:
            problems.append(
                f"{label}: {len(listing.duplicates)} duplicated messages"
                f"{_examples(listing.duplicates)}"
            )
        if listing.tmp_files:
            problems.append(f"{label}: {len(listing.tmp_files)} files left in tmp/")
    ea, eb = listings["A"].entries, listings["B"].entries
    common = sorted(k for k in ea if k in eb)

    def size(root: Path, entry: Entry) -> int:
        return _size_without(entry.path(root), added_header)

    sizes = [k for k in common if size(a, ea[k]) != size(b, eb[k])]
    if sizes:
        problems.append(f"A/B: {len(sizes)} messages differ in size{_examples(sizes)}")
    step = max(1, len(common) // content_samples)
    sample = [k for k in common[::step] if k not in sizes]

    def same(pa: Path, pb: Path) -> bool:
        if not added_header:
            return filecmp.cmp(pa, pb, shallow=False)
        data_a, data_b = pa.read_bytes(), pb.read_bytes()
        return without_header(data_a, added_header) == without_header(data_b, added_header)

    bytes_differ = [k for k in sample if not same(ea[k].path(a), eb[k].path(b))]
    if bytes_differ:
        problems.append(
            f"A/B: {len(bytes_differ)} of {len(sample)} sampled messages differ in content"
            f"{_examples(bytes_differ)}"
        )
    return problems
