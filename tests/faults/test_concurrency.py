"""Concurrency: mail delivered, flagged, moved between folders and deleted, and folders renamed,
while syncs run; two syncs of one pair started together; a sync SIGSTOPped past the other's lock
timeout while a mail client changes what it planned to copy. Every case converges on the next
quiet run with every message present exactly once on each side (a message a client deleted:
at most once), as Python's mailbox.Maildir reads them.
"""

from __future__ import annotations

import mailbox
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import pytest

from mailmirror.maildir import fsops
from mailmirror.replica.base import Rename, Result
from mailmirror.replica.local import LocalReplica, open_local
from mailmirror.store import open_store
from mailmirror.sync.engine import SyncOptions, sync
from mailmirror.sync.state import SyncState
from tests.e2e.conftest import MAILMIRROR
from tests.e2e.sshkit import deliver, maildir, messages

FOLDERS = ("INBOX", "Work")


def _start(tmp_path: Path, a: Path, b: Path, *extra: str) -> subprocess.Popen:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "LANG": "C.UTF-8"}
    return subprocess.Popen([MAILMIRROR, "sync", str(a), str(b), "--state",
                             str(tmp_path / "state.db"), *extra], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _sync(tmp_path: Path, a: Path, b: Path, *extra: str) -> tuple[int, str]:
    proc = _start(tmp_path, a, b, *extra)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _syncs_under_load(tmp_path: Path, a: Path, b: Path, runs: int) -> None:
    """Syncs while clients work: a run may skip what changed under it (exit 1), no more."""
    for _ in range(runs):
        rc, err = _sync(tmp_path, a, b)
        assert rc in (0, 1), err
        assert "Traceback" not in err, err


def _quiet_syncs(tmp_path: Path, a: Path, b: Path, runs: int = 2) -> None:
    for _ in range(runs):
        rc, err = _sync(tmp_path, a, b)
        assert rc == 0, err


def inventory(root: Path) -> dict[str, tuple[str, str, str]]:
    """key -> (folder, subdir, flags), read with mailbox.Maildir; a key twice fails."""
    top = mailbox.Maildir(root, factory=None, create=False)
    boxes = [("INBOX", top)] + [(f, top.get_folder(f)) for f in top.list_folders()]
    out: dict[str, tuple[str, str, str]] = {}
    for folder, box in boxes:
        for key in box.keys():
            msg = box.get_message(key)
            unique = os.path.basename(box._toc[key]).split(":")[0]
            assert unique not in out, f"{unique} twice in {root}: {out[unique]} and {folder}"
            out[unique] = (folder, msg.get_subdir(), msg.get_flags())
    return out


def assert_converged(a: Path, b: Path, expected: set[str]) -> dict[str, tuple[str, str, str]]:
    seen = inventory(a)
    assert seen == inventory(b)
    assert set(seen) == expected, (sorted(expected - set(seen))[:5], sorted(set(seen) - expected))
    return seen


def seed(a: Path, count: int, size: int = 200) -> set[str]:
    maildir(a, *FOLDERS[1:])
    keys = set()
    for i in range(count):
        key = f"1700000000.M{i}P1.seed"
        deliver(a, key, FOLDERS[i % 2], "cur", "S", size)
        keys.add(key)
    return keys


class Clients:
    """Threads acting as mail clients while the `with` block runs syncs."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


class MailTraffic(Clients):
    """An MDA delivering into every replica (mailbox.Maildir: tmp/ then new/) and a mail
    client adding flags by renaming files, as mutt does, until stop()."""

    def __init__(self, roots: list[Path]) -> None:
        super().__init__()
        self.roots = roots
        self.delivered: set[str] = set()
        self.flagged: dict[str, set[str]] = {}
        self._threads = [threading.Thread(target=self._mda), threading.Thread(target=self._mua)]

    def _mda(self) -> None:
        boxes = [mailbox.Maildir(root, factory=None, create=False) for root in self.roots]
        n = 0
        while not self._stop.is_set():
            box = boxes[n % len(boxes)]
            key = box.add(f"Subject: live {n}\n\nbody {n}\n".encode())
            self.delivered.add(key)
            n += 1
            time.sleep(0.003)

    def _mua(self) -> None:
        rng = random.Random(5)
        while not self._stop.is_set():
            root = rng.choice(self.roots)
            sub = rng.choice(("cur", "new"))
            try:
                names = os.listdir(root / sub)
                name = rng.choice(names)
            except (OSError, IndexError):
                continue
            unique, _, info = name.partition(":")
            flag = rng.choice("FRS")
            letters = "".join(sorted(set(info[2:] + flag)))
            try:
                os.rename(root / sub / name, root / "cur" / f"{unique}:2,{letters}")
            except OSError:
                continue  # renamed by the sync (or by us) meanwhile: a real client retries
            self.flagged.setdefault(unique, set()).add(flag)
            time.sleep(0.002)


def test_delivery_and_flagging_during_syncs_converge(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    keys = seed(a, 600)
    assert _sync(tmp_path, a, b)[0] == 0
    with MailTraffic([a, b]) as traffic:
        for _ in range(6):
            rc, err = _sync(tmp_path, a, b)
            assert rc in (0, 1), err
            assert "Traceback" not in err, err
    rc, err = _sync(tmp_path, a, b)
    assert rc == 0, err
    seen = assert_converged(a, b, keys | traffic.delivered)
    for unique, flags in traffic.flagged.items():
        assert flags <= set(seen[unique][2]), f"{unique} lost a flag a client set: {seen[unique]}"
    assert len(traffic.delivered) > 100 and len(traffic.flagged) > 100
    assert '"counts": {}' in _sync_json(tmp_path, a, b)


def _sync_json(tmp_path: Path, a: Path, b: Path) -> str:
    proc = _start(tmp_path, a, b, "--json")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def test_two_syncs_of_one_pair_started_together(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    keys = seed(a, 2000, 2000)
    deliver(maildir(b), "1800000000.M1P1.fromb", "INBOX", "new")
    both = [_start(tmp_path, a, b, "--json") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in both]
    assert [p.returncode for p in both] == [0, 0], [e for _, e in outs]
    assert sorted(o.count('"copy a->b": 2000') for o, _ in outs) == [0, 1], outs
    assert_converged(a, b, keys | {"1800000000.M1P1.fromb"})


def _file(root: Path, key: str) -> Path:
    return next(p for d in (root / "cur", root / ".Work" / "cur") for p in d.glob(f"{key}:*"))


def test_a_stopped_sync_blocks_the_pair_and_resumes_without_harm(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    keys = seed(a, 3000, 20_000)
    first = _start(tmp_path, a, b)
    deadline = time.monotonic() + 30
    while not (b.exists() and messages(b)):
        assert first.poll() is None and time.monotonic() < deadline, "never caught mid-copy"
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)
    try:
        copied = set(messages(b))
        assert len(copied) < len(keys), "the sync finished before it was stopped"
        rc, err = _sync(tmp_path, a, b, "--lock-timeout", "1")
        assert rc == 3 and "another sync" in err and err.count("\n") == 1, (rc, err)
        # meanwhile a mail client changes and deletes what the stopped sync means to copy
        pending = sorted(keys - copied)
        for key in pending[-50:]:
            os.unlink(_file(a, key))
            keys.discard(key)
        for key in pending[-100:-50]:
            old = _file(a, key)
            os.rename(old, old.with_name(f"{key}:2,FS"))
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode in (0, 1) and "Traceback" not in err, err
    rc, err = _sync(tmp_path, a, b)
    assert rc == 0, err
    seen = assert_converged(a, b, keys)
    assert all(seen[k][2] == "FS" for k in pending[-100:-50])


class FolderShuffle(Clients):
    """Clients working on a few messages at once: on `movers`, moving them between INBOX and
    Work (as filing or undoing does); on `flaggers`, adding flags in whichever folder they are.
    A move that lands in a folder the running sync listed already hides the message from it."""

    def __init__(self, movers: list[Path], flaggers: list[Path], keys: list[str],
                 deleters: tuple[Path, ...] = ()) -> None:
        super().__init__()
        self.keys = keys
        self.flagged: dict[str, set[str]] = {}
        self.deleted: set[str] = set()
        self._threads = ([threading.Thread(target=self._move, args=(r,)) for r in movers]
                         + [threading.Thread(target=self._flag, args=(r,)) for r in flaggers]
                         + [threading.Thread(target=self._delete, args=(r,)) for r in deleters])

    def _find(self, root: Path, key: str) -> Path | None:
        for d in (root / "cur", root / ".Work" / "cur"):
            for name in os.listdir(d):
                if name.partition(":")[0] == key:
                    return d / name
        return None

    def _move(self, root: Path) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            path = self._find(root, rng.choice(self.keys))
            if path is None:
                continue
            there = root / "cur" if path.parent.parent != root else root / ".Work" / "cur"
            try:
                os.rename(path, there / path.name)
            except OSError:
                continue  # renamed meanwhile (by the sync or the other client)
            time.sleep(0.001)

    def _flag(self, root: Path) -> None:
        rng = random.Random(11)
        while not self._stop.is_set():
            key = rng.choice(self.keys)
            path = self._find(root, key)
            if path is None:
                continue
            info = path.name.partition(":")[2]
            flag = rng.choice("FRT")
            letters = "".join(sorted(set(info[2:] + flag)))
            try:
                os.rename(path, path.with_name(f"{key}:2,{letters}"))
            except OSError:
                continue
            self.flagged.setdefault(key, set()).add(flag)
            time.sleep(0.002)


    def _delete(self, root: Path) -> None:
        """Deletes among every other key: the rest are only moved and flagged."""
        rng = random.Random(13)
        while not self._stop.is_set():
            key = rng.choice(self.keys[::2])
            path = self._find(root, key)
            if path is None:
                continue
            try:
                os.unlink(path)
            except OSError:
                continue
            self.deleted.add(key)
            time.sleep(0.02)


def test_messages_moved_between_folders_during_syncs_are_never_doubled(tmp_path: Path) -> None:
    """spec.md F14 with real processes: a message moved while the sync lists, flagged on the
    other side since the last sync, must not come back beside itself, nor be lost (taken for
    deleted, then deleted again once its moved copy matches the tombstone)."""
    a, b = tmp_path / "a", tmp_path / "b"
    keys = seed(a, 1500)
    assert _sync(tmp_path, a, b)[0] == 0
    busy = sorted(keys)[:12]
    with FolderShuffle([a, b], [a, b], busy) as shuffle:
        _syncs_under_load(tmp_path, a, b, 15)
    _quiet_syncs(tmp_path, a, b)
    seen = assert_converged(a, b, keys)
    for key, flags in shuffle.flagged.items():
        assert flags <= set(seen[key][2]), f"{key} lost a flag a client set: {seen[key]}"
    assert len(shuffle.flagged) == len(busy)


def test_deletions_among_moves_and_flags_during_syncs_lose_nothing_else(tmp_path: Path) -> None:
    """Clients also delete some of the messages others move and flag. A deleted message may
    come back (changed on the other side meanwhile: kept, spec.md R3); every other message
    ends exactly once on each side."""
    a, b = tmp_path / "a", tmp_path / "b"
    keys = seed(a, 1500)
    assert _sync(tmp_path, a, b)[0] == 0
    busy = sorted(keys)[:40]
    with FolderShuffle([a, b], [a, b], busy, deleters=(a, b)) as shuffle:
        _syncs_under_load(tmp_path, a, b, 15)
    _quiet_syncs(tmp_path, a, b)
    seen = inventory(a)
    assert seen == inventory(b)
    assert keys - shuffle.deleted <= set(seen) <= keys
    for key in busy[1::2]:
        assert shuffle.flagged[key] <= set(seen[key][2]), f"{key} lost a flag: {seen[key]}"
    assert len(shuffle.deleted) >= 10


class FolderRenames(Clients):
    """A client on each root renaming .Work to .Archive and back every 5-100 ms."""

    def __init__(self, roots: list[Path]) -> None:
        super().__init__()
        self.renamed: list[str] = []
        self._threads = [threading.Thread(target=self._rename, args=(root, n))
                         for n, root in enumerate(roots)]

    def _rename(self, root: Path, salt: int) -> None:
        rng = random.Random(salt)
        while not self._stop.is_set():
            here = ".Work" if (root / ".Work").exists() else ".Archive"
            there = ".Archive" if here == ".Work" else ".Work"
            try:
                os.rename(root / here, root / there)
                self.renamed.append(there)
            except OSError:
                pass  # the sync created the other one meanwhile: try again
            time.sleep(rng.uniform(0.005, 0.1))

def test_a_folder_renamed_back_and_forth_on_both_sides_during_syncs(tmp_path: Path) -> None:
    """IMAP RENAME is one directory rename: every message of the folder moves at once, on
    either side, while syncs list. Nothing is lost or doubled, and both sides agree."""
    a, b = tmp_path / "a", tmp_path / "b"
    keys = seed(a, 1500)
    assert _sync(tmp_path, a, b)[0] == 0
    with FolderRenames([a, b]) as renames:
        _syncs_under_load(tmp_path, a, b, 25)
    _quiet_syncs(tmp_path, a, b)
    assert_converged(a, b, keys)
    assert len(renames.renamed) >= 10


class ClientFlagsFirst(LocalReplica):
    """A mail client marks each message read just before the sync renames it (INBOX only)."""

    def rename(self, items: list[Rename]) -> list[Result]:
        for item in items:
            source = self.root / item.source.relname
            os.rename(source, f"{source}S")
        return super().rename(items)


def test_a_split_whose_rename_a_client_beat_copies_nothing(tmp_path: Path) -> None:
    """Same key, different content on both sides: the sync renames B's message to a fresh
    key and copies A's under the key. When a client renamed B's message first, the rename
    fails, and the copy must not run: B would hold two messages under one key, and the next
    run could give the wrong one the fresh key and spread a message twice."""
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    key = "1700000000.M1P1.host"
    deliver(a, key, "INBOX", "cur", "", 15)
    deliver(b, key, "INBOX", "cur", "", 40)
    ours, theirs = (next((r / "cur").iterdir()).read_bytes() for r in (a, b))
    state = SyncState(open_store(tmp_path / "s.db"))
    report = sync(open_local(a), ClientFlagsFirst(b), state, SyncOptions())
    assert report.counts == {}, report.counts
    assert [n.split(":")[0] for n in os.listdir(b / "cur")] == [key]
    assert [n.split(":")[0] for n in os.listdir(a / "cur")] == [key]
    for _ in range(2):
        sync(open_local(a), open_local(b), state, SyncOptions())
    for root in (a, b):
        contents = sorted(m.get_payload(decode=True) or b"" for m in mailbox.Maildir(root))
        assert len(contents) == 2, (root, contents)
        assert sorted(p.read_bytes() for p in (root / "cur").iterdir()) == sorted([ours, theirs])


def test_without_renameat2_a_client_rename_inside_ours_leaves_one_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NFS, CIFS and many FUSE file systems have no RENAME_NOREPLACE: a rename is link, then
    unlink. A mail client renaming the message between the two left it under two names, and
    the next run gave the second one a key of its own: one message twice on every side."""
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    key = "1700000000.M1P1.host"
    deliver(a, key, "INBOX", "cur", "")
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    os.rename(a / "cur" / f"{key}:2,", a / "cur" / f"{key}:2,S")
    monkeypatch.setattr(fsops, "_libc", lambda: object())  # neither renameat2 nor syncfs
    link = os.link

    def link_then_client(source: str, target: str) -> None:
        link(source, target)
        if os.path.basename(source) == f"{key}:2,":  # the client flags it, once
            os.rename(source, b / "cur" / f"{key}:2,F")

    monkeypatch.setattr(fsops.os, "link", link_then_client)
    report = sync(open_local(a), open_local(b), state, SyncOptions())
    assert any("changed meanwhile" in line for line in report.skipped), report.skipped
    assert os.listdir(b / "cur") == [f"{key}:2,F"]
    for _ in range(2):
        sync(open_local(a), open_local(b), state, SyncOptions())
    for root in (a, b):
        assert os.listdir(root / "cur") == [f"{key}:2,FS"], root
        assert len(mailbox.Maildir(root)) == 1


class OtherPairFirst(LocalReplica):
    """A replica of two pairs: before this run's copies land, the other pair's run (its own
    state store, so its own lock) copies into it too."""

    other_run: Callable[[], object]

    def deliver(self, items: list) -> list[Result]:
        self.other_run()
        return super().deliver(items)


def test_two_pairs_copying_one_message_into_one_replica_leave_it_once(tmp_path: Path) -> None:
    """The classic star: main syncs with the backup (state on main), the desktop with main
    (state on the desktop). Mail reached the backup while main was down, and the desktop
    read it there. Both runs then copy it into main at once, under different flags: main
    holds it twice, one message under two names. The next run keeps one, with both flags."""
    main, backup, desktop = (maildir(tmp_path / n) for n in ("main", "backup", "desktop"))
    on_main, on_desktop = (SyncState(open_store(tmp_path / f"{n}.db")) for n in ("m", "d"))
    key = "1700000000.M1P1.mx2"
    deliver(backup, key, "INBOX", "new")
    deliver(desktop, key, "INBOX", "cur", "S")  # fetched from the backup, then read
    target = OtherPairFirst(main)
    target.other_run = lambda: sync(open_local(desktop), open_local(main), on_desktop,
                                    SyncOptions())
    sync(target, open_local(backup), on_main, SyncOptions())
    assert sorted(os.listdir(main / "new") + os.listdir(main / "cur")) == [key, f"{key}:2,S"]
    report = sync(open_local(main), open_local(backup), on_main, SyncOptions())
    assert any("second copy" in n and "quarantine" in n for n in report.notices), report.notices
    for _ in range(2):
        sync(open_local(desktop), open_local(main), on_desktop, SyncOptions())
        sync(open_local(main), open_local(backup), on_main, SyncOptions())
    for root in (main, backup, desktop):
        assert os.listdir(root / "cur") == [f"{key}:2,S"] and not os.listdir(root / "new"), root
        assert len(mailbox.Maildir(root)) == 1


def test_two_names_of_one_file_after_a_crash_become_one_message(tmp_path: Path) -> None:
    """Without renameat2 a rename is link, then unlink: a crash between them leaves the
    message under its old and its new name, one file. The next run keeps one name."""
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    key = "1700000000.M1P1.host"
    deliver(a, key, "INBOX", "cur", "")
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    os.link(b / "cur" / f"{key}:2,", b / "cur" / f"{key}:2,F")  # killed before the unlink
    for _ in range(3):
        sync(open_local(a), open_local(b), state, SyncOptions())
    for root in (a, b):
        assert os.listdir(root / "cur") == [f"{key}:2,F"], root


def test_same_key_other_bytes_or_other_folder_are_two_messages(tmp_path: Path) -> None:
    """A file copied by hand keeps its name: with other bytes, or into another folder, it is
    a message of its own (a fresh key), never dropped as a second copy."""
    a, b = maildir(tmp_path / "a", "Work"), maildir(tmp_path / "b", "Work")
    key = "1700000000.M1P1.host"
    deliver(a, key, "INBOX", "cur", "S", 10)
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    same = (a / "cur" / f"{key}:2,S").read_bytes()
    (a / "cur" / f"{key}:2,F").write_bytes(same.upper())  # other bytes, same size
    (a / ".Work" / "cur" / f"{key}:2,S").write_bytes(same)  # same bytes, other folder
    for _ in range(3):
        sync(open_local(a), open_local(b), state, SyncOptions())
    for root in (a, b):
        assert len(mailbox.Maildir(root)) == 2 and len(os.listdir(root / ".Work" / "cur")) == 1
