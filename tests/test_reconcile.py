"""The planner's rules as a table (one row per situation), then properties over random worlds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmirror.sync.model import CUR, NEW, Copy, Delete, Entry, Move, Rekey, Side
from mailmirror.sync.reconcile import merge_flags, reconcile
from tests.sim import World, same, sync_pair

A, B = Side.A, Side.B


def E(folder: str = "INBOX", subdir: str = CUR, flags: str = "", size: int | None = 10) -> Entry:
    """An entry; `flags` is a string of system flag letters."""
    return Entry(folder, subdir, frozenset(flags), size)


# (situation, base, a, b, expected actions, expected base entry, conflict?)
CASES = [
    ("unchanged on both", E(), E(), E(), [], E(), False),
    ("new on a: copy to b", None, E(), None, [Copy("k", A, E())], E(), False),
    ("new on b: copy to a", None, None, E(), [Copy("k", B, E())], E(), False),
    ("flag added on a", E(), E(flags="S"), E(), [Move("k", B, E(flags="S"))], E(flags="S"), False),
    ("flag removed on b", E(flags="S"), E(flags="S"), E(), [Move("k", A, E())], E(), False),
    ("concurrent flags merge", E(flags="S"), E(flags="SF"), E(flags="SR"),
     [Move("k", A, E(flags="FRS")), Move("k", B, E(flags="FRS"))], E(flags="FRS"), False),
    ("added S on a, removed S... on b too", E(flags="S"), E(flags="FS"), E(flags=""),
     [Move("k", A, E(flags="F")), Move("k", B, E(flags="F"))], E(flags="F"), False),
    ("deleted on a, unchanged on b: delete", E(), None, E(), [Delete("k", B)], None, False),
    ("deleted on b, unchanged on a: delete", E(), E(), None, [Delete("k", A)], None, False),
    ("deleted on a, flagged on b: keep", E(), None, E(flags="F"),
     [Copy("k", B, E(flags="F"))], E(flags="F"), True),
    ("deleted on a, moved on b: keep", E(), None, E("X"), [Copy("k", B, E("X"))], E("X"), True),
    ("deleted on both", E(), None, None, [], None, False),
    ("moved on a follows", E(), E("X"), E(), [Move("k", B, E("X"))], E("X"), False),
    ("moved differently: prefer a", E(), E("X"), E("Y"), [Move("k", B, E("X"))], E("X"), True),
    ("new->cur on b follows", E(subdir=NEW), E(subdir=NEW), E(subdir=CUR, flags="S"),
     [Move("k", A, E(subdir=CUR, flags="S"))], E(subdir=CUR, flags="S"), False),
    ("new on both, same size: merge, cur wins", None, E(subdir=NEW), E(flags="S"),
     [Move("k", A, E(flags="S"))], E(flags="S"), False),
    ("new on both, same size, unknown size", None, E(size=None), E(size=None), [],
     E(size=None), False),
]


@pytest.mark.parametrize("situation,base,a,b,actions,new_base,conflict", CASES,
                         ids=[c[0] for c in CASES])
def test_rule(situation, base, a, b, actions, new_base, conflict):
    decision = reconcile("k", base, a, b)
    assert list(decision.actions) == actions
    assert decision.base == {"k": new_base}
    assert (decision.conflict is not None) == conflict


def test_prefer_b_breaks_folder_tie():
    decision = reconcile("k", E(), E("X"), E("Y"), prefer=B)
    assert list(decision.actions) == [Move("k", A, E("Y"))]


@pytest.mark.parametrize("base", [None, E(size=10)])
def test_different_content_keeps_both(base):
    decision = reconcile("k", base, E(size=10), E(size=99))
    kinds = [type(x) for x in decision.actions]
    assert kinds == [Rekey, Copy, Copy]
    rekey = decision.actions[0]
    assert rekey.side is B  # the stranger is the side whose size differs from base / not preferred
    assert set(decision.base) == {"k", rekey.new_key}
    assert decision.conflict is not None


def test_merge_flags_formula():
    s = frozenset
    assert merge_flags(s("S"), s("SF"), s("")) == s("F")
    assert merge_flags(s(""), s("S"), s("R")) == s("RS")


# ---- properties --------------------------------------------------------------------------

KEYS = [f"k{i}" for i in range(6)]
entries = st.builds(
    Entry,
    folder=st.sampled_from(["INBOX", "X", "Y"]),
    subdir=st.sampled_from([NEW, CUR]),
    flags=st.frozensets(st.sampled_from(["S", "F", "R", "T", "$Label1"])),
    size=st.sampled_from([10, 10, 10, 11, None]),
)
worlds = st.dictionaries(st.sampled_from(KEYS), entries, max_size=6)


@settings(max_examples=400)
@given(base=worlds, a=worlds, b=worlds, prefer=st.sampled_from([A, B]))
def test_one_sync_converges_and_is_idempotent(base, a, b, prefer):
    before_a, before_b = dict(a), dict(b)
    sync_pair(a, b, base, prefer)
    assert same(a, b), "sides differ after one sync"
    assert same(a, base), "base does not describe what both sides hold"
    again = sync_pair(a, b, base, prefer)
    assert again.is_empty(), f"second sync planned {again.actions}"
    for key in set(before_a) & set(before_b):
        assert key in a, f"{key} held by both sides was lost"


@settings(max_examples=400)
@given(base=worlds, a=worlds, b=worlds)
def test_nothing_lost_unless_deleted_and_unchanged(base, a, b):
    old_base, before_a, before_b = dict(base), dict(a), dict(b)
    sync_pair(a, b, base)
    for key in set(before_a) | set(before_b):
        if key in a:
            continue
        holder = before_a.get(key) or before_b.get(key)
        assert key in old_base and (key not in before_a or key not in before_b)
        assert holder.same_state(old_base[key]), f"{key} was changed on one side but deleted"


@settings(max_examples=300)
@given(base=worlds, a=worlds, b=worlds)
def test_symmetry(base, a, b):
    """Swapping the sides (and the tie-break) gives the mirrored result."""
    a1, b1, base1 = dict(a), dict(b), dict(base)
    a2, b2, base2 = dict(b), dict(a), dict(base)
    sync_pair(a1, b1, base1, A)
    sync_pair(a2, b2, base2, B)
    assert same(a1, b2) and same(b1, a2)


# N replicas: random edits on any replica, syncs of random pairs, then a quiet round.
ops = st.lists(
    st.tuples(
        st.sampled_from(["deliver", "flag", "unflag", "move", "to_cur", "delete", "sync"]),
        st.integers(0, 2), st.integers(0, 2), st.sampled_from(KEYS),
        st.sampled_from(["S", "F", "$Label1"]), st.sampled_from(["INBOX", "X", "Y"]),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(ops=ops)
def test_n_replicas_agree(ops):
    replicas: list[World] = [{}, {}, {}]
    tombs: list[World] = [{}, {}, {}]
    bases: dict[tuple[int, int], World] = {}

    def sync(i: int, j: int) -> object:
        pair = (min(i, j), max(i, j))
        return sync_pair(replicas[i], replicas[j], bases.setdefault(pair, {}), A,
                         tombs[i], tombs[j])

    delivered: set[str] = set()
    deleted: set[str] = set()
    for op, i, j, key, flag, folder in ops:
        w = replicas[i]
        if op == "deliver" and key not in delivered:
            delivered.add(key)
            w[key] = Entry(folder, NEW, frozenset(), 100 + KEYS.index(key))
        elif op == "flag" and key in w:
            w[key] = w[key].moved(subdir=CUR, flags=w[key].flags | {flag})
        elif op == "unflag" and key in w:
            w[key] = w[key].moved(flags=w[key].flags - {flag})
        elif op == "move" and key in w:
            w[key] = w[key].moved(folder=folder)
        elif op == "to_cur" and key in w:
            w[key] = w[key].moved(subdir=CUR)
        elif op == "delete" and key in w:
            deleted.add(key)
            del w[key]
        elif op == "sync" and i != j:
            sync(i, j)
    # quiet rounds around the ring: tombstones keep a deletion from chasing a copy forever
    for _ in range(2):
        for i, j in ((0, 1), (1, 2), (2, 0)):
            sync(i, j)
    assert same(replicas[0], replicas[1]) and same(replicas[1], replicas[2])
    for key in delivered - deleted:
        assert key in replicas[0], f"{key} was never deleted but is gone"
    for i, j in ((0, 1), (1, 2), (2, 0)):
        assert sync(i, j).is_empty()


def test_deletion_does_not_chase_a_copy_around_a_ring():
    """Found by the engine oracle test: without tombstones this cycles forever."""
    replicas: list[World] = [{}, {}, {}]
    tombs: list[World] = [{}, {}, {}]
    bases: dict[tuple[int, int], World] = {}

    def sync(i: int, j: int) -> None:
        sync_pair(replicas[i], replicas[j], bases.setdefault((min(i, j), max(i, j)), {}), A,
                  tombs[i], tombs[j])

    replicas[2]["k"] = E(subdir=NEW)
    sync(1, 2)
    del replicas[2]["k"]
    for _ in range(3):
        for i, j in ((0, 1), (1, 2), (0, 2)):
            sync(i, j)
    assert replicas == [{}, {}, {}]
