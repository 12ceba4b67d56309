"""Whole syncs between a local maildir and one reached over SFTP through a real sshd.

A few thousand messages both ways, edits on both sides, then a quiet run; a dropped connection
mid-copy leaves no partial file and the next run converges. Trees are checked by reading the
files straight from disk (the SFTP side is on this machine too).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from mailmirror.errors import ReplicaError
from mailmirror.maildir.folders import create_folder, folder_dir
from mailmirror.replica.local import open_local
from mailmirror.replica.sftp import SftpReplica, open_sftp
from mailmirror.store import open_store
from mailmirror.sync.engine import SyncOptions, sync
from mailmirror.sync.state import SyncState
from mailmirror.transport.loop import LoopThread
from tests.conftest import missing
from tests.ssh.sshrig import SshRig, sftp_client
from tests.test_engine import backdate, snapshot

FOLDERS = ["INBOX", "Work", "Lists/Deb"]


@pytest.fixture
def link(ssh_rig: SshRig) -> Iterator[tuple[LoopThread, asyncssh.SFTPClient]]:
    with sftp_client(ssh_rig) as pair:
        yield pair


def fill(root: Path, count: int, tag: str) -> None:
    """`count` messages spread over FOLDERS, a third in new/, the rest in cur/ with flags."""
    for folder in FOLDERS:
        create_folder(root, folder)
    for i in range(count):
        body = f"Subject: {tag} {i}\n\n{'x' * (i % 500)}\n".encode()
        unique = f"17000{i:05d}.M{i}P7.{tag},S={len(body)}"
        base = folder_dir(root, FOLDERS[(i // 3) % len(FOLDERS)])
        name = f"new/{unique}" if i % 3 == 0 else f"cur/{unique}:2,{'S' if i % 2 else 'FS'}"
        (base / name).write_bytes(body)


def converge(a: Path, b: Path, replica_b: SftpReplica, state: SyncState) -> dict:
    report = sync(open_local(a), replica_b, state, SyncOptions())
    assert not report.skipped, report.skipped[:5]
    assert snapshot(a) == snapshot(b)
    return dict(report.counts)


def test_thousands_of_messages_both_ways_then_edits(
        link: tuple[LoopThread, asyncssh.SFTPClient], tmp_path: Path) -> None:
    loop, sftp = link
    a, b = tmp_path / "local", tmp_path / "remote"
    fill(a, 2400, "laptop")
    fill(b, 600, "server")
    remote = open_sftp(sftp, loop.loop, str(b))
    state = SyncState(open_store(tmp_path / "state.db"))
    started = time.monotonic()
    counts = converge(a, b, remote, state)
    first = time.monotonic() - started
    assert counts["copy a->b"] == 2400 and counts["copy b->a"] == 600
    assert len(snapshot(b)) == 3000
    assert first < 30, f"first sync took {first:.1f} s"
    backdate(a)
    backdate(b)
    # edits on both sides: flags, new -> cur, a move, deletions
    for name in sorted(os.listdir(b / "new"))[:50]:
        os.rename(b / "new" / name, b / "cur" / f"{name}:2,S")
    for name in sorted(os.listdir(a / "cur"))[:50]:
        os.rename(a / "cur" / name, a / ".Work" / "cur" / name)
    for name in sorted(os.listdir(b / ".Work" / "cur"))[-30:]:
        os.unlink(b / ".Work" / "cur" / name)
    counts = converge(a, b, remote, state)
    assert counts == {"move a": 50, "move b": 50, "delete a": 30}
    backdate(a)
    backdate(b)
    assert converge(a, b, remote, state) == {}


class _KillingSftpReplica(SftpReplica):
    """Kills the remote sftp-server after `after` deliveries have started: a dropped link."""

    def __init__(self, *args: object, after: int, server_pid: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.after = after
        self.server_pid = server_pid

    async def _deliver_one(self, item):  # type: ignore[no-untyped-def]
        self.after -= 1
        if self.after == 0:
            os.kill(self.server_pid, signal.SIGKILL)
        return await super()._deliver_one(item)


def test_dropped_connection_leaves_no_partial_file(ssh_rig: SshRig, tmp_path: Path) -> None:
    a, b = tmp_path / "local", tmp_path / "remote"
    fill(a, 300, "laptop")
    state = SyncState(open_store(tmp_path / "state.db"))
    with sftp_client(ssh_rig) as (loop, sftp):
        [server_pid] = ssh_rig.servers["a"].descendants("sftp-server")
        remote = _KillingSftpReplica(sftp, loop.loop, str(b), after=150, server_pid=server_pid)
        create_folder(b, "INBOX")
        with pytest.raises(ReplicaError, match="lost|closed"):
            sync(open_local(a), remote, state, SyncOptions(batch_count=200))
    for name, data in ((k, v[3]) for k, v in snapshot(b).items()):
        assert data == snapshot(a)[name][3]  # every published file is complete
    with sftp_client(ssh_rig) as (loop, sftp):
        converge(a, b, open_sftp(sftp, loop.loop, str(b)), state)


def test_a_lost_session_is_a_replica_error(ssh_rig: SshRig, tmp_path: Path) -> None:
    with sftp_client(ssh_rig) as (loop, sftp):
        remote = open_sftp(sftp, loop.loop, str(tmp_path / "remote"))
        [server_pid] = ssh_rig.servers["a"].descendants("sftp-server")
        os.kill(server_pid, signal.SIGKILL)
        for call in (remote.stamps, lambda: remote.list(["INBOX"]), lambda: remote.id):
            with pytest.raises(ReplicaError, match="connection lost"):
                call()


def test_a_symlinked_cur_on_the_sftp_side_stops_the_run(
        link: tuple[LoopThread, asyncssh.SFTPClient], tmp_path: Path) -> None:
    """sftp-server follows links: a cur/ that became one (leading outside the maildir) must
    stop the run, not be listed (its mail would be copied in) nor read as emptied (the other
    side's mail would go to the quarantine)."""
    loop, sftp = link
    a, b, outside = tmp_path / "a", tmp_path / "b", tmp_path / "outside"
    fill(a, 6, "mine")
    (outside / "cur").mkdir(parents=True)
    (outside / "cur" / "1600000000.M1P1.secret:2,S").write_bytes(b"Subject: not yours\n\n")
    state = SyncState(open_store(tmp_path / "s.db"))
    converge(a, b, open_sftp(sftp, loop.loop, str(b)), state)
    work = folder_dir(b, "Work") / "cur"
    for name in os.listdir(work):
        os.unlink(work / name)
    work.rmdir()
    work.symlink_to(outside / "cur")
    before = snapshot(a)
    with pytest.raises(ReplicaError, match="symbolic link"):
        sync(open_local(a), open_sftp(sftp, loop.loop, str(b)), state, SyncOptions())
    assert snapshot(a) == before
    assert os.listdir(outside / "cur") == ["1600000000.M1P1.secret:2,S"]


def test_a_full_disk_behind_sftp_says_what_failure_likely_means(
        link: tuple[LoopThread, asyncssh.SFTPClient], tmp_path: Path) -> None:
    """sftp-server answers ENOSPC with a bare "Failure": each skipped copy says what that
    most often is; nothing partial is published, and the next run, with room, copies the
    rest."""
    import subprocess

    if os.geteuid() != 0:
        missing("root (to mount a small tmpfs)")
    loop, sftp = link
    a, small = tmp_path / "local", tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        create_folder(a, "INBOX")
        for i in range(30):  # 1.8 MB for a 1 MiB disk
            (a / "cur" / f"17000{i:05d}.M{i}P7.big:2,S").write_bytes(b"x" * 60_000)
        b = small / "b"
        state = SyncState(open_store(tmp_path / "state.db"))
        report = sync(open_local(a), open_sftp(sftp, loop.loop, str(b)), state, SyncOptions())
        assert report.skipped and all("a full disk or a quota there" in line
                                      for line in report.skipped), report.skipped[:3]
        published = snapshot(b)
        assert all(v[3] == b"x" * 60_000 for v in published.values())
        subprocess.run(["mount", "-o", "remount,size=8m", str(small)], check=True)
        converge(a, b, open_sftp(sftp, loop.loop, str(b)), state)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)
