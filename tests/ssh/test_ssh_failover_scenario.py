"""The DNS-failover scenario of issue 3 through real sshds: a laptop syncs with `mailhost`,
which is server A; then `mailhost` leads to server B (the ssh_config alias changes its Port, as
DNS would change the address), whose maildir holds part of the same mail (from an A<->B sync)
and mail of its own. Nothing may be deleted or duplicated, one line must say what happened,
and later syncs with A and with B converge. Also: a profile whose first remote is down falls
back to the next one with a notice.

Each server is this machine with its own "home" (sshrig + ForceCommand cd HOME), so the same
address `mailhost:Maildir` names a different maildir on A and on B, as on two real machines.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.sshkit import (
    AGENT_COMMAND,
    Mm,
    deliver,
    home_server,
    maildir,
    make_cli,
    messages,
    partial_files,
    view,
)
from tests.ssh.sshrig import SshRig

REMOTE = "mailhost:Maildir"


@pytest.fixture
def world(ssh_rig: SshRig, tmp_path: Path) -> dict[str, Path]:
    """Servers A and B (each with a home holding Maildir), the laptop's maildir."""
    server_a = home_server(ssh_rig, "a", tmp_path / "serverA")
    home_server(ssh_rig, "b", tmp_path / "serverB")
    ssh_rig.point(server_a)
    return {"laptop": maildir(tmp_path / "laptop"),
            "A": maildir(tmp_path / "serverA" / "Maildir", "Archive"),
            "B": maildir(tmp_path / "serverB" / "Maildir", "Archive")}


def keyed(root: Path) -> dict[str, tuple[str, str, str, bytes]]:
    return {k: (s.folder, s.subdir, "".join(sorted(s.flags)), s.content)
            for k, s in view(root).items()}


def no_deletes(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if k.startswith(("delete", "folder-"))}


def test_mailhost_moves_to_the_backup_server(ssh_rig: SshRig, world: dict[str, Path],
                                             tmp_path: Path) -> None:
    laptop, ma, mb = world["laptop"], world["A"], world["B"]
    mm = Mm(make_cli(tmp_path), ssh_rig, tmp_path / "laptop-state.db")
    servers = Mm(make_cli(tmp_path), ssh_rig, tmp_path / "servers-state.db")  # A's own cron

    shared = [f"17000000{i:02d}.M{i}P1.serverA" for i in range(6)]
    for i, key in enumerate(shared):
        deliver(ma, key, subdir="cur" if i % 2 else "new", flags="S" if i % 2 else None)
    servers.sync(ma, mb, ssh=[])  # the servers' own sync: B holds the shared mail
    assert set(view(mb)) == set(shared)
    a_late = [f"17000001{i:02d}.M{i}P2.serverA" for i in range(3)]  # arrived on A since
    for key in a_late:
        deliver(ma, key)
    b_own = [f"17000002{i:02d}.M{i}P3.serverB" for i in range(3)]  # arrived on B (2nd MX)
    for key in b_own:
        deliver(mb, key)
    (mb / "cur" / f"{shared[1]}:2,S").rename(mb / "cur" / f"{shared[1]}:2,FS")  # B: flagged
    (mb / "cur" / f"{shared[3]}:2,S").rename(mb / ".Archive" / "cur" / f"{shared[3]}:2,S")
    own = [f"17000003{i:02d}.M{i}P4.laptop" for i in range(2)]
    for key in own:
        deliver(laptop, key, subdir="cur", flags="S")

    first = mm.sync(laptop, REMOTE)
    assert first.json["counts"] == {"copy a->b": 2, "copy b->a": 9, "folder+ a": 1}, first.json
    assert "now reaches" not in first.stderr, first.stderr
    assert keyed(laptop) == keyed(ma)
    (laptop / "cur" / f"{shared[5]}:2,S").rename(laptop / "cur" / f"{shared[5]}:2,RS")
    before = {"laptop": keyed(laptop), "B": keyed(mb)}

    ssh_rig.point(ssh_rig.servers["b"])  # DNS failover: mailhost is now server B
    moved = mm.sync(laptop, REMOTE)

    problems = []
    lines = [ln for ln in moved.stderr.splitlines() if "now reaches replica" in ln]
    if len(lines) != 1 or REMOTE not in lines[0]:
        problems.append(f"expected one 'now reaches replica' line naming {REMOTE}: "
                        f"{moved.stderr!r}")
    if no_deletes(moved.json["counts"]):
        problems.append(f"the failover sync deleted: {moved.json['counts']}")
    found_laptop, found_b = messages(laptop), messages(mb)
    for name, found in (("laptop", found_laptop), ("B", found_b)):
        dups = {k: v for k, v in found.items() if len(v) > 1}
        if dups:
            problems.append(f"duplicates on {name}: {sorted(dups)}")
        lost = set(before[name]) - set(found)
        if lost:
            problems.append(f"lost on {name}: {sorted(lost)}")
    everything = set(shared) | set(a_late) | set(b_own) | set(own)
    if set(found_laptop) != everything or set(found_b) != everything:
        problems.append(f"not the union: laptop lacks {sorted(everything - set(found_laptop))},"
                        f" B lacks {sorted(everything - set(found_b))}")
    assert not problems, problems
    after_laptop, after_b = keyed(laptop), keyed(mb)
    assert after_laptop == after_b
    assert "F" in after_b[shared[1]][2] and "R" in after_b[shared[5]][2], after_b
    assert partial_files(laptop) == partial_files(mb) == [], "a message changed content"

    # later syncs, with B (still mailhost), between the servers, and with A again, converge
    assert mm.sync(laptop, REMOTE).json["counts"] == {}
    servers.sync(ma, mb, ssh=[])
    ssh_rig.point(ssh_rig.servers["a"])
    mm.sync(laptop, REMOTE)
    servers.sync(ma, mb, ssh=[])
    ssh_rig.point(ssh_rig.servers["b"])
    mm.sync(laptop, REMOTE)
    trees = {name: keyed(root) for name, root in (("laptop", laptop), ("A", ma), ("B", mb))}
    assert trees["laptop"] == trees["A"] == trees["B"]
    assert set(trees["laptop"]) == everything
    for target in ("a", "b"):
        ssh_rig.point(ssh_rig.servers[target])
        again = mm.sync(laptop, REMOTE)
        assert again.json["counts"] == {} and "now reaches" not in again.stderr, again.json
    assert servers.sync(ma, mb, ssh=[]).json["counts"] == {}


# ---------------------------------------------------------------------------------------------
# a profile with ordered remotes


@pytest.fixture
def stalled_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) but never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def _config(rig: SshRig, tmp_path: Path, hosts: dict[str, int]) -> Path:
    path = tmp_path / "profile_ssh_config"
    path.write_text("".join(
        f"Host {alias}\n    HostName 127.0.0.1\n    Port {port}\n    User {rig.user}\n"
        f"    IdentityFile {rig.user_key}\n    UserKnownHostsFile {rig.known_hosts}\n"
        "    StrictHostKeyChecking yes\n    IdentitiesOnly yes\n    BatchMode yes\n\n"
        for alias, port in hosts.items()))
    return path


@pytest.mark.parametrize("down", ["refused", "stalled"])
def test_profile_uses_the_backup_when_mailhost_is_down(
        ssh_rig: SshRig, world: dict[str, Path], tmp_path: Path, down: str,
        request: pytest.FixtureRequest) -> None:
    laptop, mb = world["laptop"], world["B"]
    deliver(mb, "1700000400.M1P1.serverB")
    deliver(laptop, "1700000500.M1P1.laptop")
    if down == "refused":
        dead = ssh_rig.servers["a"].port
        ssh_rig.stop("a")
    else:
        dead = request.getfixturevalue("stalled_port")
    config = _config(ssh_rig, tmp_path, {"mailhost": dead,
                                         "backup": ssh_rig.servers["b"].port})
    profiles = tmp_path / "config.toml"
    profiles.write_text(
        "[profile.laptop]\n"
        f'local = "{laptop}"\n'
        'remotes = ["mailhost:Maildir", "backup:Maildir"]\n'
        f'remote_command = "{AGENT_COMMAND}"\n'
        f'ssh_config = "{config}"\n'
        f'identity = "{ssh_rig.user_key}"\n'
        f'known_hosts = "{ssh_rig.known_hosts}"\n'
        "timeout = 1\n")
    cli = make_cli(tmp_path)

    run = cli.run("sync", "laptop", "--config", str(profiles), "--state",
                  str(tmp_path / "state.db"), "--json")

    assert run.rc == 0, (run.rc, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and "mailhost" in lines[0] and "backup:Maildir" in lines[0], lines
    assert run.json["counts"] == {"copy a->b": 1, "copy b->a": 1, "folder+ a": 1}, run.json
    assert "backup" in run.json["b"], run.json
    assert set(view(laptop)) == set(view(mb)) == {"1700000400.M1P1.serverB",
                                                  "1700000500.M1P1.laptop"}
    assert not messages(world["A"]), "server A was written although it was down"
