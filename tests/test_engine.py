"""The real engine on real directories: random edits and syncs among three local replicas,
with directory times backdated so the unchanged-folder shortcut is exercised too. The same
edits run through the pure planner on plain data (tests/sim.py) as an oracle: the disk must
end exactly where the planner says, after every sync."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmirror.maildir.folders import create_folder, folder_dir, list_folders
from mailmirror.maildir.names import parse_name
from mailmirror.replica.base import Stamp
from mailmirror.replica.local import LocalReplica, open_local
from mailmirror.store import open_store
from mailmirror.sync.engine import SyncOptions, sync
from mailmirror.sync.flags import FlagCodec
from mailmirror.sync.model import CUR, NEW, Entry, Side
from mailmirror.sync.scan import SCAN_SWITCH_INTERVAL, scan
from mailmirror.sync.state import SyncState
from tests.sim import sync_pair

FOLDERS = ["INBOX", "Work", "Lists/Deb"]
_clock = itertools.count(1_000_000)


def backdate(root: Path) -> None:
    """Give each recently changed cur/ new/ a distinct old mtime, as if time had passed."""
    for folder in list_folders(root):
        for sub in ("cur", "new"):
            path = folder_dir(root, folder) / sub
            if path.stat().st_mtime_ns > 10**17:
                t = next(_clock) * 1_000_000_000
                os.utime(path, ns=(t, t))


def snapshot(root: Path) -> dict[str, tuple[str, str, str, bytes]]:
    """key -> (folder, subdir, flags, content) read straight from disk."""
    out = {}
    for folder in list_folders(root):
        for sub in ("cur", "new"):
            d = folder_dir(root, folder) / sub
            for name in os.listdir(d):
                parsed = parse_name(name)
                assert parsed.key not in out, f"duplicate {parsed.key} in {root}"
                out[parsed.key] = (folder, sub, parsed.letters, (d / name).read_bytes())
    return out


def find(root: Path, key: str) -> Path | None:
    for folder in list_folders(root):
        for sub in ("cur", "new"):
            for name in os.listdir(folder_dir(root, folder) / sub):
                if parse_name(name).key == key:
                    return folder_dir(root, folder) / sub / name
    return None


ops = st.lists(st.tuples(
    st.sampled_from(["deliver", "flag", "unflag", "move", "delete", "sync", "sync"]),
    st.integers(0, 2), st.integers(0, 2), st.integers(0, 7), st.sampled_from("SFR"),
    st.sampled_from(FOLDERS)), max_size=30)


@settings(max_examples=60)
@given(ops=ops)
def test_three_replicas_converge_on_disk(ops):
    tmp = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        roots = [tmp / f"r{i}" for i in range(3)]
        for root in roots:
            for folder in FOLDERS:
                create_folder(root, folder)
        store = open_store(tmp / "state.db")
        state = SyncState(store)
        deleted, delivered = set(), set()
        model: list[dict[str, Entry]] = [{}, {}, {}]
        tombs: list[dict[str, Entry]] = [{}, {}, {}]
        bases: dict[tuple[int, int], dict[str, Entry]] = {}

        def run(i: int, j: int) -> None:
            report = sync(open_local(roots[i]), open_local(roots[j]), state, SyncOptions())
            assert not report.skipped, report.skipped
            sync_pair(model[i], model[j], bases.setdefault((min(i, j), max(i, j)), {}),
                      tomb_a=tombs[i], tomb_b=tombs[j])
            for r in (roots[i], roots[j]):
                backdate(r)
            for r in (i, j):
                assert as_entries(snapshot(roots[r])) == model[r]

        for op, i, j, n, flag, folder in ops:
            key = f"1700000000.M{n}P1.test,S=12"
            path = find(roots[i], key)
            m = model[i]
            if op == "deliver" and key not in delivered:
                delivered.add(key)
                (folder_dir(roots[i], folder) / "new" / key).write_bytes(b"message %02d\n" % n)
                m[key] = Entry(folder, NEW, frozenset(), 12)
            elif op == "flag" and path:
                m[key] = m[key].moved(subdir=CUR, flags=m[key].flags | {flag})
                letters = parse_name(path.name).letters
                new = folder_dir(roots[i], folder_of(roots[i], path)) / "cur" / (
                    f"{key}:2," + "".join(sorted(set(letters + flag))))
                os.rename(path, new)
            elif op == "unflag" and path:
                m[key] = m[key].moved(flags=m[key].flags - {flag})
                letters = parse_name(path.name).letters.replace(flag, "")
                os.rename(path, path.parent / f"{key}:2,{letters}")
            elif op == "move" and path:
                m[key] = m[key].moved(folder=folder)
                os.rename(path, folder_dir(roots[i], folder) / path.parent.name / path.name)
            elif op == "delete" and path:
                del m[key]
                deleted.add(key)
                path.unlink()
            elif op == "sync" and i != j:
                run(i, j)
            backdate(roots[i])
        # quiet rounds around the ring: tombstones settle deletions that raced copies
        for _ in range(2):
            for i, j in ((0, 1), (1, 2), (2, 0)):
                run(i, j)
        snaps = [snapshot(r) for r in roots]
        assert snaps[0] == snaps[1] == snaps[2]
        for key in delivered - deleted:
            assert key in snaps[0], f"{key} lost"
        for i, j in ((0, 1), (1, 2), (2, 0)):
            report = sync(open_local(roots[i]), open_local(roots[j]), state, SyncOptions())
            assert not report.counts, f"quiet sync did {report.counts}"
        store.close()
    finally:
        shutil.rmtree(tmp)


def as_entries(snap: dict[str, tuple[str, str, str, bytes]]) -> dict[str, Entry]:
    return {k: Entry(f, sub, frozenset(letters), 12) for k, (f, sub, letters, _) in snap.items()}


def folder_of(root: Path, path: Path) -> str:
    for folder in list_folders(root):
        if folder_dir(root, folder) == path.parent.parent:
            return folder
    raise AssertionError(path)


def test_unchanged_folders_are_not_listed(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for n, folder in enumerate(FOLDERS):
        create_folder(a, folder)
        (folder_dir(a, folder) / "cur" / f"{n + 5}.M5P1.x,S=3:2,S").write_bytes(b"xyz")
    (a / "new" / "1.M1P1.x,S=3").write_bytes(b"abc")
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    backdate(a)
    backdate(b)
    sync(open_local(a), open_local(b), state, SyncOptions())  # relists what it touched
    listed: list[tuple[list[str], tuple[str, ...]]] = []
    original = type(open_local(a)).names

    def spy(self, folder, subdirs):
        listed.append(([folder], tuple(subdirs)))
        return original(self, folder, subdirs)

    monkeypatch.setattr(type(open_local(a)), "names", spy)
    report = sync(open_local(a), open_local(b), state, SyncOptions())
    assert not report.counts and listed == []
    (folder_dir(a, "Work") / "cur" / "2.M1P1.x,S=3:2,S").write_bytes(b"def")
    backdate(a)
    listed.clear()
    report = sync(open_local(a), open_local(b), state, SyncOptions())
    assert report.counts == {"copy a->b": 1}
    # only Work's cur/ changed on A: its new/ is not listed; on B, Work was just written to
    assert listed[0] == (["Work"], ("cur",))
    backdate(a)
    backdate(b)
    sync(open_local(a), open_local(b), state, SyncOptions())  # relists what it touched
    os.rename(folder_dir(a, "INBOX") / "new" / "1.M1P1.x,S=3",
              folder_dir(a, "Work") / "new" / "1.M1P1.x,S=3")  # moved, as a client would
    backdate(a)
    listed.clear()
    report = sync(open_local(a), open_local(b), state, SyncOptions())
    assert report.counts == {"move b": 1}
    assert sorted(listed) == [(["INBOX"], ("new",)), (["Work"], ("new",))]
    assert (folder_dir(b, "Work") / "new" / "1.M1P1.x,S=3").read_bytes() == b"abc"
    # a folder that listed nothing is never trusted (renamed away while listed and back, it
    # would list nothing too: spec.md F14), so an empty one is listed every run
    create_folder(a, "Empty")
    sync(open_local(a), open_local(b), state, SyncOptions())
    backdate(a)
    backdate(b)
    sync(open_local(a), open_local(b), state, SyncOptions())
    listed.clear()
    sync(open_local(a), open_local(b), state, SyncOptions())
    assert listed == [(["Empty"], ("cur", "new"))] * 2  # on a and on b (created there)


def test_keyword_letters_are_translated_by_name(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    create_folder(a, "INBOX")
    create_folder(b, "INBOX")
    (a / "dovecot-keywords").write_text("0 $Label1\n")
    (b / "dovecot-keywords").write_text("0 Junk\n")
    (a / "cur" / "1.M1P1.x,S=3:2,Sa").write_bytes(b"abc")
    (a / "cur" / "2.M1P1.x,S=3:2,Sc").write_bytes(b"xyz")  # 'c' means nothing on a
    state = SyncState(open_store(tmp_path / "s.db"))
    report = sync(open_local(a), open_local(b), state, SyncOptions())
    assert sorted(os.listdir(b / "cur")) == ["1.M1P1.x,S=3:2,Sb", "2.M1P1.x,S=3:2,S"]
    assert (b / "dovecot-keywords").read_text() == "0 Junk\n1 $Label1\n"
    assert sorted(os.listdir(a / "cur")) == ["1.M1P1.x,S=3:2,Sa", "2.M1P1.x,S=3:2,Sc"]
    assert not report.skipped


def test_state_migration_raced_by_another_run_is_not_applied_twice(tmp_path, monkeypatch):
    """Two runs start together on a new state file: both read v0 before either migrates;
    the second to get the write lock finds the tables made (it used to exit 3)."""
    from mailmirror.store import Store
    from mailmirror.sync.state import COMPONENT, MIGRATIONS

    first, second = open_store(tmp_path / "s.db"), open_store(tmp_path / "s.db")
    seen = []
    real = Store._version

    def version(self, component):
        seen.append(component)
        if len(seen) == 1:  # the first look, outside the write lock: the other run goes now
            second.migrate(COMPONENT, MIGRATIONS)
            return 0
        return real(self, component)

    monkeypatch.setattr(Store, "_version", version)
    first.migrate(COMPONENT, MIGRATIONS)
    assert first.conn.execute("SELECT version FROM schema WHERE component = ?",
                              (COMPONENT,)).fetchone()[0] == len(MIGRATIONS)


def test_state_migrates_from_v1_keeping_the_base(tmp_path):
    """A database written by the first schema is upgraded in place, base rows intact."""
    from mailmirror.sync.state import COMPONENT, MIGRATIONS

    store = open_store(tmp_path / "s.db")
    store.migrate(COMPONENT, MIGRATIONS[:1])
    store.conn.execute("INSERT INTO sync_pair(id_low, id_high) VALUES ('a', 'b')")
    store.conn.execute("INSERT INTO sync_base VALUES (1, 'k1', 'Work', 'cur', 'S', 5, "
                       "'cur/k1:2,S', 'cur/k1:2,S')")
    state = SyncState(store)
    assert state.base_names(1, "Work", {0: None}) == {0: {b"cur/k1:2,S"}}
    (key, row), = state.base_for(1, ["k1"])
    assert key == "k1" and row.entry == Entry("Work", CUR, frozenset("S"), 5)


def test_a_dry_run_on_an_older_state_database_migrates_only_a_copy(tmp_path):
    """A dry run records nothing: a store of an older schema is read through a migrated copy
    in memory, and the file keeps its version and bytes (the v2 to v3 upgrade used to be
    written by whichever run came first, a dry run too)."""
    import hashlib
    import sqlite3

    from mailmirror.sync.state import COMPONENT, MIGRATIONS

    db = tmp_path / "s.db"
    with open_store(db) as store:
        store.migrate(COMPONENT, MIGRATIONS[:2])
        store.conn.execute("INSERT INTO sync_pair(id_low, id_high) VALUES ('a', 'b')")
        store.conn.execute("INSERT INTO sync_base VALUES (1, 'Work', 'k1', 'cur', 'S', 5, "
                           "'cur/k1:2,S', 'cur/k1:2,S')")
    before = hashlib.sha256(db.read_bytes()).digest()
    with open_store(db, readonly=True) as store:
        state = SyncState(store)  # reads through the v3 index, which only the copy has
        assert state.base_names(1, "Work", {0: None}) == {0: {b"cur/k1:2,S"}}
    assert hashlib.sha256(db.read_bytes()).digest() == before
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT version FROM schema WHERE component = ?",
                        (COMPONENT,)).fetchone() == (2,)
    conn.close()


def test_a_read_only_open_of_a_file_that_is_not_a_store_writes_nothing_to_it(tmp_path):
    """`--state` may name another program's database: a dry run or a status reads it through
    a copy, and the file keeps its bytes, its journal mode and its tables."""
    import hashlib
    import sqlite3

    db = tmp_path / "other.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    before = hashlib.sha256(db.read_bytes()).digest()
    with open_store(db, readonly=True) as store:
        assert SyncState(store).runs() == []
    assert hashlib.sha256(db.read_bytes()).digest() == before
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]
    conn.close()


def test_a_utf16_state_database_still_matches_listed_names(tmp_path):
    """mailmirror creates UTF-8 databases; in one another tool made in UTF-16, base names read
    as raw bytes would be UTF-16, match no listed name, and every name would read as removed
    (found by review: the second sync ended in a traceback)."""
    import sqlite3

    db = tmp_path / "s.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA encoding = 'UTF-16le'")
    conn.execute("CREATE TABLE made_elsewhere (x)")
    conn.commit()
    conn.close()
    a, b = tmp_path / "a", tmp_path / "b"
    create_folder(a, "INBOX")
    (a / "cur" / "1.M1P1.x,S=3:2,S").write_bytes(b"abc")
    (a / "cur" / "2.M2P1.caf\u00e9,S=3:2,S").write_bytes(b"def")
    state = SyncState(open_store(db))
    assert sync(open_local(a), open_local(b), state, SyncOptions()).counts == {"copy a->b": 2}
    assert state.base_names(1, "INBOX", {0: None, 1: None}) == {
        side: {b"cur/1.M1P1.x,S=3:2,S", "cur/2.M2P1.caf\u00e9,S=3:2,S".encode()}
        for side in (0, 1)}
    os.unlink(b / "cur" / "1.M1P1.x,S=3:2,S")
    assert sync(open_local(a), open_local(b), state, SyncOptions(full=True)).counts == {
        "delete a": 1}


@pytest.mark.parametrize("count", [1, 99, 100, 101, 250])
def test_base_rows_written_in_several_statements_read_back_exactly(tmp_path, count):
    """write_base puts many rows in one INSERT: every chunk boundary keeps each row once, and
    a key recorded again in another folder replaces its old row (the unique key index)."""
    from mailmirror.sync.state import BaseRow

    state = SyncState(open_store(tmp_path / "s.db"))
    pair_id = state.pair("a", "b", "A", "B").pair_id
    keys = [f"k{i:04d}" for i in range(count)]

    def row(key: str, folder: str) -> BaseRow:
        name = f"cur/{key}:2,S"
        return BaseRow(Entry(folder, CUR, frozenset("S"), len(key)), (name, name))

    state.write_base(pair_id, [(k, row(k, "Work")) for k in keys])
    assert dict(state.base_for(pair_id, keys)) == {k: row(k, "Work") for k in keys}
    moved, gone = keys[::3], set(keys[1::3])
    state.write_base(pair_id, [(k, None) for k in gone] + [(k, row(k, "Old")) for k in moved])
    assert state.base_count(pair_id) == count - len(gone)
    assert state.base_names(pair_id, "Old", {0: None})[0] == {
        f"cur/{k}:2,S".encode() for k in moved}
    assert state.base_names(pair_id, "Work", {1: "cur"})[1] == {
        f"cur/{k}:2,S".encode() for k in keys if k not in gone and k not in moved}


_SIDE_NAME = st.sampled_from(["cur/k:2,S", "new/k", "cur/k;2,S", "cur/k,U=7:2,S", "new/k,U=7"])


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(_SIDE_NAME, _SIDE_NAME), max_size=6),
       wants=st.dictionaries(st.sampled_from([0, 1]), st.sampled_from([None, "cur", "new"]),
                             min_size=1))
def test_base_names_of_both_sides_are_each_sides_own(rows, wants):
    """One walk serves both sides only where their names agree: names that differ (another
    separator, ,U=, another subdir) anywhere in the folder give each side its own."""
    from mailmirror.sync.state import BaseRow

    with tempfile.TemporaryDirectory() as tmp:
        state = SyncState(open_store(Path(tmp) / "s.db"))
        pair_id = state.pair("a", "b", "A", "B").pair_id
        named = [(f"m{i}", tuple(n.replace("k", f"m{i}") for n in pair))
                 for i, pair in enumerate(rows)]
        state.write_base(pair_id, [(key, BaseRow(Entry("Work", CUR, frozenset(), 1), pair))
                                   for key, pair in named])
        state.write_base(pair_id, [("other", BaseRow(Entry("Else", CUR, frozenset(), 1),
                                                     ("cur/other", "new/other")))])
        got = state.base_names(pair_id, "Work", wants)
        assert got == {side: {pair[side].encode() for _, pair in named
                              if only is None or pair[side].startswith(f"{only}/")}
                       for side, only in wants.items()}


def test_scan_shares_what_names_have_in_common_and_gives_each_name_back(tmp_path):
    """A first sync holds every message of a side: names that are their key plus a common
    suffix share one stored value, and every name reads back exactly as on disk."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in ("INBOX", "Work"):
        create_folder(a, folder)
    create_folder(b, "INBOX")
    (a / "dovecot-keywords").write_text("0 $Label1\n")
    odd = {
        "INBOX": ["cur/u.M1P1.x,S=5,U=7:2,FS",  # a replica-local field: key differs from name
                  "new/n.M1P1.x",  # no info, no size
                  "cur/o.M1P1.x,S=4:1,odd",  # an info that is not "2,"
                  "cur/k.M1P1.x,S=3:2,Sa"],  # a keyword letter
        "Work": ["cur/w.M1P1.x,S=6:2,"],
    }
    common = [f"cur/{i}.M{i}P1.x,S={i + 1}:2,S" for i in range(300)]
    for folder, relnames in (("INBOX", odd["INBOX"] + common), ("Work", odd["Work"])):
        for relname in relnames:
            (folder_dir(a, folder) / relname).write_bytes(b"x")
    ra, rb = open_local(a), open_local(b)
    state = SyncState(open_store(tmp_path / "s.db"))
    low = Side.A if ra.id < rb.id else Side.B
    ids = (ra.id, rb.id, ra.label, rb.label) if low is Side.A else (rb.id, ra.id, rb.label,
                                                                     ra.label)
    pair = state.pair(*ids)
    replicas = {Side.A: ra, Side.B: rb}
    found = scan(replicas, state, pair.pair_id, low, FlagCodec(replicas))
    listing = found.current[Side.A]
    on_disk = {(folder, relname) for folder, relnames in odd.items() for relname in relnames}
    on_disk.update(("INBOX", relname) for relname in common)
    assert len(listing) == len(on_disk)
    assert {(listing[key].entry.folder, listing[key].relname) for key in listing} == on_disk
    assert listing.get("nothing") is None
    stored = {id(value) for value in dict.values(listing)}
    assert len(stored) <= 8  # 300 names in INBOX's cur/ with flag S: one value between them
    assert listing.entry("7.M7P1.x,S=8") == Entry("INBOX", CUR, frozenset("S"), 8)
    assert listing.entry("u.M1P1.x,S=5") == Entry("INBOX", CUR, frozenset("FS"), 5)
    assert listing.entry("n.M1P1.x") == Entry("INBOX", NEW, frozenset(), None)
    assert listing.entry("k.M1P1.x,S=3") == Entry("INBOX", CUR, frozenset({"S", "$Label1"}), 3)
    assert listing.entry("o.M1P1.x,S=4").flags == frozenset()


def test_a_message_seen_under_two_names_by_a_racing_listing_keeps_one_key(tmp_path):
    """A client moves a synced message from new/ to cur/ between the listings of new/ and
    cur/: the scan sees one file twice. It must not get a second key (a duplicate)."""
    a, b = tmp_path / "a", tmp_path / "b"
    create_folder(a, "INBOX")
    (a / "new" / "1.M1P1.x").write_bytes(b"abc")
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    os.rename(a / "new" / "1.M1P1.x", a / "cur" / "1.M1P1.x:2,S")  # read by the client
    racing = open_local(a)
    listings = racing.listings

    def stale_new(folders):
        for folder, names in listings(folders):
            yield folder, names + [b"new/1.M1P1.x"] if folder == "INBOX" else names

    racing.listings = stale_new
    report = sync(racing, open_local(b), state, SyncOptions())
    assert not any("duplicated" in n for n in report.notices), report.notices
    sync(open_local(a), open_local(b), state, SyncOptions())
    for root in (a, b):
        assert sorted(p.name for p in (root / "cur").iterdir()) == ["1.M1P1.x:2,S"]
        assert list((root / "new").iterdir()) == []


def _keys_on_disk(root: Path, key: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(f"{key}*")
                  if p.parent.name in (CUR, NEW) and "mailmirror-quarantine" not in p.parts)


def test_a_message_moved_to_a_folder_listed_earlier_is_not_taken_for_a_deletion(tmp_path):
    """A client moves a message from INBOX to Archive after the scan listed Archive and
    before it lists INBOX: this run sees it nowhere. Taken for a deletion, the other side's
    copy (flagged there meanwhile) would be copied back into INBOX beside the moved one."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in ("INBOX", "Archive"):
        create_folder(a, folder)
    (a / "new" / "1.M1P1.x").write_bytes(b"abc")
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    os.rename(b / "new" / "1.M1P1.x", b / "cur" / "1.M1P1.x:2,F")  # flagged on b
    os.utime(a / "new", (1, 1))  # INBOX and Archive both listed on a
    os.utime(folder_dir(a, "Archive") / "cur", (1, 1))
    racing = open_local(a)
    listings = racing.listings

    moved = []

    def move_after_archive(folders):
        for folder, names in listings(folders):
            yield folder, names
            if folder == "Archive" and not moved:
                os.rename(a / "new" / "1.M1P1.x",
                          folder_dir(a, "Archive") / "cur" / "1.M1P1.x:2,S")
                moved.append(folder)

    racing.listings = move_after_archive
    report = sync(racing, open_local(b), state, SyncOptions())
    assert any("moved by a mail client" in n for n in report.notices), report.notices
    sync(open_local(a), open_local(b), state, SyncOptions())
    sync(open_local(a), open_local(b), state, SyncOptions())
    for root in (a, b):
        assert _keys_on_disk(root, "1.M1P1.x") == [".Archive/cur/1.M1P1.x:2,FS"], root


def test_a_message_moved_from_new_to_cur_between_the_two_listings_is_not_lost(tmp_path):
    """cur/ is listed before new/: a client reading the message in between hides it (and
    gives it a replica-local ,U= field, which is not part of its key)."""
    a, b = tmp_path / "a", tmp_path / "b"
    create_folder(a, "INBOX")
    (a / "new" / "1.M1P1.x,S=3").write_bytes(b"abc")
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    os.rename(b / "new" / "1.M1P1.x,S=3", b / "new" / "1.M1P1.x,S=3:2,F")  # flagged on b
    os.utime(a / "new", (1, 1))
    racing = open_local(a)
    list_names = racing.names
    read = []

    def read_between(folder, subdirs):
        if read or tuple(subdirs) != (CUR, NEW):
            return list_names(folder, subdirs)
        cur = list_names(folder, (CUR,))
        os.rename(a / "new" / "1.M1P1.x,S=3", a / "cur" / "1.M1P1.x,U=9,S=3:2,S")
        read.append(True)
        return cur + list_names(folder, (NEW,))

    racing.names = read_between
    sync(racing, open_local(b), state, SyncOptions())
    assert read
    sync(open_local(a), open_local(b), state, SyncOptions())
    assert _keys_on_disk(a, "1.M1P1.x") == ["cur/1.M1P1.x,U=9,S=3:2,FS"]
    assert _keys_on_disk(b, "1.M1P1.x") == ["cur/1.M1P1.x,S=3:2,FS"]


def test_while_folders_keep_changing_no_listed_deletion_is_applied(tmp_path):
    """Mail arrives while the suspect folders are listed again: the second look is not
    reliable either, so every message seen nowhere waits (a real deletion included)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in ("INBOX", "Archive"):
        create_folder(a, folder)
    (a / "new" / "1.M1P1.x").write_bytes(b"abc")
    (a / "cur" / "2.M2P1.x:2,S").write_bytes(b"deleted")
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    os.unlink(a / "cur" / "2.M2P1.x:2,S")  # a real deletion on a
    racing = open_local(a)
    listings = racing.listings
    calls = []

    def busy(folders):
        calls.append(folders)
        for folder, names in listings(folders):
            yield folder, names
            if len(calls) == 1 and folder == "Archive":
                os.rename(a / "new" / "1.M1P1.x",
                          folder_dir(a, "Archive") / "cur" / "1.M1P1.x:2,S")
            elif len(calls) == 2 and not (a / "new" / "3.M3P1.x").exists():
                (a / "new" / "3.M3P1.x").write_bytes(b"arrived")  # during the second look

    racing.listings = busy
    sync(racing, open_local(b), state, SyncOptions())
    assert len(calls) == 2 and (a / "new" / "3.M3P1.x").exists()
    assert _keys_on_disk(b, "2.M2P1.x") == ["cur/2.M2P1.x:2,S"]  # waits
    sync(open_local(a), open_local(b), state, SyncOptions())
    sync(open_local(a), open_local(b), state, SyncOptions())
    assert _keys_on_disk(b, "2.M2P1.x") == []
    for root in (a, b):
        assert _keys_on_disk(root, "1.M1P1.x") == [".Archive/cur/1.M1P1.x:2,S"], root
        assert _keys_on_disk(root, "3.M3P1.x") == ["new/3.M3P1.x"], root


def _settled_pair(tmp_path: Path) -> tuple[Path, Path, SyncState]:
    """a and b with INBOX and Work (1.M1P1.x in Work/cur), synced, every stamp old and
    recorded as settled: the next run lists only what changes."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in ("INBOX", "Work"):
        create_folder(a, folder)
    (folder_dir(a, "Work") / "cur" / "1.M1P1.x:2,S").write_bytes(b"abc")
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    backdate(a)
    backdate(b)
    sync(open_local(a), open_local(b), state, SyncOptions())
    return a, b, state


def _away_while_listed(root: Path, folder: str):
    """root's replica, whose first listing of `folder` happens while a client has renamed
    the folder away (IMAP RENAME and back): its cur/ and new/ keep their mtimes."""
    replica = open_local(root)
    listings = replica.listings
    done = []

    def listed_while_away(folders):
        for name, names in listings(folders):
            if name == folder and not done:
                done.append(name)
                os.rename(folder_dir(root, folder), root / ".Away")
                names = listings([(folder, (CUR, NEW))]).__next__()[1]
                os.rename(root / ".Away", folder_dir(root, folder))
            yield name, names

    replica.listings = listed_while_away
    return replica, done


def test_a_folder_renamed_away_and_back_while_listed_loses_nothing(tmp_path):
    a, b, state = _settled_pair(tmp_path)
    os.utime(folder_dir(a, "Work") / "cur", ns=(10**18, 10**18))  # Work listed on a
    racing, done = _away_while_listed(a, "Work")
    sync(racing, open_local(b), state, SyncOptions())
    assert done
    sync(open_local(a), open_local(b), state, SyncOptions())
    for root in (a, b):
        assert _keys_on_disk(root, "1.M1P1.x") == [".Work/cur/1.M1P1.x:2,S"], root


def test_a_message_left_for_the_next_run_keeps_its_folders_unsettled_on_both_sides(tmp_path):
    """b renamed Work to Archive (its mtimes stay old); a's Work is renamed away and back
    while listed, so the message waits. b's Archive, which holds it, must not be recorded
    as matching the base (which still says Work): the next run would not list it, find the
    message nowhere on b, and delete a's copy."""
    a, b, state = _settled_pair(tmp_path)
    os.rename(folder_dir(b, "Work"), b / ".Archive")
    os.utime(folder_dir(a, "Work") / "cur", ns=(10**18, 10**18))
    racing, done = _away_while_listed(a, "Work")
    report = sync(racing, open_local(b), state, SyncOptions())
    assert done and any("moved by a mail client" in n for n in report.notices)
    sync(open_local(a), open_local(b), state, SyncOptions())
    sync(open_local(a), open_local(b), state, SyncOptions())
    for root in (a, b):
        assert _keys_on_disk(root, "1.M1P1.x") == [".Archive/cur/1.M1P1.x:2,S"], root


def test_two_folders_that_look_alike_swapped_by_renames_lose_and_double_nothing(tmp_path):
    """Work and Archive have identical mtimes (created in one clock tick, never changed);
    a client swaps their names, then flags a message. Listed, the changed folder holds the
    other's messages; the other, unchanged to all appearances, is not listed. Its messages
    must not be taken for deleted (nor one changed on b meanwhile copied back beside it)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in ("INBOX", "Work", "Archive"):
        create_folder(a, folder)
    (folder_dir(a, "Work") / "cur" / "1.M1P1.x:2,S").write_bytes(b"work")
    (folder_dir(a, "Archive") / "cur" / "2.M2P1.x:2,S").write_bytes(b"archive")
    old = 1_700_000_000 * 10**9
    for folder in ("Work", "Archive"):
        for sub in ("cur", "new"):
            os.utime(folder_dir(a, folder) / sub, ns=(old, old))
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    backdate(b)
    sync(open_local(a), open_local(b), state, SyncOptions())
    os.rename(folder_dir(a, "Work"), a / ".Tmp")
    os.rename(folder_dir(a, "Archive"), folder_dir(a, "Work"))
    os.rename(a / ".Tmp", folder_dir(a, "Archive"))
    os.rename(folder_dir(a, "Archive") / "cur" / "1.M1P1.x:2,S",
              folder_dir(a, "Archive") / "cur" / "1.M1P1.x:2,FS")  # flagged on a
    os.rename(folder_dir(b, "Archive") / "cur" / "2.M2P1.x:2,S",
              folder_dir(b, "Archive") / "cur" / "2.M2P1.x:2,RS")  # answered on b
    for _ in range(3):
        sync(open_local(a), open_local(b), state, SyncOptions())
    for root in (a, b):
        assert _keys_on_disk(root, "1.M1P1.x") == [".Archive/cur/1.M1P1.x:2,FS"], root
        assert _keys_on_disk(root, "2.M2P1.x") == [".Work/cur/2.M2P1.x:2,RS"], root


def test_with_whole_second_mtimes_the_second_look_waits_until_changes_can_show(tmp_path):
    """Over SFTP mtimes are whole seconds. A message moved again during the second look, into
    a folder listed already whose mtime is of this same second, changes no mtime: the look
    must start only once the folders it lists are older than a tick, so the move shows."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in ("INBOX", "Archive", "Work"):
        create_folder(a, folder)
    (folder_dir(a, "Work") / "cur" / "1.M1P1.x:2,S").write_bytes(b"moved twice")
    (a / "cur" / "2.M2P1.x:2,S").write_bytes(b"read again")
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    backdate(a)
    backdate(b)
    sync(open_local(a), open_local(b), state, SyncOptions())
    os.rename(folder_dir(b, "Work") / "cur" / "1.M1P1.x:2,S",
              folder_dir(b, "Work") / "cur" / "1.M1P1.x:2,FS")  # flagged on b
    coarse = open_local(a)
    stamps, listings = coarse.stamps, coarse.listings
    coarse.stamps = lambda: {f: Stamp(s.cur // 10**9 * 10**9, s.new // 10**9 * 10**9)
                             for f, s in stamps().items()}
    coarse.clock_ns = lambda: time.time_ns() // 10**9 * 10**9
    calls = []

    def moving_twice(folders):
        calls.append(folders)
        for folder, names in listings(folders):
            yield folder, names
            if len(calls) == 1 and folder == "Archive":  # listed: moved there from Work
                os.rename(folder_dir(a, "Work") / "cur" / "1.M1P1.x:2,S",
                          folder_dir(a, "Archive") / "cur" / "1.M1P1.x:2,S")
            if len(calls) == 2 and folder == "INBOX":  # listed again: moved there
                os.rename(folder_dir(a, "Archive") / "cur" / "1.M1P1.x:2,S",
                          a / "cur" / "1.M1P1.x:2,S")

    coarse.listings = moving_twice
    for folder in ("Archive", "Work"):  # listed by this run
        os.utime(folder_dir(a, folder) / "cur", ns=(10**18, 10**18))
    os.rename(a / "cur" / "2.M2P1.x:2,S", a / "cur" / "2.M2P1.x:2,RS")  # INBOX/cur: fresh
    sync(coarse, open_local(b), state, SyncOptions())
    assert len(calls) == 2
    for _ in range(2):
        sync(open_local(a), open_local(b), state, SyncOptions())
    for root in (a, b):
        assert _keys_on_disk(root, "1.M1P1.x") == ["cur/1.M1P1.x:2,FS"], root


def test_an_empty_folder_made_after_the_first_sync_is_created_on_the_other_side(tmp_path):
    """A folder a mail client creates, with nothing in it yet, appears on the other side even
    when the run has no message to copy; deleted there later, it goes here too."""
    a, b = tmp_path / "a", tmp_path / "b"
    create_folder(a, "INBOX")
    (a / "cur" / "1.M1P1.x:2,S").write_bytes(b"abc")
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    create_folder(a, "Projects")
    report = sync(open_local(a), open_local(b), state, SyncOptions())
    assert report.counts == {"folder+ b": 1}
    assert "Projects" in list_folders(b)
    shutil.rmtree(folder_dir(b, "Projects"))
    report = sync(open_local(a), open_local(b), state, SyncOptions())
    assert report.counts == {"folder- a": 1}
    assert "Projects" not in list_folders(a)


def test_the_scan_gives_the_gil_switch_interval_back(tmp_path, monkeypatch):
    """The scan shortens the interval while its base-name thread runs (the main thread's
    listings give the GIL up at every directory entry); whatever it found, it leaves."""
    import sys

    seen = []
    monkeypatch.setattr("mailmirror.sync.state.SyncState.base_names",
                        lambda self, *a, _f=SyncState.base_names: (
                            seen.append(sys.getswitchinterval()), _f(self, *a))[1])
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in ("INBOX", "Work", "Lists"):
        create_folder(a, folder)
    state = SyncState(open_store(tmp_path / "s.db"))
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.004)
        sync(open_local(a), open_local(b), state, SyncOptions())
        (a / "cur" / "1.M1P1.x:2,S").write_bytes(b"abc")
        (b / ".Work" / "cur" / "2.M1P1.x:2,S").write_bytes(b"abc")
        sync(open_local(a), open_local(b), state, SyncOptions())
        assert sys.getswitchinterval() == 0.004
    finally:
        sys.setswitchinterval(before)
    assert seen and max(seen) == SCAN_SWITCH_INTERVAL


class CountingReads(LocalReplica):
    """Records how many messages each read() asked for."""

    batches: list[int]

    def read(self, refs):
        self.batches.append(len(refs))
        return super().read(refs)


def test_copies_of_names_without_a_size_are_batched_by_their_real_size(tmp_path):
    """Names from getmail or procmail carry no ,S=: a guess of 64 KiB put dozens of huge
    messages in one batch (and one read reply, past what a frame may hold, every run)."""
    a, b = open_local(tmp_path / "a"), tmp_path / "b"
    open_local(b)
    for i in range(6):
        (b / "cur" / f"170000000{i}.M1P1.x:2,S").write_bytes(b"x" * (1 << 20))
    source = CountingReads(b)
    source.batches = []
    report = sync(a, source, SyncState(open_store(tmp_path / "s.db")), SyncOptions())
    assert report.counts == {"copy b->a": 6}
    assert source.batches and max(source.batches) <= 2, source.batches  # 2 MiB a batch


def test_progress_covers_the_listing_then_the_copies(tmp_path: Path) -> None:
    """A first sync of a large maildir lists for seconds before anything is copied: the
    bar moves from the first folder on, not only once copying starts."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in ("INBOX", "Sent", "Archive"):
        root = a if folder == "INBOX" else folder_dir(a, folder)
        if folder != "INBOX":
            create_folder(a, folder)
        for sub in ("cur", "new", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for n in range(3):
            (root / "cur" / f"{1700000000 + n}.M{n}P1.{folder}:2,S").write_bytes(b"x\n")
    calls: list[tuple[str, int, int]] = []
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state,
         SyncOptions(progress=lambda *call: calls.append(call)))
    listing = [c for c in calls if c[0] == "list"]
    assert listing[0] == ("list", 0, 3) and listing[-1] == ("list", 3, 3), calls
    assert calls.index(listing[-1]) < calls.index(("sync", 9, 9)), calls


def test_a_folder_renamed_while_the_run_acts_in_it_does_not_come_back(tmp_path: Path) -> None:
    """Found by the chaos review: A's client renamed Work to Archive after the scan, before
    the run renamed a message in Work. The run dropped A's row of Work, so the next run took
    B's Work for a folder new on B and made it again on A: an empty Work on both sides, for
    good."""
    a, b = tmp_path / "a", tmp_path / "b"
    create_folder(a, "INBOX")
    create_folder(a, "Work")
    for n in (1, 2):
        (a / ".Work" / "cur" / f"170000000{n}.M{n}P1.h:2,S").write_bytes(b"x\n")
    state = SyncState(open_store(tmp_path / "s.db"))
    options = SyncOptions(margin_ns=0)
    sync(open_local(a), open_local(b), state, options)
    os.rename(b / ".Work" / "cur" / "1700000001.M1P1.h:2,S",
              b / ".Work" / "cur" / "1700000001.M1P1.h:2,FS")

    class RenamedMeanwhile(LocalReplica):
        def rename(self, items):  # type: ignore[no-untyped-def]
            if (self.root / ".Work").exists():
                os.rename(self.root / ".Work", self.root / ".Archive")
            return super().rename(items)

    sync(RenamedMeanwhile(a), open_local(b), state, options)
    for _ in range(2):
        sync(open_local(a), open_local(b), state, options)
    for root in (a, b):
        assert sorted(list_folders(root)) == ["Archive", "INBOX"], root
        assert sorted(os.listdir(root / ".Archive" / "cur")) == [
            "1700000001.M1P1.h:2,FS", "1700000002.M2P1.h:2,S"]
