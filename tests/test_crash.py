"""A sync killed with SIGKILL while copying leaves nothing partial, and the next run converges
with no duplicate; a replica that suddenly lists no mail stops the run with nothing deleted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailmirror.errors import SafetyStop
from mailmirror.maildir.folders import create_folder, folder_dir
from mailmirror.maildir.names import parse_name
from mailmirror.replica.local import open_local
from mailmirror.store import open_store
from mailmirror.sync import engine
from mailmirror.sync.engine import SyncOptions, sync
from mailmirror.sync.state import SyncState

FOLDERS = ["INBOX", "Work", "Archive/2025"]


def make_tree(root: Path, count: int, size: int) -> dict[str, bytes]:
    rng = random.Random(7)
    contents = {}
    for folder in FOLDERS:
        create_folder(root, folder)
    for n in range(count):
        body = (f"Subject: {n}\n\n".encode() + os.urandom(8).hex().encode()) * (size // 24)
        key = f"1700000000.M{n}P1.crash,S={len(body)}"
        folder = FOLDERS[n % len(FOLDERS)]
        (folder_dir(root, folder) / "cur" / f"{key}:2,{rng.choice(['S', 'RS', 'FS'])}") \
            .write_bytes(body)
        contents[key] = body
    return contents


def published(root: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for folder in FOLDERS:
        for sub in ("cur", "new"):
            d = folder_dir(root, folder) / sub
            if not d.is_dir():
                continue
            for name in os.listdir(d):
                key = parse_name(name).key
                assert key not in out, f"duplicate {key} in {root}"
                out[key] = (d / name).read_bytes()
    return out


def run_cli(a: Path, b: Path, state: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mailmirror", "sync", str(a), str(b), "--state", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def count_published(root: Path) -> int:
    total = 0
    for folder in FOLDERS:
        for sub in ("cur", "new"):
            try:
                total += len(os.listdir(folder_dir(root, folder) / sub))
            except FileNotFoundError:
                continue
    return total


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.9])
def test_sigkill_during_copy_leaves_nothing_partial(tmp_path, share):
    """SIGKILL once `share` of the messages are in B (0.0: as soon as B exists): points in
    the copy, not in time, so a faster copy still gets killed in the middle."""
    a, b, state = tmp_path / "a", tmp_path / "b", tmp_path / "state.db"
    contents = make_tree(a, 3000, 30_000)
    proc = run_cli(a, b, state)
    while proc.poll() is None and not (b.exists() and count_published(b) >= share * 3000):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = published(b) if b.exists() else {}
    for key, data in partial.items():
        assert data == contents[key], f"{key} was published half-written"
    assert len(partial) < len(contents), "the kill came too late to test anything"
    done = run_cli(a, b, state)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err.decode()
    assert published(b) == contents == published(a)
    for folder in FOLDERS:
        leftovers = os.listdir(folder_dir(b, folder) / "tmp")
        assert leftovers == [], f"temp files left in {folder}/tmp: {leftovers[:3]}"


def test_replica_that_suddenly_lists_nothing_stops_the_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, 30, 100)
    state = SyncState(open_store(tmp_path / "s.db"))
    sync(open_local(a), open_local(b), state, SyncOptions())
    for folder in FOLDERS:
        for name in os.listdir(folder_dir(b, folder) / "cur"):
            os.unlink(folder_dir(b, folder) / "cur" / name)
    with pytest.raises(SafetyStop, match="looks empty"):
        sync(open_local(a), open_local(b), state, SyncOptions())
    assert len(published(a)) == 30
    with pytest.raises(SafetyStop, match="would delete 30 of the 30"):  # S10 still applies
        sync(open_local(a), open_local(b), state, SyncOptions(allow_empty=True))
    report = sync(open_local(a), open_local(b), state,
                  SyncOptions(allow_empty=True, allow_mass_delete=True))
    assert report.counts == {"delete a": 30}


def test_a_folder_half_made_by_a_killed_run_is_completed(tmp_path):
    """Found by the SIGKILL test in CI: a run killed inside create_folder left .X/cur without
    tmp/, and every later delivery into it failed. Folders are now staged and renamed into
    place, and deliveries complete a folder that lacks a subdirectory."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, 6, 100)
    create_folder(b, "INBOX")
    (b / ".Work" / "cur").mkdir(parents=True)
    state = SyncState(open_store(tmp_path / "s.db"))
    report = sync(open_local(a), open_local(b), state, SyncOptions())
    assert not report.skipped, report.skipped
    assert published(b) == published(a)
    assert all((b / ".Work" / sub).is_dir() for sub in ("cur", "new", "tmp"))


def test_a_failure_in_one_slice_does_not_spoil_the_next(tmp_path, monkeypatch):
    """Decision indices restart with every slice of the plan, so must the failed ones: a copy
    that failed in slice 1 once kept the copy at the same index of slice 2 from being
    recorded in the base."""
    monkeypatch.setattr(engine, "PLAN_SLICE", 2)
    a, b = tmp_path / "a", tmp_path / "b"
    create_folder(a, "INBOX")
    os.mkfifo(a / "cur" / "1.M0P1.x:2,S")  # sorts first and cannot be read: fails
    for n in range(1, 4):
        (a / "cur" / f"1.M{n}P1.x:2,S").write_bytes(b"m%d" % n)
    state = SyncState(open_store(tmp_path / "s.db"))
    report = sync(open_local(a), open_local(b), state, SyncOptions())
    assert len(report.skipped) == 1 and report.counts["copy a->b"] == 3
    pair_id = state.conn.execute("SELECT pair_id FROM sync_pair").fetchone()[0]
    recorded = {key for key, _ in state.base_for(pair_id, [f"1.M{n}P1.x" for n in range(4)])}
    assert recorded == {"1.M1P1.x", "1.M2P1.x", "1.M3P1.x"}


def test_a_killed_runs_temp_file_does_not_keep_a_deleted_folder(tmp_path):
    """Found by the chaos review: a run killed between writing a copy into .Work/tmp and
    publishing it left the temp file; once .Work was deleted on the other side, no later
    run could remove it here (tmp/ was not empty). Our own stale temp files go; another
    program's, or a live run's, stay, and so does the folder."""
    b = tmp_path / "b"
    create_folder(b, "INBOX")
    create_folder(b, "Work")
    replica = open_local(b)
    dead = subprocess.Popen(["true"])
    dead.wait()
    ours = f"1700000000.M1P{dead.pid}.{replica._host}.mmtmp"
    live = f"1700000000.M2P{os.getpid()}.{replica._host}.mmtmp"
    (b / ".Work" / "tmp" / live).write_bytes(b"x")
    (b / ".Work" / "tmp" / ours).write_bytes(b"x")
    assert not replica.remove_folder("Work")  # a live run's file stays, and the folder
    assert sorted(os.listdir(b / ".Work" / "tmp")) == [live]
    (b / ".Work" / "tmp" / live).unlink()
    (b / ".Work" / "tmp" / ours).write_bytes(b"x")
    assert replica.remove_folder("Work") and not (b / ".Work").exists()
