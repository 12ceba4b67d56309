"""Scanning: find which messages changed since the base, cheaply.

A folder whose cur/ and new/ mtimes equal the stamps recorded at the last sync (and were old
enough then, so no same-tick change can hide) is not listed at all. In listed folders, a file
name equal to its base name is unchanged (flags live in the name), so only names that differ
are parsed. The result is the set of candidate keys with their entries on each side: the
planner's input. Reads replicas and the state store; changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import TypeVar

from mailmirror.maildir.names import InvalidName, key_of, parse_name, size_of
from mailmirror.replica.base import Ref, Replica, Stamp
from mailmirror.sync.flags import FlagCodec
from mailmirror.sync.model import CUR, NEW, Entry, Side
from mailmirror.sync.state import BaseRow, FolderRow, SyncState

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Loc:
    """Where a message is on one side. Kept small: a first sync holds one per message;
    what a rename needs besides is parsed again from relname (see details())."""

    entry: Entry
    relname: str  # "cur/NAME" in entry.folder


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
    current: dict[Side, dict[str, Loc]]
    candidates: set[str]
    duplicates: dict[Side, list[Loc]] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    listed_count: dict[Side, int] = field(default_factory=dict)
    base_count: dict[Side, int] = field(default_factory=dict)  # base rows in dirty folders
    emptied: dict[Side, set[str]] = field(default_factory=dict)  # had base names, list none
    # dirty folders listed in one subdir only (folder -> "cur" or "new"): the other one is
    # unchanged since the last sync; a dirty folder not in here was listed whole
    partial: dict[Side, dict[str, str]] = field(default_factory=dict)


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
) -> Scan:
    """List what changed on both sides since the base; see the module docstring."""
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
    result = Scan(stamps, clock, known, dirty, {}, {Side.A: {}, Side.B: {}}, set(),
                  partial=partial)
    # Folder by folder, so memory follows the largest folder, not the maildir: base names and
    # listings are compared as C-level sets; only names that differ are parsed.
    gone: dict[Side, set[str]] = {Side.A: set(), Side.B: set()}  # base name no longer there
    for s in Side:
        result.listed_count[s] = result.base_count[s] = 0
        result.emptied[s] = set()
    work = [(folder, s) for folder in sorted(dirty[Side.A] | dirty[Side.B])
            for s in Side if folder in dirty[s]]
    # the base names of the next folder are read (another thread, SQLite without the GIL)
    # while this one is listed
    known = _ahead(lambda w: state.base_names(pair_id, w[0], idx[w[1]],
                                              partial[w[1]].get(w[0])), work)
    # a remote side lists its next folders while we compare this one
    listings = {s: replicas[s].listings([(f, _subdirs(partial[s], f)) for f, side in work
                                         if side is s and f in stamps[s]])
                for s in Side}
    # on an error, the thread is done with the store before we go on
    with closing(known), closing(listings[Side.A]), closing(listings[Side.B]):
        for (folder, s), known_names in zip(work, known, strict=True):
            listed = _next_listing(listings[s], folder) if folder in stamps[s] else []
            now = set(listed)
            del listed
            # a base name is the file name on this side, so its key is parsed from it: only
            # the names that vanished need that, the rest is one C-level set difference
            result.listed_count[s] += len(now)
            result.base_count[s] += len(known_names)
            if known_names and not now and folder in stamps[s] and folder not in partial[s]:
                result.emptied[s].add(folder)
            removed = [key_of(parse_name(n[4:], replicas[s].sep).unique)
                       for n in known_names - now]
            gone[s].update(removed)
            result.candidates.update(removed)
            current = result.current[s]
            for relname in now.difference(known_names):
                parsed = _parse(replicas[s], codec, s, folder, relname, result.invalid)
                if parsed is None:
                    continue
                key, loc = parsed
                if key in current:
                    result.duplicates.setdefault(s, []).append(loc)
                    continue
                current[key] = loc
                result.candidates.add(key)
    base = result.base
    base.update(state.base_for(pair_id, sorted(result.candidates)))
    for s in Side:
        current = result.current[s]
        for key in result.candidates:
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


def _subdirs(partial: dict[str, str], folder: str) -> tuple[str, ...]:
    only = partial.get(folder)
    return (only,) if only else (CUR, NEW)


def _next_listing(listings: Iterator[tuple[str, list[str]]], folder: str) -> list[str]:
    got, names = next(listings)
    if got != folder:
        raise AssertionError(f"listing of {got!r} where {folder!r} was due")
    return names


def _ahead(fetch: Callable[[_T], _R], items: list[_T]) -> Iterator[_R]:
    """fetch(item) for each item in order, the next one computed in a thread meanwhile.

    At most two results are held, so memory still follows the largest folder.
    """
    if len(items) < 2:
        yield from map(fetch, items)
        return
    from concurrent.futures import ThreadPoolExecutor  # only runs that list two folders

    with ThreadPoolExecutor(1, "mailmirror-scan") as pool:
        pending = pool.submit(fetch, items[0])
        for item in items[1:]:
            done, pending = pending, pool.submit(fetch, item)
            yield done.result()
        yield pending.result()


def _parse(replica: Replica, codec: FlagCodec, side: Side, folder: str, relname: str,
           invalid: list[str]) -> tuple[str, Loc] | None:
    subdir, _, name = relname.partition("/")
    try:
        parsed = parse_name(name, replica.sep)
    except InvalidName as exc:
        invalid.append(f"{replica.label}: {folder}/{relname}: {exc}")
        return None
    flags = codec.decode(side, folder, parsed.letters)[0] if parsed.has_flags else frozenset()
    subdir = {CUR: CUR, NEW: NEW}.get(subdir, subdir)  # one shared string, not one each
    return key_of(parsed.unique), Loc(Entry(folder, subdir, flags, size_of(parsed.unique)),
                                      relname)


def _fill_sizes(replicas: dict[Side, Replica], result: Scan) -> None:
    """Sizes decide 'same message or a clash' for keys new on both sides; stat only those."""
    in_a, in_b = result.current[Side.A], result.current[Side.B]
    need = [k for k in result.candidates
            if k in in_a and k in in_b and k not in result.base
            and (in_a[k].entry.size is None or in_b[k].entry.size is None)]
    if not need:
        return
    for s in Side:
        locs = [result.current[s][k] for k in need]
        sizes = replicas[s].sizes([Ref(loc.entry.folder, loc.relname) for loc in locs])
        for key, loc, size in zip(need, locs, sizes, strict=True):
            if size is not None:
                result.current[s][key] = replace(loc, entry=replace(loc.entry, size=size))
