"""--keep-connection through a real sshd: the next sync goes through the keeper (no new login),
and everything that can go wrong with a keeper (killed, timed out, its connection dropped, the
ssh_config edited, an unsafe socket directory) costs speed only, never a sync or a message.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailmirror.replica.remote import AgentReplica
from mailmirror.transport.address import Remote
from mailmirror.transport.keeper import Keeper, _locked
from mailmirror.transport.kept import open_kept, socket_path
from mailmirror.transport.options import SshOptions
from mailmirror.transport.protocol import encode_frame
from mailmirror.transport.ssh import SshSession, _ciphers
from tests.e2e.conftest import MAILMIRROR, Run
from tests.e2e.sshkit import (
    AGENT_COMMAND,
    current_user,
    deliver,
    home_server,
    maildir,
    make_cli,
    messages,
    partial_files,
    ssh_args,
    view,
)
from tests.ssh.sshrig import Sshd, SshRig
from tests.ssh.test_ssh_faults import fill

WAIT = 15.0


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """XDG_RUNTIME_DIR of the test's syncs (short: it holds Unix sockets); every keeper
    started there is killed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="mmrun-"))
    yield path
    for pid in keeper_pids(path):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def keeper_pids(run_dir: Path) -> list[int]:
    pids = []
    for lock in (run_dir / "mailmirror").glob("*.lock"):
        try:
            text = lock.read_text().strip()
        except FileNotFoundError:  # its keeper left meanwhile
            continue
        if text and Path(f"/proc/{text}").exists():
            pids.append(int(text))
    return pids


def sync(tmp_path: Path, rig: SshRig, run_dir: Path, a: Path, b: str, *extra: str,
         keep: str | None = "30", env: dict[str, str] | None = None) -> Run:
    """A sync with --keep-connection `keep` (None: the default, auto)."""
    cli = make_cli(tmp_path)
    run = cli.run("sync", str(a), b, "--state", str(tmp_path / "state.db"), "--json",
                  *ssh_args(rig), *(["--keep-connection", keep] if keep else []), *extra,
                  env={"XDG_RUNTIME_DIR": str(run_dir)} | (env or {}))
    assert run.rc == 0, (run.rc, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    return run


def logins(server: Sshd) -> int:
    return server.log_text().count("Accepted publickey")


def wait_for(what: str, check: object) -> None:
    deadline = time.monotonic() + WAIT
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} after {WAIT:g} s"
        time.sleep(0.05)


def settled(read: Callable[[], int], quiet: float = 0.5) -> int:
    """read()'s value once it stayed the same for `quiet` seconds."""
    deadline, value = time.monotonic() + WAIT, read()
    while True:
        time.sleep(quiet)
        now = read()
        if now == value:
            return value
        assert time.monotonic() < deadline, f"still changing after {WAIT:g} s"
        value = now


def answering(run_dir: Path) -> bool:
    """A keeper listens, and its agents had time to start."""
    for path in (run_dir / "mailmirror").glob("*.sock"):
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(str(path))
            except OSError:
                continue
            return True
    return False


@pytest.fixture
def world(ssh_rig: SshRig, tmp_path: Path) -> dict[str, Path]:
    server = home_server(ssh_rig, "a", tmp_path / "serverA")
    ssh_rig.point(server)
    return {"local": maildir(tmp_path / "laptop"), "A": maildir(tmp_path / "serverA" / "Maildir")}


def test_the_next_syncs_go_through_the_kept_connection(ssh_rig: SshRig, run_dir: Path,
                                                       world: dict[str, Path],
                                                       tmp_path: Path) -> None:
    local, remote = world["local"], world["A"]
    server = ssh_rig.servers["a"]
    deliver(local, "1700000000.M1P1.laptop")
    deliver(remote, "1700000001.M1P1.server", subdir="cur", flags="S")
    first = sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir")
    assert first.json["counts"] == {"copy a->b": 1, "copy b->a": 1}, first.json
    wait_for("keeper", lambda: logins(server) == 2 and answering(run_dir))  # the run's, its own

    deliver(local, "1700000002.M2P1.laptop")
    deliver(remote, "1700000003.M2P1.server")
    (remote / "cur" / "1700000001.M1P1.server:2,S").rename(
        remote / "cur" / "1700000001.M1P1.server:2,FS")
    second = sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir")
    assert second.json["counts"] == {"copy a->b": 1, "copy b->a": 1, "move a": 1}, second.json
    third = sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir")
    assert third.json["counts"] == {}, third.json
    assert logins(server) == 2, "a sync logged in although a keeper was there"
    assert view(local) == view(remote) and len(view(local)) == 4


def test_by_default_only_a_pair_synced_often_keeps_its_connection(
        ssh_rig: SshRig, run_dir: Path, world: dict[str, Path], tmp_path: Path) -> None:
    """auto: a sync of a pair not synced in the last 16 minutes (the first, or a daily one)
    leaves nothing behind; the next one, minutes later (cron), keeps the connection, and the
    one after goes through it."""
    local, remote = world["local"], world["A"]
    server = ssh_rig.servers["a"]
    deliver(local, "1700000000.M1P1.laptop")
    sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir", keep=None)
    time.sleep(0.5)  # a keeper is started before the sync's process ends
    assert keeper_pids(run_dir) == [] and not answering(run_dir)

    deliver(remote, "1700000001.M1P1.server")
    second = sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir", keep=None)
    assert second.json["counts"] == {"copy b->a": 1}, second.json
    wait_for("keeper", lambda: answering(run_dir) and logins(server) == 3)
    third = sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir", keep=None)
    assert third.json["counts"] == {}, third.json
    assert logins(server) == 3, "the third sync logged in although a keeper was there"


def test_by_default_a_systemd_service_or_a_long_pause_keeps_nothing(
        ssh_rig: SshRig, run_dir: Path, world: dict[str, Path], tmp_path: Path) -> None:
    """systemd ends whatever a oneshot service leaves (INVOCATION_ID marks one); a pair last
    synced more than 16 minutes ago is not synced often."""
    import sqlite3

    local = world["local"]
    for _ in range(2):
        sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir", keep=None,
             env={"INVOCATION_ID": "0123456789abcdef"})
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("UPDATE sync_run SET started = started - 961")
    sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir", keep=None)
    time.sleep(0.5)
    assert keeper_pids(run_dir) == [] and not answering(run_dir)
    sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir", keep="0")
    time.sleep(0.5)
    assert keeper_pids(run_dir) == [] and not answering(run_dir)
    sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir", keep="auto")
    wait_for("keeper", lambda: answering(run_dir))


def test_after_a_suspend_the_keeper_serves_no_sync_and_leaves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A laptop's connection rarely survives a suspend, and a sync through it would wait for
    its timeout: the keeper refuses (the sync connects itself) and leaves."""
    from mailmirror.transport import keeper as keeper_module

    asleep = [0.0]
    monkeypatch.setattr(keeper_module, "_asleep", lambda: asleep[0])
    started: list[str] = []

    class Conn(_Conn):
        async def wait_closed(self) -> None:
            await asyncio.Event().wait()

        async def create_process(self, command: str, **_: object) -> None:
            started.append(command)
            raise OSError("no agent here")

    directory = Path(tempfile.mkdtemp(prefix="mmk-"))
    path = directory / "k.sock"

    async def scenario() -> None:
        keeper = Keeper(Conn(("127.0.0.1", 1)), path, 60, [], None)
        serving = asyncio.ensure_future(keeper.serve())
        while not path.exists():
            await asyncio.sleep(0.01)
        await asyncio.to_thread(open_kept, path, "agent", "Maildir", "mailhost", 5, 5)
        assert started == ["agent Maildir"]  # awake: served
        asleep[0] = 30.0
        assert await asyncio.to_thread(open_kept, path, "agent", "Maildir", "mailhost", 5,
                                       5) is None
        await asyncio.wait_for(serving, 10)

    try:
        asyncio.run(scenario())
        assert started == ["agent Maildir"] and not path.exists()
    finally:
        shutil.rmtree(directory)


def test_the_keeper_leaves_after_the_kept_seconds(ssh_rig: SshRig, run_dir: Path,
                                                 world: dict[str, Path], tmp_path: Path) -> None:
    deliver(world["local"], "1700000000.M1P1.laptop")
    sync(tmp_path, ssh_rig, run_dir, world["local"], "mailhost:Maildir", keep="1")
    wait_for("keeper", lambda: answering(run_dir))
    pids = keeper_pids(run_dir)
    assert len(pids) == 1
    wait_for("keeper gone", lambda: not Path(f"/proc/{pids[0]}").exists()
             or Path(f"/proc/{pids[0]}/stat").read_text().split()[2] == "Z")
    assert not list((run_dir / "mailmirror").glob("*.sock"))
    assert not list((run_dir / "mailmirror").glob("*.lock"))


def test_a_lock_is_held_by_one_keeper_and_removed_when_it_leaves(tmp_path: Path) -> None:
    lock = tmp_path / "k.lock"
    with _locked(lock) as first:
        assert first
        with _locked(lock) as second:
            assert not second
        assert lock.exists()  # the refused one leaves it alone
    assert not lock.exists()


def test_a_keeper_leaving_removes_only_its_own_lock_file(tmp_path: Path) -> None:
    """Its lock file was removed by hand and another keeper took the name: that one's file
    stays, or a third keeper could lock a new one while the second still serves."""
    lock = tmp_path / "k.lock"
    with _locked(lock) as first:
        assert first
        lock.unlink()
        second = _locked(lock)
        assert second.__enter__()
    assert lock.exists()
    with _locked(lock) as third:
        assert not third
    second.__exit__(None, None, None)
    assert not lock.exists()


def test_a_lock_file_unlinked_by_the_keeper_leaving_is_not_the_one_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper leaving unlinks its lock file between our open and our flock: we got the
    unlinked file, which no later keeper can see, so we take the one at the path."""
    lock = tmp_path / "k.lock"
    real = fcntl.flock
    calls = []

    def flock(fd: int, operation: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            lock.unlink()
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    with _locked(lock) as held:
        assert held and len(calls) == 2
        assert lock.exists()
        monkeypatch.setattr(fcntl, "flock", real)
        with _locked(lock) as other:
            assert not other


def test_a_killed_keeper_or_its_dropped_connection_costs_only_a_login(
        ssh_rig: SshRig, run_dir: Path, world: dict[str, Path], tmp_path: Path) -> None:
    local, remote = world["local"], world["A"]
    server = ssh_rig.servers["a"]
    sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir")
    wait_for("keeper", lambda: answering(run_dir) and logins(server) == 2)
    (killed,) = keeper_pids(run_dir)
    os.kill(killed, signal.SIGKILL)  # its socket stays behind, stale
    deliver(local, "1700000000.M1P1.laptop")
    run = sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir")
    assert run.json["counts"] == {"copy a->b": 1}, run.json
    assert logins(server) == 3  # connected itself
    wait_for("a new keeper", lambda: answering(run_dir) and keeper_pids(run_dir) != [killed])

    # the connection under the new keeper drops: the keeper goes, the next sync connects
    sessions = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                if _cmdline(pid).startswith(b"sshd:") and server._is_ancestor(pid)]
    assert sessions
    for pid in sessions:
        os.kill(pid, signal.SIGKILL)
    wait_for("keeper gone", lambda: not answering(run_dir))
    deliver(remote, "1700000001.M1P1.server")
    run = sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir")
    assert run.json["counts"] == {"copy b->a": 1}, run.json
    assert view(local) == view(remote) and len(view(local)) == 2


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_an_edited_ssh_config_is_never_served_by_the_old_keeper(
        ssh_rig: SshRig, run_dir: Path, world: dict[str, Path], tmp_path: Path) -> None:
    """DNS failover done in ssh_config: `mailhost` now leads to server B. The keeper still
    holds a connection to A; the sync must reach B, and say it met another replica."""
    local = world["local"]
    deliver(local, "1700000000.M1P1.laptop")
    sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir")
    wait_for("keeper", lambda: answering(run_dir))
    server_b = home_server(ssh_rig, "b", tmp_path / "serverB")
    remote_b = maildir(tmp_path / "serverB" / "Maildir")
    ssh_rig.point(server_b)
    run = sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir", "--accept-new-replica")
    assert logins(server_b) == 1
    assert run.json["counts"] == {"copy a->b": 1}, run.json
    assert set(view(remote_b)) == {"1700000000.M1P1.laptop"}


def test_a_socket_directory_open_to_others_is_refused(ssh_rig: SshRig, run_dir: Path,
                                                      world: dict[str, Path],
                                                      tmp_path: Path) -> None:
    (run_dir / "mailmirror").mkdir(mode=0o755)
    os.chmod(run_dir / "mailmirror", 0o755)
    deliver(world["local"], "1700000000.M1P1.laptop")
    run = sync(tmp_path, ssh_rig, run_dir, world["local"], "mailhost:Maildir")
    assert run.json["counts"] == {"copy a->b": 1}, run.json
    assert "--keep-connection:" in run.stderr and "closed to others" in run.stderr, run.stderr
    time.sleep(1)
    assert not list((run_dir / "mailmirror").iterdir())


class _Conn:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer

    def get_extra_info(self, name: str) -> object:
        return self.peer if name == "peername" else None


@pytest.mark.parametrize(("target", "same"), [(("127.0.0.1", 22), True),
                                               (("localhost", 22), True),
                                               (("127.0.0.2", 22), False)])
def test_the_keeper_resolves_the_host_name_again_for_each_sync(
        tmp_path: Path, target: tuple[str, int], same: bool) -> None:
    """A host name that now leads elsewhere (DNS failover) is not served by the old
    connection (through a proxy there is no address to compare: target None)."""
    keeper = Keeper(_Conn(("127.0.0.1", 40000)), tmp_path / "k.sock", 1, [], target)
    assert asyncio.run(keeper._still_there()) is same
    assert asyncio.run(Keeper(_Conn(("127.0.0.1", 1)), tmp_path / "k.sock", 1, [],
                              None)._still_there())


def test_only_the_same_user_is_served() -> None:
    from mailmirror.transport.keeper import _same_user

    a, b = socket.socketpair()
    with a, b:
        assert _same_user(a) is (os.getuid() == current_user().uid)


def test_a_sync_killed_in_the_middle_of_a_frame_does_not_pin_the_keeper(
        ssh_rig: SshRig, run_dir: Path, world: dict[str, Path], tmp_path: Path) -> None:
    """A killed sync (cron's timeout) leaves replies unread and half a request sent: the
    keeper must end that agent and still leave when its time is up, as an idle one does."""
    deliver(world["local"], "1700000000.M1P1.laptop")
    sync(tmp_path, ssh_rig, run_dir, world["local"], "mailhost:Maildir", keep="2")
    wait_for("keeper", lambda: answering(run_dir))
    (pid,) = keeper_pids(run_dir)
    (path,) = (run_dir / "mailmirror").glob("*.sock")
    channel = open_kept(path, AGENT_COMMAND, "Maildir", "mailhost", 10, 10)
    assert channel is not None
    AgentReplica(channel, "mailhost:Maildir")
    channel.sock.sendall(encode_frame({"id": 2, "op": "stamps"}))
    time.sleep(0.5)  # its reply now waits, unread, in this end's buffer
    channel.sock.sendall(encode_frame({"id": 3, "op": "stamps"})[:7])
    channel._reader.close()  # as the kernel closes a killed process's socket: with unread
    channel.sock.close()  # data, so the keeper's reads fail (ECONNRESET)
    wait_for("keeper gone", lambda: not Path(f"/proc/{pid}").exists()
             or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z")


def test_a_changed_included_ssh_config_file_renames_the_socket(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repointing an alias in a file that ssh_config includes is an edit like any other."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    config, hosts = tmp_path / "config", tmp_path / "hosts.d" / "mail.conf"
    hosts.parent.mkdir()
    config.write_text(f"Include {hosts.parent}/*.conf\n")
    hosts.write_text("Host mailhost\n  HostName 192.0.2.10\n")
    remote, options = Remote("mailhost", "Maildir"), SshOptions(config=config)
    before = socket_path(remote, options)
    assert socket_path(remote, options) == before
    hosts.write_text("Host mailhost\n  HostName 198.51.100.20\n")
    assert socket_path(remote, options) != before
    known = tmp_path / "kh"
    config.write_text(f"Include {hosts.parent}/*.conf\nUserKnownHostsFile {known}\n")
    named = socket_path(remote, options)
    known.write_text("mailhost ssh-ed25519 AAAA\n")
    assert socket_path(remote, options) != named


def test_ssh_config_in_the_home_decides_the_address_checked_and_the_ciphers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --ssh-config, ~/.ssh/config applies to the keeper's DNS check and to the
    cipher preference as it does to the connection itself."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        "Host mailhost\n  HostName 192.0.2.7\n  Port 2222\n  Ciphers aes128-ctr\n"
        "Host jumped\n  ProxyJump mailhost\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    session = SshSession.__new__(SshSession)  # the address only: nothing is connected
    session.options = SshOptions()
    for host, target in (("mailhost", ("192.0.2.7", 2222)), ("jumped", None)):
        session.remote, session.host = Remote(host, "Maildir"), host
        assert session.target() == target
    assert _ciphers("mailhost", {}) == {}  # the user's Ciphers stand


def test_the_keeper_killed_in_the_middle_of_a_sync_leaves_no_partial_file(
        ssh_rig: SshRig, run_dir: Path, world: dict[str, Path], tmp_path: Path) -> None:
    """The connection a sync goes through drops (its keeper killed) while mail is being
    published: one line, exit 3, no half-written file on either side, and the next sync (it
    connects itself) copies exactly what is missing."""
    local, remote = world["local"], world["A"]
    sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir")
    wait_for("keeper", lambda: answering(run_dir) and logins(ssh_rig.servers["a"]) == 2)
    keys = fill(local, 2000, "big", size=5000)
    cli = make_cli(tmp_path)
    argv = [MAILMIRROR, "sync", str(local), "mailhost:Maildir", "--state",
            str(tmp_path / "state.db"), "--json", *ssh_args(ssh_rig), "--keep-connection", "30"]
    proc = subprocess.Popen(argv, env=cli.env({"XDG_RUNTIME_DIR": str(run_dir)}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    (keeper,) = keeper_pids(run_dir)
    killed, deadline = False, time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if count(remote):  # the first batch is being published: drop the link now
            os.kill(keeper, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    out, err = proc.communicate(timeout=60)
    run = Run(proc.returncode, out.decode(), err.decode())
    assert killed, f"never caught the sync in the middle (rc {run.rc}): {err!r}"
    line = run.assert_clean_error(3)
    assert "mailhost" in line and "kept connection ended" in line, line
    # the agent outlives its keeper a moment: a batch it had whole is still published
    copied = settled(lambda: count(remote))
    assert 0 < copied < len(keys), f"{copied} of {len(keys)} copied: not cut in the middle"
    assert partial_files(local) == [] and partial_files(remote) == []

    again = sync(tmp_path, ssh_rig, run_dir, local, "mailhost:Maildir")
    assert again.json["counts"].get("copy a->b") == len(keys) - copied, again.json
    assert set(view(remote)) == keys and view(local) == view(remote)
    assert partial_files(local) == partial_files(remote) == []


def count(root: Path) -> int:
    return sum(len(seen) for seen in messages(root).values())


def test_a_keeper_gone_while_a_request_is_sent_is_the_kept_connection_ending() -> None:
    """Not "Broken pipe" as a fatal error of unknown origin."""
    from mailmirror.errors import ReplicaError
    from mailmirror.transport.kept import KeptChannel

    ours, keepers = socket.socketpair()
    keepers.close()
    channel = KeptChannel(ours, "mailhost", 5)
    with pytest.raises(ReplicaError, match="mailhost: the kept connection ended"):
        channel.send([b"x" * (1 << 20)])
    channel.close()
