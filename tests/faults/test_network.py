"""Network faults between the client and a real sshd, made by a TCP relay (proxy.py): the
connection cut in the middle of a listing (a partial listing must never produce a deletion),
cut in the middle of a 10 MB message (no partial file on either side, the next run converges),
and stalled (keepalives end the run in bounded time with exit 3, no hang). Over the agent and
over SFTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.sshkit import (
    AGENT_COMMAND,
    Mm,
    deliver,
    fast_dir,
    maildir,
    make_cli,
    messages,
    partial_files,
    ssh_args,
    view,
)
from tests.faults.proxy import DOWN, UP, Proxy, route_through
from tests.ssh.sshrig import ALIAS, SshRig

TRANSPORTS = ("agent", "sftp")
BIG = 10 << 20
FOLDERS = ("Lists", "Work")


@pytest.fixture
def shm() -> Iterator[Path]:
    with fast_dir() as path:
        yield path


@pytest.fixture
def proxy(ssh_rig: SshRig) -> Iterator[Proxy]:
    with Proxy(ssh_rig.servers["a"].port) as relay:
        yield relay


def _mm(tmp_path: Path, rig: SshRig) -> Mm:
    return Mm(make_cli(tmp_path), rig, tmp_path / "state.db")


def _args(rig: SshRig, proxy: Proxy, base: Path, transport: str) -> list[str]:
    config, known = route_through(rig, proxy, rig.servers["a"], base)
    extra = ["--sftp"] if transport == "sftp" else []
    return ssh_args(rig, config=config, known_hosts=known) + extra


def _tree(root: Path) -> dict[str, list[tuple[str, str, str]]]:
    return {k: sorted((s.folder, s.subdir, s.flags) for s in v)
            for k, v in messages(root).items()}


def _tmp_files(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("tmp/*")]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cut_mid_listing_deletes_nothing(tmp_path: Path, shm: Path, ssh_rig: SshRig,
                                         proxy: Proxy, transport: str) -> None:
    laptop, server = maildir(shm / "laptop", *FOLDERS), maildir(shm / "server", *FOLDERS)
    for i in range(6000):  # three folders: a cut in the second leaves the others whole
        for root in (laptop, server):
            deliver(root, f"17{i:08d}.M{i}P7.same-name-padded-to-look-like-real-mail",
                    ("INBOX", *FOLDERS)[i % 3], "cur", "S")
    mm = _mm(tmp_path, ssh_rig)
    args = _args(ssh_rig, proxy, tmp_path, transport)
    address = f"ssh://{ALIAS}{server}"
    assert mm.sync(laptop, address, ssh=args).counts == {}
    before = proxy.bytes[DOWN]
    assert mm.sync(laptop, address, "--full", ssh=args).counts == {}
    listing_run = proxy.bytes[DOWN] - before
    trees = (_tree(laptop), _tree(server))

    proxy.cut_after(DOWN, listing_run // 2)  # inside the listing of the second folder
    run = mm.sync(laptop, address, "--full", ssh=args, expect_rc=None)
    line = run.assert_clean_error(3)
    assert proxy.cuts == 1
    assert ALIAS in line and ("lost" in line or "closed" in line), line
    assert (_tree(laptop), _tree(server)) == trees, "a cut listing changed a tree"
    assert mm.sync(laptop, address, "--full", ssh=args).counts == {}
    assert (_tree(laptop), _tree(server)) == trees


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("direction", ["push", "pull"])
def test_cut_mid_transfer_of_a_10mb_message(tmp_path: Path, shm: Path, ssh_rig: SshRig,
                                            proxy: Proxy, transport: str,
                                            direction: str) -> None:
    laptop, server = maildir(shm / "laptop"), maildir(shm / "server")
    deliver(laptop, "1700000000.M1P1.small", "INBOX", "cur", "S")
    mm = _mm(tmp_path, ssh_rig)
    args = _args(ssh_rig, proxy, tmp_path, transport)
    address = f"ssh://{ALIAS}{server}"
    assert mm.sync(laptop, address, ssh=args).counts == {"copy a->b": 1}
    source = laptop if direction == "push" else server
    deliver(source, "1700000001.M1P1.big", "INBOX", "new", size=BIG)

    proxy.cut_after(UP if direction == "push" else DOWN, BIG // 2)
    run = mm.sync(laptop, address, ssh=args, expect_rc=None)
    run.assert_clean_error(3)
    assert proxy.cuts == 1
    for root in (laptop, server):
        assert partial_files(root) == [], partial_files(root)
    target = server if direction == "push" else laptop
    assert "1700000001.M1P1.big" not in messages(target)

    again = mm.sync(laptop, address, ssh=args)
    assert again.counts == {f"copy {'a->b' if direction == 'push' else 'b->a'}": 1}
    assert view(laptop) == view(server)
    assert partial_files(laptop) == partial_files(server) == []
    if transport == "agent":  # the agent writes nothing before the whole frame arrived
        assert _tmp_files(laptop) == _tmp_files(server) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stalled_connection_ends_the_run_in_bounded_time(tmp_path: Path, shm: Path,
                                                         ssh_rig: SshRig, proxy: Proxy,
                                                         transport: str) -> None:
    """The profile's `timeout` is also the SSH keepalive interval: three unanswered
    keepalives end the run (exit 3) instead of hanging on a dead link."""
    laptop, server = maildir(shm / "laptop"), maildir(shm / "server")
    deliver(server, "1700000001.M1P1.big", "INBOX", "new", size=BIG)
    config, known = route_through(ssh_rig, proxy, ssh_rig.servers["a"], tmp_path)
    profiles = tmp_path / "config.toml"
    profiles.write_text(
        f'[profile.p]\nlocal = "{laptop}"\nremotes = ["{ALIAS}:{server}"]\n'
        f'ssh_config = "{config}"\nknown_hosts = "{known}"\n'
        f'identity = "{ssh_rig.user_key}"\ntimeout = 1\n'
        + (f'remote_command = "{AGENT_COMMAND}"\n' if transport == "agent" else ""))
    mm = _mm(tmp_path, ssh_rig)
    extra = ["--sftp"] if transport == "sftp" else []
    proxy.cut_after(DOWN, 1 << 40)  # only to count; the stall starts below
    before = proxy.bytes[DOWN]

    def stall_mid_transfer() -> None:
        deadline = time.monotonic() + 20
        while proxy.bytes[DOWN] - before < BIG // 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        proxy.stall()

    watcher = threading.Thread(target=stall_mid_transfer)
    watcher.start()
    started = time.monotonic()
    run = mm.cli.run("sync", "p", "--config", str(profiles), "--state", str(mm.state), *extra)
    took = time.monotonic() - started
    watcher.join()
    line = run.assert_clean_error(3)
    assert ALIAS in line, line
    assert took < 15, f"a stalled connection held the run for {took:.1f} s with timeout = 1"
    assert partial_files(laptop) == [] and "1700000001.M1P1.big" not in messages(laptop)
