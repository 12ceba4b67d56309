"""I/O faults: the destination disk full, a source message that cannot be read, a folder that
cannot be written, and a flush (syncfs or directory fsync) that fails. Each is reported (exit 1,
one skipped line per item), nothing half-written is published, nothing is deleted because of
it, the rest of the run proceeds, and the next run without the fault converges.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailmirror.replica.local import LocalReplica, open_local
from mailmirror.store import open_store
from mailmirror.sync.engine import SyncOptions, sync
from mailmirror.sync.state import SyncState
from tests.conftest import missing
from tests.e2e.conftest import Cli, User
from tests.e2e.sshkit import deliver, maildir, make_cli, messages, partial_files, view


def _tmp_files(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("tmp/*")]


def _tree(root: Path) -> dict[str, list[tuple[str, str, str, bytes]]]:
    return {k: sorted((s.folder, s.subdir, s.flags, s.content) for s in v)
            for k, v in messages(root).items()}


# ---------------------------------------------------------------------------------------------
# the destination disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, grown with remount() once the test wants room again."""
    if os.geteuid() != 0:
        missing("root (to mount a small tmpfs)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_skips_copies_and_publishes_nothing_partial(tmp_path: Path,
                                                              small_disk: Path) -> None:
    a, b = maildir(tmp_path / "a", "Work"), small_disk / "b"
    for i in range(40):  # 2.4 MB for a 1 MiB disk
        deliver(a, f"1700000000.M{i}P1.big", ("INBOX", "Work")[i % 2], "cur", "S", 60_000)
    before = _tree(a)
    cli = make_cli(tmp_path)
    state = str(tmp_path / "state.db")

    run = cli.run("sync", str(a), str(b), "--state", state, "--json")
    assert run.rc == 1, (run.rc, run.stderr)
    skipped = run.json["skipped"]
    assert skipped and all("no space left" in line for line in skipped), skipped
    assert 0 < run.counts["copy a->b"] < 40 and len(skipped) + run.counts["copy a->b"] == 40
    assert partial_files(b) == [] and _tmp_files(b) == []
    assert _tree(a) == before, "the source changed because the target was full"

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    again = cli.run("sync", str(a), str(b), "--state", state, "--json")
    assert again.rc == 0, again.stderr
    assert again.counts == {"copy a->b": len(skipped)}
    assert view(a) == view(b) and _tree(a) == before


# ---------------------------------------------------------------------------------------------
# an unreadable message and an unwritable folder (as the unprivileged user: modes apply)


def test_unreadable_message_and_unwritable_folder_are_skipped(cli: Cli, scratch: Path,
                                                              user: User) -> None:
    a, b = maildir(scratch / "A", "Work"), maildir(scratch / "B")
    for i in range(3):
        deliver(a, f"1700000000.M{i}P1.old", "INBOX", "cur", "S")
        deliver(a, f"1700000001.M{i}P1.work", "Work", "cur", "S")
    user.own(a, b)
    state = str(scratch / "state.db")
    first = cli.run("sync", str(a), str(b), "--state", state, "--json")
    assert first.rc == 0, first.stderr

    deliver(a, "1800000000.M1P1.readable", "INBOX", "new")
    os.chmod(deliver(a, "1800000000.M2P1.secret", "INBOX", "new"), 0o000)
    deliver(a, "1800000000.M3P1.forwork", "Work", "new")
    deliver(b, "1800000001.M1P1.fromb", "INBOX", "new")
    old = next((b / "cur").glob("1700000000.M0P1.old*"))
    os.rename(old, old.with_name("1700000000.M0P1.old:2,FS"))
    user.own(a, b)
    work = b / ".Work"
    for sub in ("cur", "new", "tmp"):
        os.chmod(work / sub, 0o500)
    try:
        run = cli.run("sync", str(a), str(b), "--state", state, "--json")
        assert run.rc == 1, (run.rc, run.stderr)
        skipped = run.json["skipped"]
        assert len(skipped) == 2, skipped
        assert any("1800000000.M2P1.secret" in s for s in skipped), skipped
        assert any("1800000000.M3P1.forwork" in s for s in skipped), skipped
        # the rest of the run went through
        assert run.counts == {"copy a->b": 1, "copy b->a": 1, "move a": 1}, run.counts
        assert {"1800000000.M2P1.secret", "1800000000.M3P1.forwork"} <= set(messages(a))
        assert not {"1800000000.M2P1.secret", "1800000000.M3P1.forwork"} & set(messages(b))
        assert _tmp_files(a) == [] and _tmp_files(b) == []
    finally:
        for sub in ("cur", "new", "tmp"):
            os.chmod(work / sub, 0o700)
    os.chmod(next((a / "new").glob("1800000000.M2P1.secret")), 0o600)

    again = cli.run("sync", str(a), str(b), "--state", state, "--json")
    assert again.rc == 0, again.stderr
    assert again.counts == {"copy a->b": 2}, again.counts
    assert _tree(a) == _tree(b) and len(view(a)) == 10


# ---------------------------------------------------------------------------------------------
# a flush that fails


class FlushFails(LocalReplica):
    """A replica whose disk reports an I/O error at the batch barrier (syncfs)."""

    def _flush(self) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(self.root))


class DirSyncFails(LocalReplica):
    """A replica whose directory fsync fails after a rename already happened."""

    def _fsync_dir(self, path: str) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)


def _pair(tmp_path: Path) -> tuple[Path, Path, SyncState]:
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    deliver(a, "1700000000.M1P1.synced", "INBOX", "cur", "S")
    state = SyncState(open_store(tmp_path / "s.db"))
    assert sync(open_local(a), open_local(b), state, SyncOptions()).counts == {"copy a->b": 1}
    for i in range(5):
        deliver(a, f"1800000000.M{i}P1.new", "INBOX", "new", size=1000)
    old = next((a / "cur").glob("1700000000.M1P1.synced*"))
    os.rename(old, old.with_name("1700000000.M1P1.synced:2,RS"))
    return a, b, state


def test_failed_syncfs_publishes_nothing_and_the_renames_proceed(tmp_path: Path) -> None:
    a, b, state = _pair(tmp_path)
    report = sync(open_local(a), FlushFails(b), state, SyncOptions())
    assert len(report.skipped) == 5 and all("flushing" in s for s in report.skipped)
    assert report.counts == {"move b": 1}
    assert set(messages(b)) == {"1700000000.M1P1.synced"} and _tmp_files(b) == []
    assert messages(b)["1700000000.M1P1.synced"][0].flags == "RS"
    again = sync(open_local(a), open_local(b), state, SyncOptions())
    assert not again.skipped and again.counts == {"copy a->b": 5}
    assert _tree(a) == _tree(b)


def test_failed_directory_fsync_is_reported_and_never_duplicates(tmp_path: Path) -> None:
    a, b, state = _pair(tmp_path)
    report = sync(open_local(a), DirSyncFails(b), state, SyncOptions())
    assert len(report.skipped) == 6 and all("fsync" in s for s in report.skipped)
    assert partial_files(b) == [] and _tmp_files(b) == []
    again = sync(open_local(a), open_local(b), state, SyncOptions())
    assert not again.skipped and not again.counts, again.counts  # published: merged, no copy
    assert _tree(a) == _tree(b) and len(view(b)) == 6


def test_a_full_disk_under_the_state_store_is_called_full(tmp_path: Path,
                                                           small_disk: Path) -> None:
    """SQLite reports it as an I/O error (the WAL's -shm file cannot be sized): the line
    must still say the disk is full and the database is fine, not 'check the disk'."""
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    deliver(a, "1700000000.M1P1.one", "INBOX", "cur", "S")
    cli = make_cli(tmp_path)
    state = str(small_disk / "state.db")
    assert cli.run("sync", str(a), str(b), "--state", state).rc == 0
    with open(small_disk / "fill", "wb") as fill:
        with contextlib.suppress(OSError):
            while True:
                fill.write(b"\0" * 65536)
    deliver(a, "1800000000.M2P1.two", "INBOX", "new")
    line = cli.run("sync", str(a), str(b), "--state", state).assert_clean_error(3)
    assert "the disk is full" in line and "the database itself is fine" in line, line
