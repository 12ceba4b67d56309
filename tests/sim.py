"""An in-memory world for planner tests: replicas are dicts key -> Entry, a pair has a base.

`apply` is the pretend executor (plain data, no files), so hypothesis can run whole syncs
between any number of replicas, in the style of CanopyCheck.
"""

from __future__ import annotations

from mailmirror.sync.model import Copy, Delete, Entry, Move, Plan, Rekey, Side
from mailmirror.sync.reconcile import plan

World = dict[str, Entry]


def apply(plan_: Plan, worlds: dict[Side, World], base: World,
          tombs: dict[Side, World] | None = None) -> None:
    """Run every action on plain dicts, then record the base rows like the engine does."""
    for decision in plan_.decisions:
        for action in decision.actions:
            if isinstance(action, Delete) and tombs is not None:
                tombs[action.side][action.key] = worlds[action.side][action.key]
            if isinstance(action, Copy):
                target = worlds[action.side]
                assert action.key not in target, f"copy onto an existing key {action.key}"
                target[action.key] = action.entry
            elif isinstance(action, Move):
                assert action.key in worlds[action.side]
                worlds[action.side][action.key] = action.entry
            elif isinstance(action, Delete):
                del worlds[action.side][action.key]
            elif isinstance(action, Rekey):
                world = worlds[action.side]
                assert action.new_key not in world
                world[action.new_key] = world.pop(action.key)
        for key, entry in decision.base.items():
            if entry is None:
                base.pop(key, None)
            else:
                base[key] = entry


def sync_pair(a: World, b: World, base: World, prefer: Side = Side.A,
              tomb_a: World | None = None, tomb_b: World | None = None) -> Plan:
    """One sync; with tombstone worlds, deletions are remembered per replica as the engine
    does: a base key missing on a side (a user deletion) and every Delete it applies."""
    keys = set(a) | set(b) | set(base)
    tombs = None
    if tomb_a is not None and tomb_b is not None:
        tombs = {Side.A: tomb_a, Side.B: tomb_b}
        for key, entry in base.items():
            for side, world in ((Side.A, a), (Side.B, b)):
                if key not in world:
                    tombs[side][key] = entry
    lookup = {}
    if tombs is not None:
        for key in keys - set(base):
            if (key in a) != (key in b):
                absent = Side.B if key in a else Side.A
                if key in tombs[absent]:
                    lookup[key] = tombs[absent][key]
    p = plan(keys, base, a, b, prefer, lookup)
    apply(p, {Side.A: a, Side.B: b}, base, tombs)
    return p


def same(a: World, b: World) -> bool:
    return a.keys() == b.keys() and all(a[k].same_state(b[k]) for k in a)
