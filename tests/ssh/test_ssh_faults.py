"""Syncs over SSH that go wrong, through a real sshd and the installed command (issue 3,
Acceptance): a first sync of thousands of messages both ways; a connection dropped in the
middle of a sync (the agent or the sshd session killed) leaves no partial file on either side
and the next run converges; every connection error is one line on stderr, exit code 3, no
traceback and nothing changed; a fake agent speaking another protocol version, or sending
hostile names and sizes, is refused.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import MAILMIRROR, Run
from tests.e2e.sshkit import (
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
from tests.faults.test_concurrency import FolderShuffle, assert_converged, seed
from tests.ssh.sshrig import SshRig

FOLDERS = ("INBOX", "Work", "Lists/Deb")


def fill(root: Path, count: int, tag: str, size: int = 200) -> set[str]:
    """`count` messages over FOLDERS, a third in new/, the rest in cur/ with flags."""
    maildir(root, *FOLDERS[1:])
    keys = set()
    for i in range(count):
        key = f"17{i:08d}.M{i}P9.{tag}"
        subdir = "new" if i % 3 == 0 else "cur"
        deliver(root, key, FOLDERS[(i // 3) % len(FOLDERS)], subdir,
                None if subdir == "new" else ("S" if i % 2 else "FS"), size + i % 97)
        keys.add(key)
    return keys


def keyed(root: Path) -> dict[str, tuple[str, str, str, bytes]]:
    return {k: (s.folder, s.subdir, s.flags, s.content) for k, s in view(root).items()}


@pytest.fixture
def mm(ssh_rig: SshRig, tmp_path: Path) -> Mm:
    return Mm(make_cli(tmp_path), ssh_rig, tmp_path / "state.db")


@pytest.fixture
def shm() -> Iterator[Path]:
    """Where the volume tests keep their maildirs (tmpfs when available)."""
    with fast_dir() as path:
        yield path


def remote(path: Path) -> str:
    return f"ssh://mailhost{path}"


# ---------------------------------------------------------------------------------------------
# volume


def test_first_sync_of_thousands_both_ways_over_the_agent(mm: Mm, shm: Path) -> None:
    laptop, server = shm / "laptop", shm / "server"
    mine = fill(laptop, 2400, "laptop")
    theirs = fill(server, 600, "server")

    started = time.monotonic()
    run = mm.sync(laptop, remote(server))
    took = time.monotonic() - started

    counts = run.json["counts"]
    assert (counts.get("copy a->b"), counts.get("copy b->a")) == (2400, 600), run.json
    assert not any(k.startswith("delete") for k in counts), counts
    assert keyed(laptop) == keyed(server)
    assert set(view(server)) == mine | theirs
    assert partial_files(laptop) == partial_files(server) == []
    assert took < 20, f"first sync of 3000 messages over the agent took {took:.1f} s"
    assert mm.sync(laptop, remote(server)).json["counts"] == {}


@pytest.mark.parametrize("how", ["agent", "sftp"])
def test_messages_moved_while_listed_over_ssh_are_never_doubled_or_lost(mm: Mm, shm: Path,
                                                                        how: str) -> None:
    """spec.md F14 through the agent and over SFTP: clients on both sides move a few messages
    between folders and flag them while syncs run (tests/faults/test_concurrency.py does it
    locally)."""
    a, b = shm / "a", shm / "b"
    keys = seed(a, 1500)
    extra = ["--sftp"] if how == "sftp" else []
    mm.sync(a, remote(b), *extra)
    with FolderShuffle([a, b], [a, b], sorted(keys)[:12]) as shuffle:
        # over SFTP (whole-second mtimes) a sync that finds messages missing waits up to 2 s
        for _ in range(5 if extra else 10):
            assert mm.sync(a, remote(b), *extra, expect_rc=None).rc in (0, 1)
    for _ in range(2):
        mm.sync(a, remote(b), *extra)
    seen = assert_converged(a, b, keys)
    for key, flags in shuffle.flagged.items():
        assert flags <= set(seen[key][2]), f"{key} lost a flag a client set: {seen[key]}"


# ---------------------------------------------------------------------------------------------
# a connection dropped in the middle of a sync


def _processes_under(root_pid: int) -> dict[int, bytes]:
    """pid -> argv[0] of every live process below root_pid."""
    parents, argv0 = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        parents[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
        argv0[int(pid)] = cmd.split(b"\0")[0]
    out = {}
    for pid in parents:
        up = parents.get(pid)
        while up is not None and up > 1:
            if up == root_pid:
                out[pid] = argv0[pid]
                break
            up = parents.get(up)
    return out


def _victim(rig: SshRig, what: str) -> int | None:
    """The agent (a python3 below sshd a), or the sshd process serving the session."""
    below = _processes_under(rig.servers["a"].process.pid)
    if what == "agent":
        pids = rig.servers["a"].descendants("python3")
    else:  # the unprivileged session process, "sshd: USER@notty"
        pids = [pid for pid, arg in below.items() if arg.startswith(b"sshd:")
                and b"@" in arg]
    return pids[0] if len(pids) == 1 else None


def _wait_gone(*pids: int | None) -> None:
    deadline = time.monotonic() + 10
    for pid in pids:
        while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break  # a zombie: it does nothing more
            time.sleep(0.01)


def _count(root: Path) -> int:
    return sum(len(v) for v in messages(root).values())


@pytest.mark.parametrize("direction,what", [("push", "agent"), ("pull", "agent"),
                                            ("push", "sshd")])
def test_dropped_connection_leaves_no_partial_file(ssh_rig: SshRig, mm: Mm, shm: Path,
                                                   direction: str, what: str) -> None:
    laptop, server = shm / "laptop", shm / "server"
    source, target = (laptop, server) if direction == "push" else (server, laptop)
    keys = fill(source, 2000, "big", size=5000)
    maildir(target, *FOLDERS[1:])
    argv = [MAILMIRROR, "sync", str(laptop), remote(server), "--state", str(mm.state),
            "--json", *ssh_args(ssh_rig)]
    env = mm.cli.env()

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed, seen, deadline = None, 0, time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        seen = _count(target)
        if seen:  # the first batch is being published: drop the link now
            killed = _victim(ssh_rig, what)
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.002)
    out, err = proc.communicate(timeout=60)
    run = Run(proc.returncode, out.decode(), err.decode())
    _wait_gone(killed)
    _wait_gone(*ssh_rig.servers["a"].descendants("python3"))  # an orphaned agent finishing

    assert killed is not None, f"never caught the sync in the middle (rc {run.rc}): {err!r}"
    line = run.assert_clean_error(3)
    assert "mailhost" in line, line
    copied = _count(target)
    assert 0 < copied < len(keys), f"{copied} of {len(keys)} copied: not cut in the middle"
    assert partial_files(laptop) == [] and partial_files(server) == []
    assert set(messages(target)) <= keys

    again = mm.sync(laptop, remote(server))
    assert again.json["counts"].get(f"copy {'a->b' if direction == 'push' else 'b->a'}") \
        == len(keys) - copied, again.json
    assert keyed(laptop) == keyed(server)
    assert set(view(target)) == keys
    assert partial_files(laptop) == partial_files(server) == []
    assert mm.sync(laptop, remote(server)).json["counts"] == {}
    # last, so the checks above always run: the line should say what happened
    assert any(w in line for w in ("lost", "closed", "disconnected", "exited")), \
        f"not a clear line for a dropped connection: {line!r}"


# ---------------------------------------------------------------------------------------------
# connection errors: one line, exit code 3, nothing changed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True, stdin=subprocess.DEVNULL)
    return path


def _trees(*roots: Path) -> list[dict]:
    return [{k: [(s.folder, s.subdir, s.flags) for s in v] for k, v in messages(r).items()}
            for r in roots]


@pytest.fixture
def two_sides(tmp_path: Path) -> tuple[Path, Path]:
    laptop, server = maildir(tmp_path / "laptop"), maildir(tmp_path / "server")
    deliver(laptop, "1700000001.M1P1.laptop", subdir="cur", flags="S")
    deliver(server, "1700000002.M1P1.server")
    return laptop, server


def _error_run(mm: Mm, laptop: Path, address: str, ssh: list[str], *extra: str) -> tuple[Run, str]:
    run = mm.sync(laptop, address, *extra, ssh=ssh, expect_rc=None)
    return run, run.assert_clean_error(3)


def test_connection_refused(mm: Mm, ssh_rig: SshRig, two_sides: tuple[Path, Path]) -> None:
    laptop, server = two_sides
    before = _trees(laptop, server)
    port = _free_port()
    run, line = _error_run(mm, laptop, f"ssh://127.0.0.1:{port}{server}", ssh_args(ssh_rig))
    assert "refused" in line and "127.0.0.1" in line, line
    assert _trees(laptop, server) == before


def test_authentication_failure(mm: Mm, ssh_rig: SshRig, two_sides: tuple[Path, Path],
                                tmp_path: Path) -> None:
    laptop, server = two_sides
    before = _trees(laptop, server)
    stranger = _keygen(tmp_path / "stranger")
    _, line = _error_run(mm, laptop, remote(server), ssh_args(ssh_rig, identity=stranger))
    assert "mailhost" in line and "authentication" in line, line
    assert _trees(laptop, server) == before


def test_unknown_host_key(mm: Mm, ssh_rig: SshRig, two_sides: tuple[Path, Path],
                          tmp_path: Path) -> None:
    laptop, server = two_sides
    before = _trees(laptop, server)
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    _, line = _error_run(mm, laptop, remote(server), ssh_args(ssh_rig, known_hosts=empty))
    assert "mailhost" in line and "host key" in line and "known_hosts" in line, line
    assert _trees(laptop, server) == before
    assert not (server / "mailmirror-id").exists(), "the server was touched"


def test_changed_host_key(mm: Mm, ssh_rig: SshRig, two_sides: tuple[Path, Path],
                          tmp_path: Path) -> None:
    laptop, server = two_sides
    before = _trees(laptop, server)
    impostor = _keygen(tmp_path / "impostor")
    other = tmp_path / "known_hosts_other"
    key = impostor.with_suffix(".pub").read_text().split()[1]
    other.write_text(f"[127.0.0.1]:{ssh_rig.servers['a'].port} ssh-ed25519 {key}\n")
    _, line = _error_run(mm, laptop, remote(server), ssh_args(ssh_rig, known_hosts=other))
    assert "mailhost" in line and "host key" in line, line
    # not the unknown-key advice ("add its key"): a changed key may be an attack; say so
    assert any(w in line for w in ("changed", "does not match", "mismatch")), \
        f"a changed host key reads like an unknown one: {line!r}"
    assert _trees(laptop, server) == before


def _certified_server(rig: SshRig, ca: Path) -> int:
    """sshd `c`, whose host key carries a certificate signed by `ca`; its port."""
    host_key = _keygen(rig.base / "host_c")
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "server-c", "-h", "-n", "127.0.0.1",
                    str(host_key.with_suffix(".pub"))], check=True, stdin=subprocess.DEVNULL)
    cert = host_key.parent / f"{host_key.name}-cert.pub"
    return rig.start("c", extra_config=(f"HostCertificate {cert}",)).port


def test_host_certificate_signed_by_a_known_ca(mm: Mm, ssh_rig: SshRig, tmp_path: Path,
                                               two_sides: tuple[Path, Path]) -> None:
    """known_hosts holds only `@cert-authority` (OpenSSH certificates, not X.509): accepted."""
    laptop, server = two_sides
    ca = _keygen(tmp_path / "host_ca")
    port = _certified_server(ssh_rig, ca)
    address = f"ssh://127.0.0.1:{port}"
    trusted = tmp_path / "known_hosts_ca"
    trusted.write_text(f"@cert-authority [127.0.0.1]:{port} {ca.with_suffix('.pub').read_text()}")
    mm.sync(laptop, f"{address}{server}", ssh=ssh_args(ssh_rig, known_hosts=trusted))
    assert _trees(laptop) == _trees(server)
    assert len(messages(laptop)) == 2

    stranger = _keygen(tmp_path / "other_ca")
    untrusted = tmp_path / "known_hosts_other_ca"
    untrusted.write_text(
        f"@cert-authority [127.0.0.1]:{port} {stranger.with_suffix('.pub').read_text()}")
    deliver(laptop, "1700000003.M1P1.laptop")
    before = _trees(laptop, server)
    _, line = _error_run(mm, laptop, f"{address}{server}", ssh_args(ssh_rig, known_hosts=untrusted))
    assert "127.0.0.1" in line and "host key" in line, line
    assert _trees(laptop, server) == before


def test_stalled_connect_ends_in_bounded_time(mm: Mm, ssh_rig: SshRig, tmp_path: Path,
                                              two_sides: tuple[Path, Path]) -> None:
    """A server that accepts TCP but never speaks: the profile's timeout bounds the wait."""
    laptop, server = two_sides
    before = _trees(laptop, server)
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        config = tmp_path / "mute_ssh_config"
        config.write_text(f"Host mute\n    HostName 127.0.0.1\n    Port {mute.getsockname()[1]}\n")
        profiles = tmp_path / "config.toml"
        profiles.write_text(
            f'[profile.p]\nlocal = "{laptop}"\nremotes = ["mute:{server}"]\n'
            f'ssh_config = "{config}"\nknown_hosts = "{ssh_rig.known_hosts}"\n'
            f'identity = "{ssh_rig.user_key}"\ntimeout = 1\n')
        started = time.monotonic()
        run = mm.cli.run("sync", "p", "--config", str(profiles), "--state", str(mm.state))
        took = time.monotonic() - started
    line = run.assert_clean_error(3)
    assert "mute" in line, line
    assert took < 8, f"a stalled connect took {took:.1f} s with timeout = 1"
    assert _trees(laptop, server) == before


def test_agent_missing_falls_back_to_sftp_with_a_notice(
        mm: Mm, ssh_rig: SshRig, two_sides: tuple[Path, Path], tmp_path: Path) -> None:
    laptop, server = two_sides
    ssh = ssh_args(ssh_rig, command=str(tmp_path / "nowhere" / "mailmirror") + " agent")
    run = mm.sync(laptop, remote(server), ssh=ssh)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and "mailhost" in lines[0] and "using SFTP" in lines[0], lines
    assert run.json["b"].endswith("(sftp)"), run.json
    assert run.json["counts"] == {"copy a->b": 1, "copy b->a": 1}, run.json
    assert keyed(laptop) == keyed(server)


def test_agent_missing_and_no_sftp(mm: Mm, ssh_rig: SshRig, two_sides: tuple[Path, Path],
                                   tmp_path: Path) -> None:
    """No mailmirror on the remote, and its sshd serves no SFTP either."""
    laptop, server = two_sides
    no_sftp = ('ForceCommand case "$SSH_ORIGINAL_COMMAND" in */sftp-server|internal-sftp) '
               'echo "sftp is disabled here" >&2; exit 1;; '
               '*) eval "$SSH_ORIGINAL_COMMAND";; esac')
    ssh_rig.stop("a")
    ssh_rig.point(ssh_rig.start("a", extra_config=(no_sftp,)))
    before = _trees(laptop, server)
    ssh = ssh_args(ssh_rig, command=str(tmp_path / "nowhere" / "mailmirror") + " agent")
    run = mm.sync(laptop, remote(server), ssh=ssh, expect_rc=None)
    assert run.rc == 3, (run.rc, run.stderr)
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if "using SFTP" not in ln]
    assert len(errors) == 1 and "mailhost" in errors[0], run.stderr
    assert _trees(laptop, server) == before


# ---------------------------------------------------------------------------------------------
# fake agents: another protocol version, hostile replies

FAKE_AGENT = r'''
import json, struct, sys, time
MODE = sys.argv[1]
inp, out = sys.stdin.buffer, sys.stdout.buffer

def send(header, data=b""):
    raw = json.dumps(header).encode()
    out.write(struct.pack(">IQ", len(raw), len(data)) + raw + data)
    out.flush()

while True:
    prefix = inp.read(12)
    if len(prefix) < 12:
        break
    hl, dl = struct.unpack(">IQ", prefix)
    req = json.loads(inp.read(hl))
    inp.read(dl)
    rid, op = req["id"], req["op"]
    if op == "hello":
        if MODE == "refuses":
            send({"id": rid, "ok": False, "fatal": True, "kind": "replica",
                  "error": f"protocol error: protocol version {req['version']} is not "
                           "supported: this agent speaks 99 (mailmirror 9.0)"})
            sys.exit(2)
        send({"id": rid, "ok": True, "result": {
            "version": 99 if MODE == "v99" else req["version"], "label": "/fake", "clock_ns": 0,
            "software": "mailmirror 9.0"}})
    elif op == "id":
        send({"id": rid, "ok": True, "result": "fake-replica-" + MODE})
    elif op == "clock":
        send({"id": rid, "ok": True, "result": time.time_ns()})
    elif op == "stamps":
        send({"id": rid, "ok": True, "result": {"INBOX": [1, 1]}})
    elif op == "list":  # one block of newline-joined names per subdir asked
        names = {"dotdot": {"cur": "../../../evil:2,S"}, "slash": {"cur": "a/b:2,S"},
                 "nul": {"new": "nul\u0000byte"}, "huge": {"cur": "1700000009.M9P9.fake:2,S"},
                 "empty": {"cur": "1700000009.M9P9.fake:2,S\n"}}[MODE]
        blocks = [names.get(sub, "").encode() for sub in req["subdirs"]]
        send({"id": rid, "ok": True,
              "result": {f: [len(b) for b in blocks] for f in req["folders"]}},
             b"".join(blocks) * len(req["folders"]))
    elif op == "sizes":
        send({"id": rid, "ok": True, "result": [10**12] * len(req["refs"])})
    elif op == "read":
        send({"id": rid, "ok": True, "result": [10**12] * len(req["refs"])}, b"x" * 100)
    elif op in ("deliver", "rename", "delete"):
        refs = req.get("refs") or req.get("sources") or []
        send({"id": rid, "ok": True, "result": [["ok", ""] for _ in refs]})
    elif op == "tombstones":
        send({"id": rid, "ok": True, "result": {}})
    elif op == "keywords":
        send({"id": rid, "ok": True, "result": {}})
    else:
        send({"id": rid, "ok": True, "result": None})
'''


def _escaped(top: Path) -> set[Path]:
    """Files under `top` named as the fake agent's names that try to leave the maildir."""
    return {p for p in top.rglob("*") if "evil" in p.name or p.name == "b:2,S"}


@pytest.mark.parametrize("mode,words", [
    ("v99", ["version 99", "install"]),
    ("refuses", ["version", "install"]),
    ("dotdot", ["invalid", "name"]),
    ("slash", ["invalid", "name"]),
    ("nul", ["invalid", "name"]),
    ("empty", ["invalid", "name"]),
    ("huge", ["invalid", "read reply"]),
])
def test_fake_agent_is_refused(mm: Mm, ssh_rig: SshRig, two_sides: tuple[Path, Path],
                               tmp_path: Path, mode: str, words: list[str]) -> None:
    laptop, server = two_sides
    script = tmp_path / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    before = _trees(laptop, server)
    paths_before = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    # other tests of the session may own such names (a hostile name kept inside a maildir)
    escaped_before = _escaped(tmp_path.parent)
    command = f"{sys.executable} {script} {mode}"
    _, line = _error_run(mm, laptop, remote(server), ssh_args(ssh_rig, command=command))
    assert "mailhost" in line and all(w in line for w in words), line
    assert _trees(laptop, server) == before
    new = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")} - paths_before
    allowed = ("state.db", "locks", "laptop/mailmirror-id")  # the run's own bookkeeping
    assert [str(p) for p in new if not str(p).startswith(allowed)] == []
    assert _escaped(tmp_path.parent) == escaped_before
    assert os.listdir(laptop / "tmp") == [], "a temp file was left in the laptop's tmp/"
