"""The locked-down remote of docs/remote.md, for real (docs/spec.md P1-P3): a real sshd, an
unprivileged login `mmmirror` whose key is limited by `restrict,command=` to the shipped
wrapper (docs/examples/ssh/), and a real sudo rule built from docs/examples/ssh/sudoers that
lets it start only the agent, only as the mail user `mmtest`. Then the variant for many users
with one rule: the agent started as root by sudo becomes the owner of the maildir before it
touches a file, and refuses a maildir that root owns.

Needs root (to add users and a sudoers file); the examples are copied with only their paths
changed (the mailmirror executable, the users, where the maildirs live).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailmirror.errors import ReplicaError
from mailmirror.replica.base import Delivery, Ref
from mailmirror.replica.remote import AgentReplica, PipeChannel
from tests.conftest import missing, require
from tests.e2e.conftest import MAILMIRROR, User, _allow_ssh_login
from tests.e2e.sshkit import deliver, maildir, make_cli, ssh_args, view
from tests.ssh.sshrig import ALIAS, SshRig, running_rig

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "ssh"
MIRROR = "mmmirror"
SUDOERS = Path("/etc/sudoers.d/mailmirror-test")


def _system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", name],
                       check=True, capture_output=True)
        return pwd.getpwnam(name)


@pytest.fixture
def world(workspace: Path, user: User, tmp_path: Path) -> Iterator[dict]:
    """sshd, the mirror login with its forced command, the sudo rules, mmtest's maildir."""
    if os.geteuid() != 0:
        missing("root (these tests add users and a sudoers file)")
    visudo = require("visudo")
    require("sudo")
    mirror = _system_user(MIRROR)
    _allow_ssh_login(mirror)
    base = Path(tempfile.mkdtemp(prefix="privsep-", dir=workspace))
    base.chmod(0o755)  # the mirror login and sudo's mail user must traverse it
    home = base / "home"
    (home / user.name).mkdir(parents=True)
    box = maildir(home / user.name / "Maildir")
    deliver(box, "1700000001.M1P1.server")
    user.own(home / user.name)
    wrapper = base / "mailmirror-agent-wrapper"
    wrapper.write_text((EXAMPLES / "mailmirror-agent-wrapper").read_text()
                       .replace("/usr/local/bin/mailmirror", MAILMIRROR))
    wrapper.chmod(0o755)
    rules = ((EXAMPLES / "sudoers").read_text()
             .replace("/usr/local/bin/mailmirror", MAILMIRROR)
             .replace("mirror ALL", f"{MIRROR} ALL")
             .replace("(alice,bob,carol)", f"({user.name})")
             .replace("/home/", f"{home}/"))
    candidate = base / "sudoers"
    candidate.write_text(rules)
    check = subprocess.run([visudo, "-cf", str(candidate)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    SUDOERS.write_text(rules)
    SUDOERS.chmod(0o440)
    try:
        with running_rig(base / "ssh", require("sshd")) as rig:
            key = rig.user_key.with_suffix(".pub").read_text().strip()
            rig.authorized_keys.write_text(f'restrict,command="{wrapper}" {key}\n')
            yield {"rig": rig, "box": box, "home": home, "base": base, "user": user}
    finally:
        SUDOERS.unlink(missing_ok=True)


def _mirror_ssh(rig: SshRig, command: str) -> subprocess.CompletedProcess[str]:
    """`ssh mmmirror@mailhost COMMAND` with the rig's key, as the OpenSSH client does it."""
    return subprocess.run(
        ["ssh", "-F", str(rig.ssh_config), "-l", MIRROR, ALIAS, command],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_the_locked_down_recipe_syncs_as_the_mail_user(world: dict, tmp_path: Path) -> None:
    """P1: through the forced command and the sudo rule, files are written as mmtest."""
    rig, box, user = world["rig"], world["box"], world["user"]
    laptop = maildir(tmp_path / "laptop")
    deliver(laptop, "1700000002.M1P1.laptop")
    cli = make_cli(tmp_path)
    command = f"sudo -n -u {user.name} {MAILMIRROR} agent"  # docs/examples/profiles/servers.toml
    address = f"ssh://{MIRROR}@{ALIAS}{box}"

    run = cli.run("sync", str(laptop), address, "--state", str(tmp_path / "s.db"), "--json",
                  *ssh_args(rig, command=command))

    assert run.rc == 0, (run.stdout, run.stderr)
    assert run.json["counts"] == {"copy a->b": 1, "copy b->a": 1}, run.json
    assert set(view(laptop)) == set(view(box)) == {"1700000001.M1P1.server",
                                                   "1700000002.M1P1.laptop"}
    written = [box / "mailmirror-id", *(box / "new").iterdir(), *(box / "cur").iterdir()]
    assert {(p.name, p.stat().st_uid) for p in written} == {(p.name, user.uid) for p in written}
    (laptop / "new" / "1700000001.M1P1.server").unlink()
    gone = cli.run("sync", str(laptop), address, "--state", str(tmp_path / "s.db"), "--json",
                   *ssh_args(rig, command=command))
    assert gone.json["counts"] == {"delete b": 1}, gone.json
    (held,) = [p for p in (box / "mailmirror-quarantine").rglob("*") if p.is_file()]
    assert held.stat().st_uid == user.uid


@pytest.mark.parametrize("command", [
    "id",
    f"sudo -n -u root {MAILMIRROR} agent /root",
    "sudo -n -u mmtest /bin/sh -c id x",
    f"sudo -n -u mmtest {MAILMIRROR} agent /a; id",
])
def test_the_key_runs_nothing_but_the_agent(world: dict, command: str) -> None:
    """P2: the forced command refuses anything else; sudo refuses what slips through."""
    done = _mirror_ssh(world["rig"], command)
    assert done.returncode != 0
    assert "uid=" not in done.stdout, done.stdout
    assert "refused" in done.stderr or "sudo" in done.stderr, done.stderr


def test_sudo_allows_the_mirror_user_only_the_agent(world: dict) -> None:
    user = world["user"]
    as_mirror = ["setpriv", f"--reuid={MIRROR}", f"--regid={pwd.getpwnam(MIRROR).pw_gid}",
                 "--init-groups"]
    for argv in (["sudo", "-n", "-u", user.name, "/bin/id"],
                 ["sudo", "-n", "/bin/id"],
                 ["sudo", "-n", "-u", "root", MAILMIRROR, "agent", str(world["box"])]):
        done = subprocess.run(as_mirror + argv, capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
        assert done.returncode != 0 and "uid=" not in done.stdout, (argv, done.stdout)


@pytest.fixture
def root_rule(world: dict) -> Iterator[list[str]]:
    """The variant for many mail users (docs/examples/ssh/sudoers-one-rule): one rule, the
    agent started as root by sudo."""
    rule = ((EXAMPLES / "sudoers-one-rule").read_text()
            .replace("/usr/local/bin/mailmirror", MAILMIRROR)
            .replace("mirror ALL", f"{MIRROR} ALL")
            .replace("/home/", f"{world['home']}/"))
    SUDOERS.write_text(SUDOERS.read_text() + rule)
    yield ["setpriv", f"--reuid={MIRROR}", f"--regid={pwd.getpwnam(MIRROR).pw_gid}",
           "--init-groups", "sudo", "-n", MAILMIRROR, "agent"]


def test_agent_started_as_root_becomes_the_owner(world: dict, root_rule: list[str]) -> None:
    """P3: files written through a root-started agent belong to the maildir's owner."""
    box, user = world["box"], world["user"]
    replica = AgentReplica(PipeChannel([*root_rule, str(box)]), "root-started")
    try:
        assert replica.id == (box / "mailmirror-id").read_text().strip()
        ref = Ref("INBOX", "new/1700000003.M1P1.via-root")
        assert replica.deliver([Delivery(ref, b"Subject: x\n\nx\n")])[0].ok
    finally:
        replica.close()
    made = box / "new" / "1700000003.M1P1.via-root"
    assert made.stat().st_uid == user.uid and made.stat().st_gid == user.gid


def test_agent_started_as_root_refuses_a_root_owned_maildir(world: dict, root_rule: list[str],
                                                            tmp_path: Path) -> None:
    """P3: a sudo rule never serves root's files; --allow-root does not match the rule."""
    box = maildir(world["home"] / "rootbox" / "Maildir")  # made by root, owned by root
    before = sorted(p.name for p in box.iterdir())
    with pytest.raises(ReplicaError, match="closed the connection"):
        AgentReplica(PipeChannel([*root_rule, str(box)], stderr=subprocess.DEVNULL), "rootbox")
    refused = subprocess.run([*root_rule, str(box)], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
    assert refused.returncode == 3, refused
    assert refused.stderr.startswith("mailmirror: ") and "belongs to root" in refused.stderr
    sneaky = [*root_rule, "--allow-root", str(box)]
    done = subprocess.run(sneaky, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and "sudo" in done.stderr, done.stderr
    assert sorted(p.name for p in box.iterdir()) == before
