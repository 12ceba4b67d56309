"""Three-way reconciliation: the pure heart of a sync.

Given, per message key, the base (what both sides held after the last sync of this pair) and
the entries on sides A and B now, decide the actions that make both sides equal and the base
to record afterwards. No I/O, no clock, no configuration: the tie-break side is an argument.
The rules are DESIGN.md's; docs/spec.md states them for users.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

from mailmirror.maildir.names import fresh_unique
from mailmirror.sync.model import (
    CUR,
    Action,
    Conflict,
    Copy,
    Decision,
    Delete,
    Entry,
    Flags,
    Move,
    Plan,
    Rekey,
    Side,
)

T = TypeVar("T")


def merge_flags(base: Flags, a: Flags, b: Flags) -> Flags:
    """Keep what both have, plus what either side added since the base."""
    return (a & b) | (a - base) | (b - base)


def _merge_value(base: T | None, a: T, b: T, tie: T) -> tuple[T, bool]:
    """A side that changed wins over one that did not; both changed differently -> tie, True."""
    if a == b:
        return a, False
    if base is not None:
        if a == base:
            return b, False
        if b == base:
            return a, False
    return tie, True


def _is_content_clash(a: Entry, b: Entry) -> bool:
    return a.size is not None and b.size is not None and a.size != b.size


def reconcile(
    key: str,
    base: Entry | None,
    a: Entry | None,
    b: Entry | None,
    prefer: Side = Side.A,
    tomb: Entry | None = None,
) -> Decision:
    """Decide one message. `prefer` breaks ties when both sides moved it differently.

    `tomb` is the absent side's tombstone for a message present on one side only: the state
    that side held when the message was deleted there (maybe through another pair). With no
    base, it stands in for the base, so a deletion made elsewhere is not undone by a copy.
    """
    entries = {Side.A: a, Side.B: b}
    if a is None and b is None:
        # gone on both sides (or never there): forget it
        return Decision(key, (), None)
    if a is None or b is None:
        present = Side.A if a is not None else Side.B
        entry = entries[present]
        assert entry is not None
        if base is None and tomb is not None:
            # deleted on the other side through another pair: as if this pair had seen it
            base = tomb
        if base is None:
            # new on one side: copy it over
            return Decision(key, (Copy(key, present, entry),), entry)
        if entry.same_state(base) and not _is_content_clash(entry, base):
            # deleted on one side, unchanged on the other: delete
            return Decision(key, (Delete(key, present),), None)
        # deleted on one side, changed on the other: keep the changed one, never lose mail
        conflict = Conflict(
            key,
            f"deleted on {present.other.name}, changed on {present.name}",
            f"kept: copied back to {present.other.name}",
        )
        return Decision(key, (Copy(key, present, entry),), entry, conflict)
    if _is_content_clash(a, b):
        return _split(key, base, a, b, prefer)
    return _merge(key, base, a, b, prefer)


def _merge(key: str, base: Entry | None, a: Entry, b: Entry, prefer: Side) -> Decision:
    """Both sides hold the message: merge flags, folder and subdir; rename where different."""
    tie = a if prefer is Side.A else b
    flags = merge_flags(base.flags if base else frozenset(), a.flags, b.flags)
    folder, folder_clash = _merge_value(base and base.folder, a.folder, b.folder, tie.folder)
    # with no base the subdir cannot conflict: cur wins over new
    subdir, _ = _merge_value(base and base.subdir, a.subdir, b.subdir, CUR)
    size = a.size if a.size is not None else b.size
    merged = Entry(folder, subdir, flags, size)
    actions: list[Action] = [
        Move(key, side, merged)
        for side, entry in ((Side.A, a), (Side.B, b))
        if not entry.same_state(merged)
    ]
    conflict = None
    if folder_clash:
        conflict = Conflict(
            key,
            f"moved to {a.folder!r} on A and to {b.folder!r} on B",
            f"{prefer.name} wins (--prefer): kept in {folder!r}",
        )
    return Decision(key, tuple(actions), merged, conflict)


def _split(key: str, base: Entry | None, a: Entry, b: Entry, prefer: Side) -> Decision:
    """Same key, different content: keep both, the stranger under a fresh key."""
    entries = {Side.A: a, Side.B: b}
    if base is not None and base.size in (a.size, b.size):
        keeper = Side.A if a.size == base.size else Side.B
    else:
        keeper = prefer
    stranger = keeper.other
    kept, moved = entries[keeper], entries[stranger]
    new_key = fresh_unique(key, f"{moved.size}")
    actions = (
        Rekey(key, stranger, new_key),
        Copy(key, keeper, kept),
        Copy(new_key, stranger, moved),
    )
    conflict = Conflict(
        key,
        f"different messages share this name (sizes {a.size} on A, {b.size} on B)",
        f"kept both: the one from {stranger.name} is now {new_key}",
    )
    return Decision(key, actions, kept, conflict, ((new_key, moved),))


def plan(
    keys: Iterable[str],
    base: Mapping[str, Entry],
    a: Mapping[str, Entry],
    b: Mapping[str, Entry],
    prefer: Side = Side.A,
    tombs: Mapping[str, Entry] | None = None,
) -> Plan:
    """Reconcile every key in `keys`; keys left out are taken as unchanged on both sides.

    `tombs` holds, for keys present on one side only, the absent side's tombstone.
    """
    decisions = []
    tombs = tombs or {}
    for key in sorted(keys):
        decision = reconcile(key, base.get(key), a.get(key), b.get(key), prefer, tombs.get(key))
        if decision.actions or decision.extra or decision.new_base != base.get(key):
            decisions.append(decision)
    conflicts = tuple(d.conflict for d in decisions if d.conflict)
    return Plan(tuple(decisions), conflicts)
