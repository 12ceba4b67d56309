"""Safety stops and the quarantine on real directories (docs/spec.md S5, S9-S12, Q1-Q3, D1).

Each stop is checked the same way: the run raises SafetyStop and leaves both trees exactly as
they were (no deletion, no copy, no state written); the documented override then lets it
through. The quarantine tests follow a deleted message out and back in again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mailmirror.errors import SafetyStop, UsageError
from mailmirror.maildir import quarantine
from mailmirror.maildir.folders import create_folder, folder_dir
from mailmirror.replica.local import ID_FILE, open_local
from mailmirror.store import open_store
from mailmirror.sync import guard
from mailmirror.sync.engine import SyncOptions, sync
from mailmirror.sync.model import Side
from mailmirror.sync.state import SyncState
from tests.e2e.conftest import tree_listing


def fill(root: Path, folder: str, count: int, tag: str = "m") -> list[str]:
    """`count` messages in cur/ of `folder`; their keys."""
    create_folder(root, "INBOX")
    create_folder(root, folder)
    keys = []
    for n in range(count):
        key = f"17000{n:05d}.M{n}P1.{tag}{folder.replace('/', '')},S=9"
        (folder_dir(root, folder) / "cur" / f"{key}:2,S").write_bytes(b"message\n\n")
        keys.append(key)
    return keys


def run(a: Path, b: Path, state: SyncState, **options: object):
    return sync(open_local(a), open_local(b), state, SyncOptions(**options))  # type: ignore[arg-type]


def empty_folder(root: Path, folder: str) -> None:
    for sub in ("cur", "new"):
        for name in os.listdir(folder_dir(root, folder) / sub):
            os.unlink(folder_dir(root, folder) / sub / name)


@pytest.fixture
def state(tmp_path: Path) -> SyncState:
    return SyncState(open_store(tmp_path / "state.db"))


def test_a_folder_that_suddenly_lists_nothing_stops_the_run(tmp_path: Path,
                                                            state: SyncState) -> None:
    """S9: a folder emptied on one side would delete its mail on the other: stop."""
    a, b = tmp_path / "a", tmp_path / "b"
    fill(a, "Work", 25)
    fill(a, "Archive", 60)
    run(a, b, state)
    empty_folder(b, "Work")
    before = (tree_listing(a), tree_listing(b))

    with pytest.raises(SafetyStop, match="folder Work of .* is suddenly empty.*25 messages"):
        run(a, b, state)

    assert (tree_listing(a), tree_listing(b)) == before
    report = run(a, b, state, allow_empty=True)
    assert report.counts == {"delete a": 25}


def test_emptying_the_trash_is_not_a_safety_stop(tmp_path: Path, state: SyncState) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    fill(a, "Trash", 25)
    fill(a, "Archive", 60)
    run(a, b, state)
    empty_folder(b, "Trash")
    assert run(a, b, state).counts == {"delete a": 25}


def test_a_run_that_would_delete_most_mail_asks_for_allow_mass_delete(
        tmp_path: Path, state: SyncState) -> None:
    """S10: more than max_delete percent (default 50) of a side, and at least 20 messages."""
    a, b = tmp_path / "a", tmp_path / "b"
    keys = fill(a, "INBOX", 40) + fill(a, "Work", 60)
    run(a, b, state)
    for key in keys[:55]:  # all 40 of INBOX and 15 of Work
        folder = "INBOX" if key.endswith("INBOX,S=9") else "Work"
        os.unlink(folder_dir(b, folder) / "cur" / f"{key}:2,S")
    # new mail keeps b's INBOX from looking emptied (S9), so S10 is what stops this run
    (folder_dir(b, "INBOX") / "cur" / "1800000000.M1P1.keep,S=9:2,S").write_bytes(b"k")
    before = (tree_listing(a), tree_listing(b))

    with pytest.raises(SafetyStop, match=r"would delete 55 of the 100 messages of .*/a \(55%"):
        run(a, b, state)

    assert (tree_listing(a), tree_listing(b)) == before
    with pytest.raises(SafetyStop):
        run(a, b, state, max_delete_percent=54)
    assert run(a, b, state, max_delete_percent=60).counts == {"delete a": 55, "copy b->a": 1}


def test_deletions_are_weighed_against_the_whole_replica_not_the_folders_listed(
        tmp_path: Path, state: SyncState) -> None:
    """40 of a 60-message folder is 67% of what was listed, 15% of the 260 messages held."""
    a, b = tmp_path / "a", tmp_path / "b"
    small = fill(a, "Small", 60)
    fill(a, "Big", 200)
    run(a, b, state)
    for key in small[:40]:
        os.unlink(folder_dir(a, "Small") / "cur" / f"{key}:2,S")
    (folder_dir(b, "Small") / "cur" / "1800000000.M1P1.new,S=9:2,S").write_bytes(b"n")
    assert run(a, b, state).counts == {"delete b": 40, "copy b->a": 1}


def test_few_deletions_never_count_as_mass_deletion(tmp_path: Path, state: SyncState) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    keys = fill(a, "INBOX", guard.MASS_DELETE_MIN - 1)
    run(a, b, state)
    for key in keys[:-1]:  # all but one: 95%, but below the minimum count
        os.unlink(a / "cur" / f"{key}:2,S")
    assert run(a, b, state).counts == {"delete b": guard.MASS_DELETE_MIN - 2}


def test_missing_id_file_at_a_known_path_stops_before_creating_one(
        tmp_path: Path, state: SyncState) -> None:
    """S11: the path held replica X; now it has no id (unmounted disk: an empty mount point)."""
    a, b = tmp_path / "a", tmp_path / "b"
    fill(a, "INBOX", 30)
    run(a, b, state)
    shutil.rmtree(b)
    b.mkdir()  # the mount point, without the disk
    replicas = {Side.A: open_local(a), Side.B: open_local(b)}

    with pytest.raises(SafetyStop, match=f"{b} has no mailmirror-id but was replica"):
        guard.check_identity(state, replicas, accept=False)

    assert not (b / ID_FILE).exists(), "the check created the id it looks for"
    guard.check_identity(state, replicas, accept=True)
    fresh = tmp_path / "never-synced"
    guard.check_identity(state, {Side.A: open_local(a), Side.B: open_local(fresh)}, False)


def test_a_known_path_reaching_a_stranger_stops(tmp_path: Path, state: SyncState) -> None:
    """S12: the path reached replica X; now another replica that shares no mail with A."""
    a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "other"
    fill(a, "INBOX", 30)
    run(a, b, state)
    fill(other, "INBOX", 12, tag="bob")
    assert open_local(other).id  # a replica of its own, with its own id
    shutil.rmtree(b)
    shutil.copytree(other, b)
    before = (tree_listing(a), tree_listing(b))

    with pytest.raises(SafetyStop, match="now reaches replica .* holds none of the 30"):
        run(a, b, state)

    assert (tree_listing(a), tree_listing(b)) == before
    assert run(a, b, state, accept_new_replica=True).counts == {"copy a->b": 30,
                                                                "copy b->a": 12}


def test_a_known_path_reaching_a_mirror_of_the_same_mail_syncs(tmp_path: Path,
                                                               state: SyncState) -> None:
    """The DNS-failover case of S12: the new replica shares mail, so it is a safe first sync."""
    a, b, backup = tmp_path / "a", tmp_path / "b", tmp_path / "backup"
    fill(a, "INBOX", 30)
    run(a, b, state)
    run(b, backup, SyncState(open_store(tmp_path / "servers.db")))
    (a / "cur" / "1800000000.M1P1.late,S=9:2,S").write_bytes(b"late mail")
    shutil.rmtree(b)
    shutil.move(backup, b)
    report = run(a, b, state)
    assert report.counts == {"copy a->b": 1}


def test_deleted_mail_is_quarantined_restored_and_synced_again(tmp_path: Path,
                                                               state: SyncState) -> None:
    """Q1-Q3: a sync deletion goes to the quarantine; a restored message is new mail for the
    next sync (its old key is in the base and in a tombstone: it must not be deleted again)."""
    a, b = tmp_path / "a", tmp_path / "b"
    keys = fill(a, "Work", 3)
    run(a, b, state)
    victim = keys[0]
    os.unlink(folder_dir(a, "Work") / "cur" / f"{victim}:2,S")  # the user deletes it on a
    assert run(a, b, state).counts == {"delete b": 1}
    (held,) = quarantine.entries(b)
    assert (held.key(), held.folder, held.subdir) == (victim, "Work", "cur")
    assert held.path.read_bytes() == b"message\n\n"

    ((folder, relname),) = quarantine.restore_keys(b, "maildir++", ":", [victim])

    assert folder == "Work" and relname.endswith(":2,S") and victim not in relname
    assert (folder_dir(b, "Work") / relname).read_bytes() == b"message\n\n"
    assert list(quarantine.entries(b)) == []
    assert not (quarantine.quarantine_dir(b) / held.day).exists()
    report = run(a, b, state)
    assert report.counts == {"copy b->a": 1}
    assert (folder_dir(a, "Work") / relname).read_bytes() == b"message\n\n"
    assert not run(a, b, state).counts


def test_restore_refuses_unknown_keys_and_never_duplicates(tmp_path: Path,
                                                           state: SyncState) -> None:
    from mailmirror.errors import UsageError

    a, b = tmp_path / "a", tmp_path / "b"
    keys = fill(a, "INBOX", 2)
    run(a, b, state)
    os.unlink(a / "cur" / f"{keys[0]}:2,S")
    run(a, b, state)
    with pytest.raises(UsageError, match="not in the quarantine"):
        list(quarantine.restore_keys(b, "maildir++", ":", [keys[0], "nope"]))
    (b / "cur" / f"{keys[0]}:2,FS").write_bytes(b"came back")  # e.g. copied back by hand
    with pytest.raises(UsageError, match="already in"):
        list(quarantine.restore_keys(b, "maildir++", ":", [keys[0]]))
    assert len(list(quarantine.entries(b))) == 1


def test_sync_prunes_the_quarantine_after_the_retention(tmp_path: Path,
                                                        state: SyncState) -> None:
    """Q2: kept for quarantine_days (default 30), then pruned by a sync run."""
    a, b = tmp_path / "a", tmp_path / "b"
    fill(a, "INBOX", 1)
    run(a, b, state)
    old = quarantine.quarantine_dir(b) / "2000-01-01" / "INBOX" / "cur"
    old.mkdir(parents=True)
    (old / "1.M1P1.old:2,S").write_bytes(b"old")
    run(a, b, state)
    assert not old.exists()


def test_restore_with_another_separator_than_the_maildirs_is_refused(tmp_path: Path,
                                                                     state: SyncState) -> None:
    """A ';' maildir restored as ':': the fresh name kept the old key (before the ';'), and
    the next sync deleted the message again, its tombstone matching."""
    a, b = tmp_path / "a", tmp_path / "b"
    open_local(a, sep=";")
    key = "1700000000.M1P1.host"
    (a / "cur" / f"{key};2,").write_bytes(b"message\n\n")
    sync(open_local(a, sep=";"), open_local(b, sep=";"), state, SyncOptions())
    os.unlink(a / "cur" / f"{key};2,")
    sync(open_local(a, sep=";"), open_local(b, sep=";"), state, SyncOptions())
    (held,) = quarantine.entries(b)
    with pytest.raises(UsageError, match="uses --separator ';'"):
        list(quarantine.restore_keys(b, "maildir++", ":", [held.key(":")]))
    assert list(quarantine.entries(b)) == [held]
    ((_, relname),) = quarantine.restore_keys(b, "maildir++", ";", [key])
    report = sync(open_local(a, sep=";"), open_local(b, sep=";"), state, SyncOptions())
    assert report.counts == {"copy b->a": 1}
    assert os.listdir(a / "cur") == [relname.split("/")[1]]
