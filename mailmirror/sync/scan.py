"""Scanning: find which messages changed since the base, cheaply.

A folder whose cur/ and new/ mtimes equal the stamps recorded at the last sync (and were old
enough then, so no same-tick change can hide) is not listed at all. In listed folders, a file
name equal to its base name is unchanged (flags live in the name), so only names that differ
are parsed. The result is the set of candidate keys with their entries on each side: the
planner's input. Reads replicas and the state store; changes nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import TypeVar

from mailmirror.maildir.names import (
    InvalidName,
    Name,
    from_raw,
    key_of,
    parse_name,
    size_of,
    to_raw,
)
from mailmirror.replica.base import Ref, Replica, Stamp
from mailmirror.sync.flags import FlagCodec
from mailmirror.sync.model import CUR, NEW, Entry, Flags, Side
from mailmirror.sync.state import BaseRow, FolderRow, SyncState

FINE_TICK_NS = 100_000_000
"""Longest a file system with sub-second mtimes keeps one mtime (the kernel's clock tick)."""
SCAN_SWITCH_INTERVAL = 0.0005
"""Seconds the base-name thread may hold the GIL while the scan's main thread waits for it
(Python's default: 0.005). The main thread gives the GIL up at every directory entry it lists
and every read from the agent, then waited up to the default for the thread's sets. Timed by
hand, alternating, a kept delta over SSH took 0.610-0.619 s at 0.5 ms against 0.633-0.650 s
(medians); the benchmark's own runs could not tell the two apart from the machine's noise."""
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Loc:
    """Where a message is on one side. What a rename needs besides is parsed again from
    relname (see details()); entry.size may be None where the name tells it (see
    Listing.entry())."""

    entry: Entry
    relname: str  # "cur/NAME" in entry.folder


@dataclass(frozen=True, slots=True)
class _Shared:
    """What many messages of one side have in common: folder, subdir, flags, and the text
    after the key in their file names. Such a message's Loc is rebuilt from its key."""

    entry: Entry  # size None
    suffix: str  # ":2,FS", or "" for a name without info


class Listing(dict[str, "Loc | _Shared"]):
    """key -> Loc of the messages on one side.

    A first sync holds one item per message, so a name that is just its key plus a common
    suffix is stored as a value shared with its kind (_Shared): per message only the key
    and a dict slot remain (about 200 bytes, against 470 for a Loc of its own). Reads
    rebuild the Loc; `in`, len() and iteration are the dict's own.
    """

    __slots__ = ()

    def __getitem__(self, key: str) -> Loc:
        value = dict.__getitem__(self, key)
        if type(value) is Loc:
            return value
        return Loc(value.entry, f"{value.entry.subdir}/{key}{value.suffix}")

    def get(self, key: str, default: Loc | None = None) -> Loc | None:  # type: ignore[override]
        return self[key] if key in self else default

    def relname(self, key: str) -> str:
        """self[key].relname without building the Loc (once per message of a first sync)."""
        value = dict.__getitem__(self, key)
        if type(value) is Loc:
            return value.relname
        return f"{value.entry.subdir}/{key}{value.suffix}"

    def entry(self, key: str) -> Entry:
        """The planner's entry: with the size the name tells when nothing else told it."""
        entry = dict.__getitem__(self, key).entry
        if entry.size is None and (size := size_of(key)) is not None:
            # not dataclasses.replace(): once per message of a first sync, twice as slow
            return Entry(entry.folder, entry.subdir, entry.flags, size)
        return entry


def details(replica: Replica, codec: FlagCodec, side: Side,
            loc: Loc) -> tuple[str, str, str | None]:
    """The unique part as on disk (may carry ,U=), the letters kept verbatim on this side
    (untranslatable keywords), and an info that is not "2,..." (kept verbatim)."""
    parsed = parse_name(loc.relname.partition("/")[2], replica.sep)
    if parsed.has_flags:
        return parsed.unique, codec.decode(side, loc.entry.folder, parsed.letters)[1], None
    return parsed.unique, "", parsed.info or None


def odd_info(relname: str, sep: str) -> str | None:
    """What details() says of the info, without parsing the whole name (once per copy)."""
    _, found, info = relname.partition(sep)
    return info if found and info and not info.startswith("2,") else None


@dataclass
class Scan:
    """What one run knows about both sides; built by scan(), consumed by the engine."""

    stamps: dict[Side, dict[str, Stamp]]
    clock: dict[Side, int]
    known: dict[tuple[str, str], FolderRow]
    dirty: dict[Side, set[str]]
    base: dict[str, BaseRow]
    current: dict[Side, Listing]
    keys: list[str]  # the candidates, sorted: the keys this run plans
    duplicates: dict[Side, list[Loc]] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    listed_count: dict[Side, int] = field(default_factory=dict)
    base_count: dict[Side, int] = field(default_factory=dict)  # base rows in dirty folders
    emptied: dict[Side, set[str]] = field(default_factory=dict)  # had base names, list none
    # dirty folders listed in one subdir only (folder -> "cur" or "new"): the other one is
    # unchanged since the last sync; a dirty folder not in here was listed whole
    partial: dict[Side, dict[str, str]] = field(default_factory=dict)
    # keys a client moved while they were listed (see _moving), left out of this run, and
    # the folders they were seen in: not recorded as settled, so the next run lists them
    moving: set[str] = field(default_factory=set)
    unsettled: set[tuple[Side, str]] = field(default_factory=set)


def side_code(side: Side, low: Side) -> str:
    return "low" if side is low else "high"


def scan(
    replicas: dict[Side, Replica],
    state: SyncState,
    pair_id: int,
    low: Side,
    codec: FlagCodec,
    full: bool = False,
    margin_ns: int = 2_000_000_000,
    progress: Callable[[str, int, int], None] | None = None,
) -> Scan:
    """List what changed on both sides since the base; see the module docstring.

    `progress("list", folders done, folders to list)`: a first sync of a large maildir
    spends seconds here, before there is anything to copy."""
    idx = {low: 0, low.other: 1}
    clock = {s: r.clock_ns() for s, r in replicas.items()}
    stamps = {s: r.stamps() for s, r in replicas.items()}
    known = state.folders(pair_id)
    every = set(stamps[Side.A]) | set(stamps[Side.B]) | {f for f, _ in known}
    dirty: dict[Side, set[str]] = {}
    partial: dict[Side, dict[str, str]] = {}
    for s in Side:
        code = side_code(s, low)
        dirty[s], partial[s] = set(), {}
        for folder in every:
            row = known.get((folder, code))
            stamp = stamps[s].get(folder)
            if (full or row is None or not row.trusted or row.stamp != stamp):
                dirty[s].add(folder)
                if not full and row is not None and row.trusted and row.stamp and stamp:
                    # only what a directory holds changes its mtime: list just the one
                    # that changed (new mail in new/ leaves a large cur/ unlisted)
                    changed = [sub for sub, then, now in ((CUR, row.stamp.cur, stamp.cur),
                                                          (NEW, row.stamp.new, stamp.new))
                               if then != now]
                    if len(changed) == 1:
                        partial[s][folder] = changed[0]
    result = Scan(stamps, clock, known, dirty, {}, {Side.A: Listing(), Side.B: Listing()},
                  [], partial=partial)
    # Folder by folder, so memory follows the largest folder, not the maildir: base names and
    # listings are compared as C-level sets; only names that differ are parsed.
    gone: dict[Side, dict[str, Ref]] = {Side.A: {}, Side.B: {}}  # key -> base name not listed
    shared: dict[Side, dict[tuple[str, str, str], _Shared]] = {Side.A: {}, Side.B: {}}
    candidates: set[str] = set()
    empty: dict[Side, list[str]] = {Side.A: [], Side.B: []}  # folders that listed nothing
    for s in Side:
        result.listed_count[s] = result.base_count[s] = 0
        result.emptied[s] = set()
    folders = sorted(dirty[Side.A] | dirty[Side.B])
    # the base names of the next folder are read (another thread, SQLite without the GIL)
    # while this one is listed
    known = _ahead(lambda f: state.base_names(
        pair_id, f, {idx[s]: partial[s].get(f) for s in Side if f in dirty[s]}), folders)
    # a remote side lists its next folders while we compare this one
    listings = {s: replicas[s].listings([(f, _subdirs(partial[s], f)) for f in folders
                                         if f in dirty[s] and f in stamps[s]])
                for s in Side}
    # on an error, the thread is done with the store before we go on
    with closing(known), closing(listings[Side.A]), closing(listings[Side.B]):
        for done, (folder, by_side) in enumerate(zip(folders, known, strict=True)):
            if progress is not None:
                progress("list", done, len(folders))
            for s in [side for side in Side if folder in dirty[side]]:
                known_names = by_side[idx[s]]
                listed = _next_listing(listings[s], folder) if folder in stamps[s] else []
                now = set(listed)
                del listed
                # a base name is the file name on this side, so its key is parsed from it:
                # only the names that vanished need that, the rest is one C-level set
                # difference, of raw names (bytes): a str each would cost more than the rest
                result.listed_count[s] += len(now)
                result.base_count[s] += len(known_names)
                if known_names and not now and folder in stamps[s] and folder not in partial[s]:
                    result.emptied[s].add(folder)
                if not now and folder in stamps[s]:
                    empty[s].append(folder)
                removed = _refs(folder, known_names - now, replicas[s].sep)
                gone[s].update(removed)
                candidates.update(removed)
                current = result.current[s]
                for raw in now.difference(known_names):
                    relname = from_raw(raw)
                    parsed = _parse(replicas[s], codec, s, folder, relname, result.invalid,
                                    shared[s])
                    if parsed is None:
                        continue
                    key, value = parsed
                    if key in current:
                        loc = value if type(value) is Loc else Loc(value.entry, relname)
                        result.duplicates.setdefault(s, []).append(loc)
                        continue
                    current[key] = value
                    candidates.add(key)
    if progress is not None and folders:
        progress("list", len(folders), len(folders))
    for s in Side:
        # renamed away while it was listed (IMAP RENAME) and back, a folder keeps its mtimes
        # and lists nothing: a folder that listed nothing is never recorded as matching the
        # base (so an empty folder is listed every run: two reads of empty directories)
        result.unsettled.update((s, f) for f in empty[s])
        refs = {k: ref for k, ref in gone[s].items() if k not in result.current[s]}
        if not refs:
            continue
        lost = {k: ref.folder for k, ref in refs.items()}
        code = side_code(s, low)
        looked = {row.stamp for f in set(lost.values())
                  if (row := result.known.get((f, code))) is not None and row.stamp}
        # a folder renamed away while it was listed, and back, keeps its mtimes: the names
        # the listing missed are still there
        missed = {ref.folder for ref, size in zip(refs.values(),
                                                  replicas[s].sizes(list(refs.values())),
                                                  strict=True) if size is not None}
        moving = _moving(replicas[s], stamps[s], clock[s], margin_ns, lost, missed, looked)
        candidates.difference_update(moving)
        result.moving.update(moving)
        # their base rows stay as they were: no folder holding them, on either side, may be
        # recorded as matching the base
        for key, folder in moving.items():
            result.unsettled.update({(s, folder), (Side.A, lost[key]), (Side.B, lost[key])})
            if (there := result.current[s.other].get(key)) is not None:
                result.unsettled.add((s.other, there.entry.folder))
    # sorted once, and the set let go: its table (4 MB at 100,000 keys) outlived the scan
    result.keys = sorted(candidates)
    del candidates
    base = result.base
    base.update(state.base_for(pair_id, result.keys))
    for s in Side:
        current = result.current[s]
        for key in result.keys:
            row = base.get(key)
            if row is None or key in gone[s]:
                continue
            at_base = Loc(row.entry, row.names[idx[s]])
            if key in current:
                # the base copy is still in place and another name carries the same key
                result.duplicates.setdefault(s, []).append(current[key])
            current[key] = at_base
    _fill_sizes(replicas, result)
    return result


def _moving(replica: Replica, before: dict[str, Stamp], clock: int, margin: int,
            lost: dict[str, str], folders: set[str], looks: set[Stamp]) -> dict[str, str]:
    """The keys of `lost` (listed nowhere on this side) that are still there: key -> folder.

    A client that moves a message while the folders are listed (into a folder listed
    earlier, new/ to cur/ between the two listings, a rename racing a readdir) hides it from
    the listing; taken for a deletion, it would be deleted on the other side, or copied back
    beside itself (a duplicate) when the other side changed it. Only a directory whose mtime
    changed since the stamps were read, or is less than a clock tick old (a change in the
    same tick would not show), can have received it: those are listed again. So are
    `folders`, and folders whose stamps are in `looks`, as a folder the keys were in looked at
    the last sync (a directory renamed by IMAP RENAME keeps its mtimes: two look-alike folders
    swapped).

    A tick is 0.1 s where mtimes have sub-second digits, the margin where they are whole
    seconds (SFTP). The second look is believed only if no directory it lists changes
    meanwhile, which their mtimes show once they are a tick old: until then it waits, once.
    Directories that keep changing, or change during the look, leave every lost key for the
    next run.
    """
    for _ in range(2):
        after = replica.stamps()
        coarse = all(t % 1_000_000_000 == 0 for st in after.values() for t in (st.cur, st.new))
        tick = margin if coarse else FINE_TICK_NS
        suspects = _suspects(before, after, clock - tick, folders, looks)
        if not suspects:
            return {}
        newest = max(getattr(after[f], sub) for f, subdirs in suspects for sub in subdirs)
        wait = newest + tick - replica.clock_ns()
        if wait <= 0:
            break
        time.sleep(wait / 1e9)
    else:
        return dict(lost)
    found: dict[str, str] = {}
    # a key's part before its first field (",S=...", ",U=...") starts every name of it:
    # names are matched on that much first, and only the few that match are parsed
    raw_keys = list(map(to_raw, lost))
    width = min(len(key.partition(b",")[0]) for key in raw_keys)
    starts = {key[:width] for key in raw_keys}
    sep = to_raw(replica.sep)
    with closing(replica.listings(suspects)) as listings:
        for folder, names in listings:
            for raw in names:
                if raw[4:4 + width] in starts:
                    key = key_of(from_raw(raw[4:].partition(sep)[0]))
                    if key in lost:
                        found[key] = folder
    if replica.stamps() != after:
        return {key: found.get(key, folder) for key, folder in lost.items()}
    return found


def _suspects(before: dict[str, Stamp], after: dict[str, Stamp], recent: int,
              folders: set[str], looks: set[Stamp]) -> list[tuple[str, tuple[str, ...]]]:
    """The subdirs _moving lists again, by folder."""
    suspects = []
    for folder, stamp in after.items():
        then = before.get(folder)
        whole = folder in folders or stamp in looks
        subdirs = tuple(sub for sub, old, now in ((CUR, then and then.cur, stamp.cur),
                                                  (NEW, then and then.new, stamp.new))
                        if now != old or now >= recent or whole)
        if subdirs:
            suspects.append((folder, subdirs))
    return suspects


def _refs(folder: str, raws: set[bytes], sep: str) -> dict[str, Ref]:
    """key -> Ref of the base names (raw) a listing no longer has."""
    out = {}
    for raw in raws:
        relname = from_raw(raw)
        out[key_of(parse_name(relname[4:], sep).unique)] = Ref(folder, relname)
    return out


def _subdirs(partial: dict[str, str], folder: str) -> tuple[str, ...]:
    only = partial.get(folder)
    return (only,) if only else (CUR, NEW)


def _next_listing(listings: Iterator[tuple[str, list[bytes]]], folder: str) -> list[bytes]:
    got, names = next(listings)
    if got != folder:
        raise AssertionError(f"listing of {got!r} where {folder!r} was due")
    return names


def _ahead(fetch: Callable[[_T], _R], items: list[_T]) -> Iterator[_R]:
    """fetch(item) for each item in order, the next one computed in a thread meanwhile.

    At most two results are held, so memory still follows the largest folder. Meanwhile
    the GIL switch interval is SCAN_SWITCH_INTERVAL at most.
    """
    if len(items) < 2:
        yield from map(fetch, items)
        return
    from concurrent.futures import ThreadPoolExecutor  # only runs that list two folders

    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, SCAN_SWITCH_INTERVAL))
    try:
        with ThreadPoolExecutor(1, "mailmirror-scan") as pool:
            pending = pool.submit(fetch, items[0])
            for item in items[1:]:
                done, pending = pending, pool.submit(fetch, item)
                yield done.result()
            yield pending.result()
    finally:
        sys.setswitchinterval(interval)


def _parse(replica: Replica, codec: FlagCodec, side: Side, folder: str, relname: str,
           invalid: list[str], shared: dict[tuple[str, str, str], _Shared]
           ) -> tuple[str, Loc | _Shared] | None:
    subdir, _, name = relname.partition("/")
    try:
        parsed = parse_name(name, replica.sep)
    except InvalidName as exc:
        invalid.append(f"{replica.label}: {folder}/{relname}: {exc}")
        return None
    key = key_of(parsed.unique)
    subdir = {CUR: CUR, NEW: NEW}.get(subdir, subdir)  # one shared string, not one each
    if key == parsed.unique:
        suffix = name[len(key):]
        value = shared.get((folder, subdir, suffix))
        if value is None:
            value = shared[folder, subdir, suffix] = _Shared(
                Entry(folder, subdir, _flags(codec, side, folder, parsed)), suffix)
        return key, value
    return key, Loc(Entry(folder, subdir, _flags(codec, side, folder, parsed),
                          size_of(parsed.unique)), relname)


def _flags(codec: FlagCodec, side: Side, folder: str, parsed: Name) -> Flags:
    return codec.decode(side, folder, parsed.letters)[0] if parsed.has_flags else frozenset()


def _fill_sizes(replicas: dict[Side, Replica], result: Scan) -> None:
    """Sizes decide 'same message or a clash' for keys new on both sides; stat only those."""
    in_a, in_b = result.current[Side.A], result.current[Side.B]
    need = [k for k in result.keys
            if k in in_a and k in in_b and k not in result.base
            and (in_a.entry(k).size is None or in_b.entry(k).size is None)]
    if not need:
        return
    for s in Side:
        locs = [result.current[s][k] for k in need]
        sizes = replicas[s].sizes([Ref(loc.entry.folder, loc.relname) for loc in locs])
        for key, loc, size in zip(need, locs, sizes, strict=True):
            if size is not None:
                result.current[s][key] = replace(loc, entry=replace(loc.entry, size=size))
