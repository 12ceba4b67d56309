"""The replica contract (mailmirror/replica/base.py), one suite run against every replica kind.

REPLICA_FACTORIES names each kind and how to open it on a root directory of this machine; the
tests check results through the Replica interface and the files straight on disk. SFTP goes
through a real OpenSSH sshd on 127.0.0.1 (tests/ssh/sshrig.py), started once for this module.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from mailmirror.errors import ReplicaError
from mailmirror.maildir.folders import FS, MAILDIRPP
from mailmirror.maildir.quarantine import QUARANTINE_DIR, day_name, quarantine_dir
from mailmirror.replica.base import (
    OK,
    Delivery,
    Message,
    Outcome,
    Ref,
    Rename,
    Replica,
    Result,
)
from mailmirror.replica.local import ID_FILE, open_local
from mailmirror.replica.remote import AgentReplica, PipeChannel
from mailmirror.replica.sftp import open_sftp
from mailmirror.sync.model import Entry
from mailmirror.transport.loop import LoopThread
from tests.conftest import require
from tests.ssh.sshrig import running_rig, sftp_client

Opener = Callable[..., Replica]  # (root, layout=..., sep=..., readonly=...) -> Replica


@dataclass
class SftpLink:
    loop: LoopThread
    sftp: asyncssh.SFTPClient


@pytest.fixture(scope="module")
def sftp_link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpLink]:
    """One sshd, connection and SFTP session shared by this module's SFTP replicas."""
    with running_rig(tmp_path_factory.mktemp("ssh"), require("sshd")) as rig:
        with sftp_client(rig) as (loop, sftp):
            yield SftpLink(loop, sftp)


def _local(request: pytest.FixtureRequest) -> Opener:
    return open_local


def _sftp(request: pytest.FixtureRequest) -> Opener:
    link: SftpLink = request.getfixturevalue("sftp_link")

    def opener(root: Path, **options: object) -> Replica:
        return open_sftp(link.sftp, link.loop.loop, str(root), **options)  # type: ignore[arg-type]

    return opener


def _agent(request: pytest.FixtureRequest) -> Opener:
    """`mailmirror agent` as a local process: the same code path as over ssh, minus ssh."""

    def opener(root: Path, layout: str = MAILDIRPP, sep: str = ":",
               readonly: bool = False) -> Replica:
        channel = PipeChannel([sys.executable, "-m", "mailmirror", "agent", str(root)])
        return AgentReplica(channel, f"agent:{root}", layout, sep, readonly)

    return opener


# Every replica kind, by name: a function from the pytest request to an opener.
REPLICA_FACTORIES: dict[str, Callable[[pytest.FixtureRequest], Opener]] = {
    "local": _local,
    "sftp": _sftp,
    "agent": _agent,
}


@pytest.fixture(params=sorted(REPLICA_FACTORIES))
def opener(request: pytest.FixtureRequest) -> Iterator[Opener]:
    opened: list[Replica] = []
    make = REPLICA_FACTORIES[request.param](request)

    def open_replica(root: Path, **options: object) -> Replica:
        replica = make(root, **options)
        opened.append(replica)
        return replica

    yield open_replica
    for replica in opened:
        replica.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "mail"


MSG = "1700000000.M1P1.host,S=5"
HOSTILE_NAMES = ["a/b", "..", ".", "x\x00y", "", "x\ny", "n" * 300]
HOSTILE_RELNAMES = ["tmp/" + MSG, "../" + MSG, "cur/../" + MSG, MSG, "/cur/" + MSG]


def put(root: Path, relpath: str, data: bytes = b"hello") -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def backdate(*dirs: Path) -> None:
    for d in dirs:
        os.utime(d, (1_000_000_000, 1_000_000_000))


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


class TestReplicaContract:
    """Each test names the rule of replica/base.py (or LocalReplica's behaviour) it checks."""

    # -- opening, identity, clock ---------------------------------------------------------
    def test_open_creates_an_empty_maildir(self, opener: Opener, root: Path) -> None:
        opener(root)
        assert all((root / sub).is_dir() for sub in ("cur", "new", "tmp"))

    def test_readonly_open_of_a_missing_root_creates_nothing(self, opener: Opener,
                                                             root: Path) -> None:
        replica = opener(root, readonly=True)
        assert replica.stamps() == {}
        assert replica.id.startswith("unsaved-")
        assert not root.exists()

    def test_half_maildir_and_foreign_directory_are_refused(self, opener: Opener,
                                                            tmp_path: Path) -> None:
        (tmp_path / "half" / "cur").mkdir(parents=True)
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("x")
        with pytest.raises(ReplicaError, match="not a complete maildir"):
            opener(tmp_path / "half")
        with pytest.raises(ReplicaError, match="not a maildir"):
            opener(tmp_path / "other")
        with pytest.raises(ReplicaError, match="does not exist"):
            opener(tmp_path / "no" / "such")

    def test_id_is_created_once_and_stable_across_opens(self, opener: Opener,
                                                        root: Path) -> None:
        first = opener(root).id
        assert (root / ID_FILE).read_text().strip() == first
        assert opener(root).id == first
        assert opener(root, readonly=True).id == first
        assert files_under(root) == {ID_FILE}  # no temp file left behind

    def test_clock_is_the_replicas_wall_clock(self, opener: Opener, root: Path) -> None:
        clock = opener(root).clock_ns()
        assert abs(clock - time.time_ns()) < 3_000_000_000  # same machine; SFTP has 1 s ticks
        assert files_under(root) == set()

    # -- folders and stamps ---------------------------------------------------------------
    def test_stamps_list_maildirpp_folders_only(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        replica.create_folder("Work")
        replica.create_folder("Lists/Deb")
        (root / ".NoCur" / "new").mkdir(parents=True)
        (root / ".Link").symlink_to(root / ".Work")
        (root / "plain" / "cur").mkdir(parents=True)
        assert sorted(replica.stamps()) == ["INBOX", "Lists/Deb", "Work"]

    def test_stamps_list_fs_layout_folders(self, opener: Opener, root: Path) -> None:
        replica = opener(root, layout=FS)
        replica.create_folder("Lists/Deb")
        replica.create_folder("Work")
        (root / "Link").symlink_to(root / "Work")
        (root / ".hidden" / "cur").mkdir(parents=True)
        assert sorted(replica.stamps()) == ["INBOX", "Lists/Deb", "Work"]
        assert (root / "Lists" / "Deb" / "maildirfolder").exists()

    def test_stamps_change_when_names_change(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        put(root, f"new/{MSG}")
        backdate(root / "cur", root / "new")
        before = replica.stamps()["INBOX"]
        os.rename(root / "new" / MSG, root / "cur" / f"{MSG}:2,S")
        after = replica.stamps()["INBOX"]
        assert after.cur != before.cur and after.new != before.new

    def test_create_folder_is_idempotent_and_complete(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        replica.create_folder("Work")
        put(root, f".Work/cur/{MSG}:2,S")
        replica.create_folder("Work")
        assert sorted(os.listdir(root / ".Work")) == ["cur", "maildirfolder", "new", "tmp"]
        assert os.listdir(root / ".Work" / "cur") == [f"{MSG}:2,S"]

    def test_remove_folder_only_when_empty(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        replica.create_folder("Full")
        replica.create_folder("Empty")
        put(root, f".Full/new/{MSG}")
        (root / ".Empty" / "dovecot-uidlist").write_text("3 V1 N1\n")
        assert replica.remove_folder("Full") is False
        assert (root / ".Full" / "new" / MSG).exists()
        assert replica.remove_folder("Empty") is True
        assert not (root / ".Empty").exists()
        assert replica.remove_folder("Empty") is False
        assert replica.remove_folder("INBOX") is False
        assert (root / "cur").is_dir()

    def test_hostile_folder_names_are_refused(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        for folder in ["..", "a/../b", "a\x00b", "/abs"]:
            with pytest.raises(ValueError):
                replica.create_folder(folder)
            result = replica.deliver([Delivery(Ref(folder, "new/" + MSG), b"x")])[0]
            assert result.outcome is Outcome.FAILED
        assert not (root.parent / "b").exists()

    # -- listing and sizes ----------------------------------------------------------------
    def test_list_gives_names_of_cur_and_new_only(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        replica.create_folder("Work")
        put(root, f"cur/{MSG}:2,S")
        put(root, "new/2.M2P2.host")
        put(root, "tmp/3.M3P3.host")
        put(root, "cur/.hidden")
        put(root, "dovecot-uidlist")
        listing = replica.list(["INBOX", "Work"])
        assert sorted(listing["INBOX"]) == [f"cur/{MSG}:2,S", "new/2.M2P2.host"]
        assert listing["Work"] == []

    def test_sizes_with_none_for_gone_and_hostile(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        put(root, f"cur/{MSG}:2,S", b"12345")
        refs = [Ref("INBOX", f"cur/{MSG}:2,S"), Ref("INBOX", "cur/gone")]
        refs += [Ref("INBOX", "cur/" + n) for n in HOSTILE_NAMES]
        assert replica.sizes(refs) == [5, None] + [None] * len(HOSTILE_NAMES)

    # -- read -----------------------------------------------------------------------------
    def test_read_contents_gone_and_refusals(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        put(root, f"cur/{MSG}:2,S", b"body\r\n" * 1000)
        put(root, "cur/empty", b"")
        os.mkfifo(root / "cur" / "fifo")
        put(root.parent, "secret", b"outside")
        (root / "cur" / "link").symlink_to(root.parent / "secret")
        refs = [Ref("INBOX", r) for r in (f"cur/{MSG}:2,S", "cur/empty", "cur/gone",
                                          "cur/fifo", "cur/link", "cur/../../secret")]
        os.utime(root / "cur" / f"{MSG}:2,S", ns=(1_500_000_000 * 10**9,) * 2)
        got = replica.read(refs)  # the FIFO must neither block nor be read
        assert [m.data for m in got[:2] if isinstance(m, Message)] == [b"body\r\n" * 1000, b""]
        assert isinstance(got[0], Message) and got[0].mtime_ns == 1_500_000_000 * 10**9
        assert got[2] == Result(Outcome.GONE)
        assert all(isinstance(r, Result) and r.outcome is Outcome.FAILED for r in got[3:])

    # -- deliver --------------------------------------------------------------------------
    def test_deliver_keeps_the_mtime(self, opener: Opener, root: Path) -> None:
        """Dovecot shows a message's file mtime as its received date: a copy keeps it."""
        replica = opener(root)
        when = 1_400_000_000 * 10**9
        assert replica.deliver([Delivery(Ref("INBOX", f"cur/{MSG}:2,S"), b"old", when)]) == [OK]
        assert (root / "cur" / f"{MSG}:2,S").stat().st_mtime_ns == when

    def test_deliver_publishes_into_cur_and_new(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        replica.create_folder("Work")
        results = replica.deliver([Delivery(Ref("INBOX", f"new/{MSG}"), b"one"),
                                   Delivery(Ref("Work", f"cur/{MSG}:2,FS"), b"two")])
        assert results == [OK, OK]
        assert (root / "new" / MSG).read_bytes() == b"one"
        assert (root / ".Work" / "cur" / f"{MSG}:2,FS").read_bytes() == b"two"
        assert os.listdir(root / "tmp") == os.listdir(root / ".Work" / "tmp") == []

    def test_deliver_never_clobbers(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        put(root, f"cur/{MSG}:2,S", b"original")
        results = replica.deliver([Delivery(Ref("INBOX", f"cur/{MSG}:2,S"), b"intruder"),
                                   Delivery(Ref("INBOX", "cur/other"), b"fine")])
        assert results == [Result(Outcome.EXISTS), OK]
        assert (root / "cur" / f"{MSG}:2,S").read_bytes() == b"original"
        assert os.listdir(root / "tmp") == []

    def test_deliver_refuses_hostile_names(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        refs = [Ref("INBOX", "new/" + n) for n in HOSTILE_NAMES]
        refs += [Ref("INBOX", r) for r in HOSTILE_RELNAMES]
        results = replica.deliver([Delivery(ref, b"x") for ref in refs])
        assert all(r.outcome is Outcome.FAILED for r in results), results
        assert files_under(root.parent) == set()

    def test_deliver_into_a_missing_folder_fails_that_item(self, opener: Opener,
                                                           root: Path) -> None:
        replica = opener(root)
        results = replica.deliver([Delivery(Ref("Nope", f"new/{MSG}"), b"x"),
                                   Delivery(Ref("INBOX", f"new/{MSG}"), b"y")])
        assert results[0].outcome is Outcome.FAILED and results[1] == OK

    def test_delivery_is_invisible_until_complete(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        data = os.urandom(1 << 20) * 6
        seen: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for name in os.listdir(root / "new"):
                    try:
                        seen.append((root / "new" / name).stat().st_size)
                    except FileNotFoundError:
                        pass

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            assert replica.deliver([Delivery(Ref("INBOX", f"new/{MSG}"), data)]) == [OK]
        finally:
            stop.set()
            watcher.join()
        assert set(seen) <= {len(data)}
        assert (root / "new" / MSG).read_bytes() == data

    # -- rename and delete ----------------------------------------------------------------
    def test_rename_flags_subdir_and_folder(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        replica.create_folder("Work")
        put(root, f"new/{MSG}", b"a")
        put(root, "cur/2.M2P2.h:2,", b"b")
        results = replica.rename([
            Rename(Ref("INBOX", f"new/{MSG}"), Ref("INBOX", f"cur/{MSG}:2,S")),
            Rename(Ref("INBOX", "cur/2.M2P2.h:2,"), Ref("Work", "cur/2.M2P2.h:2,F")),
        ])
        assert results == [OK, OK]
        assert (root / "cur" / f"{MSG}:2,S").read_bytes() == b"a"
        assert (root / ".Work" / "cur" / "2.M2P2.h:2,F").read_bytes() == b"b"
        assert files_under(root) == {f"cur/{MSG}:2,S", ".Work/cur/2.M2P2.h:2,F",
                                     ".Work/maildirfolder"}

    def test_rename_never_clobbers_and_reports_gone(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        put(root, "cur/a:2,S", b"a")
        put(root, "cur/a:2,F", b"taken")
        results = replica.rename([
            Rename(Ref("INBOX", "cur/a:2,S"), Ref("INBOX", "cur/a:2,F")),
            Rename(Ref("INBOX", "cur/gone:2,"), Ref("INBOX", "cur/gone:2,S")),
            Rename(Ref("INBOX", "cur/a:2,S"), Ref("Nope", "cur/a:2,S")),
        ])
        assert [r.outcome for r in results[:2]] == [Outcome.EXISTS, Outcome.GONE]
        assert not results[2].ok  # a missing target folder (LocalReplica says GONE here)
        assert (root / "cur" / "a:2,S").read_bytes() == b"a"
        assert (root / "cur" / "a:2,F").read_bytes() == b"taken"

    def test_rename_refuses_hostile_names(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        put(root, f"cur/{MSG}", b"a")
        good = Ref("INBOX", f"cur/{MSG}")
        items = [Rename(good, Ref("INBOX", "cur/" + n)) for n in HOSTILE_NAMES]
        items += [Rename(good, Ref("INBOX", r)) for r in HOSTILE_RELNAMES]
        items += [Rename(Ref("INBOX", r), good) for r in HOSTILE_RELNAMES]
        results = replica.rename(items)
        assert all(r.outcome is Outcome.FAILED for r in results), results
        assert files_under(root.parent) == {f"mail/cur/{MSG}"}

    def test_delete_ok_gone_and_hostile(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        put(root, f"cur/{MSG}:2,S")
        put(root.parent, "keep", b"outside")
        results = replica.delete([Ref("INBOX", f"cur/{MSG}:2,S"), Ref("INBOX", f"cur/{MSG}:2,S"),
                                  Ref("INBOX", "cur/../../keep"), Ref("INBOX", "tmp/x")])
        assert [r.outcome for r in results] == [Outcome.OK, Outcome.GONE, Outcome.FAILED,
                                                Outcome.FAILED]
        assert (root.parent / "keep").exists()

    @pytest.mark.parametrize("layout", [MAILDIRPP, FS])
    def test_delete_moves_into_the_quarantine(self, opener: Opener, root: Path,
                                              layout: str) -> None:
        """docs/spec.md Q1: deleted mail is moved, byte for byte, to a place IMAP never lists."""
        replica = opener(root, layout=layout)
        replica.create_folder("Lists/Deb")
        sub = root / ("Lists/Deb" if layout == FS else ".Lists.Deb")
        put(sub, f"new/{MSG}", b"keep me")
        results = replica.delete([Ref("Lists/Deb", f"new/{MSG}")])
        assert results == [OK]
        assert not (sub / "new" / MSG).exists()
        qdir = quarantine_dir(root, layout)
        assert qdir == (root / QUARANTINE_DIR if layout == MAILDIRPP
                        else root / "tmp" / QUARANTINE_DIR)
        (kept,) = [p for p in qdir.rglob("*") if p.is_file()]
        assert kept.relative_to(qdir).parts[1:] == ("Lists%2FDeb", "new", MSG)
        assert kept.read_bytes() == b"keep me"
        assert sorted(replica.stamps()) == ["INBOX", "Lists/Deb"]  # not a folder

    def test_the_same_message_deleted_twice_in_a_day_is_kept_once(self, opener: Opener,
                                                                   root: Path) -> None:
        """A pair whose base was behind copied a quarantined message back, and it is
        deleted again the same day: the quarantine holds it already (before, this failed
        on every run until midnight). Another message of that name is never thrown away."""
        replica = opener(root)
        body = b"x" * 70_000  # longer than one read of a small file
        for attempt in range(2):
            put(root, f"cur/{MSG}:2,S", body)
            assert replica.delete([Ref("INBOX", f"cur/{MSG}:2,S")]) == [OK], attempt
        assert not (root / "cur" / f"{MSG}:2,S").exists()
        put(root, f"cur/{MSG}:2,S", body[:-1] + b"y")
        (failed,) = replica.delete([Ref("INBOX", f"cur/{MSG}:2,S")])
        assert failed.outcome == Outcome.FAILED and (root / "cur" / f"{MSG}:2,S").exists()
        (kept,) = [p for p in quarantine_dir(root).rglob("*") if p.is_file()]
        assert kept.read_bytes() == body

    def test_prune_removes_only_days_past_the_retention(self, opener: Opener,
                                                        root: Path) -> None:
        replica = opener(root)
        put(root, f"cur/{MSG}:2,S")
        assert replica.delete([Ref("INBOX", f"cur/{MSG}:2,S")]) == [OK]
        qdir = quarantine_dir(root)
        put(qdir, "2001-02-03/INBOX/cur/old1:2,S")
        put(qdir, "2001-02-03/Work/new/old2")
        put(qdir, "not-a-day/x")
        assert replica.prune_quarantine(30) == 2
        assert sorted(os.listdir(qdir)) == sorted([day_name(time.time()), "not-a-day"])
        assert replica.prune_quarantine(30) == 0

    def test_stored_id_reads_but_never_creates(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        assert replica.stored_id() is None
        assert not (root / ID_FILE).exists()
        rid = replica.id
        assert opener(root).stored_id() == rid == (root / ID_FILE).read_text().strip()

    # -- keywords -------------------------------------------------------------------------
    def test_keywords_read_and_add_keep_existing_letters(self, opener: Opener,
                                                         root: Path) -> None:
        replica = opener(root)
        assert replica.keywords("INBOX") == {}
        (root / "dovecot-keywords").write_text("0 $Junk\n2 Work\n")
        assert replica.keywords("INBOX") == {"a": "$Junk", "c": "Work"}
        mapping = replica.add_keywords("INBOX", ["Work", "Later", "Home"])
        assert mapping == {"a": "$Junk", "b": "Home", "c": "Work", "d": "Later"}
        assert replica.keywords("INBOX") == mapping
        assert (root / "dovecot-keywords").read_text() == "0 $Junk\n1 Home\n2 Work\n3 Later\n"
        assert not (root / "dovecot-keywords.lock").exists()
        assert replica.add_keywords("INBOX", ["Home"]) == mapping

    def test_keywords_of_a_fresh_folder(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        replica.create_folder("Work")
        assert replica.add_keywords("Work", ["$Label1"]) == {"a": "$Label1"}
        assert (root / ".Work" / "dovecot-keywords").read_text() == "0 $Label1\n"

    # -- symbolic links ------------------------------------------------------------------
    @pytest.mark.parametrize("link", [".Evil", ".Evil/cur"])
    def test_nothing_acts_through_a_symbolic_link(self, opener: Opener, root: Path,
                                                  link: str) -> None:
        """A folder, or its cur/, that is a link to a maildir folder outside the root: no
        operation lists, reads, writes, renames, deletes or removes anything through it."""
        outside = root.parent / "outside"
        secret = f"{MSG}:2,S"
        put(outside, f"cur/{secret}", b"not yours")
        for sub in ("new", "tmp"):
            (outside / sub).mkdir()
        (outside / "maildirfolder").write_text("")
        (outside / "dovecot-keywords").write_text("0 secret\n")
        opener(root)  # creates the maildir
        if link == ".Evil":
            (root / ".Evil").symlink_to(outside)
        else:
            for sub in ("new", "tmp"):
                (root / ".Evil" / sub).mkdir(parents=True)
            (root / ".Evil" / "cur").symlink_to(outside / "cur")
        replica = opener(root)
        before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
        inside = Ref("Evil", f"cur/{secret}")
        with pytest.raises((ValueError, ReplicaError)):
            replica.list(["Evil"])
        with pytest.raises(ValueError):
            replica.keywords("Evil")
        with pytest.raises(ValueError):
            replica.add_keywords("Evil", ["$Label1"])
        assert not isinstance(replica.read([inside])[0], Message)
        assert replica.sizes([inside]) == [None]
        assert not replica.deliver([Delivery(Ref("Evil", "cur/2.M2P2.host:2,S"), b"x")])[0].ok
        assert not replica.rename([Rename(inside, Ref("INBOX", f"cur/{secret}"))])[0].ok
        assert not replica.delete([inside])[0].ok
        assert replica.remove_folder("Evil") is False
        assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before
        assert sorted(os.listdir(outside)) == ["cur", "dovecot-keywords", "maildirfolder", "new",
                                               "tmp"]
        assert os.listdir(root / "cur") == []

    # -- tombstones -----------------------------------------------------------------------
    def test_tombstones_are_remembered_across_opens(self, opener: Opener, root: Path) -> None:
        replica = opener(root)
        assert replica.tombstones(["k1"]) == {}
        replica.add_tombstones([("k1", Entry("INBOX", "cur", frozenset({"S"})))])
        replica.add_tombstones([("k2", Entry("Work", "new"))])
        again = opener(root)
        assert again.tombstones(["k1", "k2", "k3"]) == {
            "k1": Entry("INBOX", "cur", frozenset({"S"})), "k2": Entry("Work", "new")}
        opener(root, readonly=True).add_tombstones([("k3", Entry("INBOX", "new"))])
        assert again.tombstones(["k3"]) == {}

    # -- other separators -----------------------------------------------------------------
    def test_separator_is_kept(self, opener: Opener, root: Path) -> None:
        replica = opener(root, layout=MAILDIRPP, sep="!")
        assert replica.sep == "!"
        put(root, f"cur/{MSG}!2,S")
        assert replica.list(["INBOX"]) == {"INBOX": [f"cur/{MSG}!2,S"]}
