"""Live mode through real sshds when things go wrong (issue 4): the remote agent is killed and
comes back, and a whole server dies so a laptop's profile falls over to the backup, then
returns to main when main is back. Each "server" is this machine with its own home (see
test_ssh_failover_scenario.py); a crash kills its sshd with every session and agent under it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.e2e.sshkit import AGENT_COMMAND, deliver, home_server, maildir, make_cli, ssh_args
from tests.e2e.watchkit import Watch
from tests.ssh.sshrig import Sshd, SshRig

SETTLE = 20


def keys(root: Path) -> set[str]:
    """Message keys (file names up to ':') in INBOX, tolerating a sync renaming right now."""
    found = set()
    for sub in ("new", "cur"):
        try:
            found.update(name.split(":")[0] for name in os.listdir(root / sub))
        except FileNotFoundError:
            pass
    return found


def kill_sessions(server: Sshd) -> int:
    """SIGKILL every process the sshd started (sessions, agents); the listener stays."""
    victims = [int(pid) for pid in filter(str.isdigit, os.listdir("/proc"))
               if int(pid) != server.process.pid and server._is_ancestor(int(pid))]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(victims)


def crash(rig: SshRig, name: str) -> None:
    """The server dies: its sshd, sessions and agents are killed at once."""
    kill_sessions(rig.servers[name])
    rig.stop(name)


def test_agent_killed_then_watch_reconnects_and_converges(ssh_rig: SshRig,
                                                          tmp_path: Path) -> None:
    server = home_server(ssh_rig, "a", tmp_path / "serverA")
    ssh_rig.point(server)
    remote = maildir(tmp_path / "serverA" / "Maildir")
    laptop = maildir(tmp_path / "laptop")
    deliver(remote, "1700000001.M1P1.server")
    cli = make_cli(tmp_path)
    args = ["--state", str(tmp_path / "state.db"), *ssh_args(ssh_rig)]
    with Watch(cli, [str(laptop), "mailhost:Maildir", *args]) as watch:
        watch.wait_for(lambda: "1700000001.M1P1.server" in keys(laptop), SETTLE, "start-up")
        deliver(remote, "1700000002.M1P1.server")
        watch.wait_for(lambda: "1700000002.M1P1.server" in keys(laptop), SETTLE, "live b->a")

        assert kill_sessions(server) >= 2  # the sync agent and the notifying agent
        deliver(remote, "1700000003.M1P1.during")
        deliver(laptop, "1700000004.M1P1.during")
        watch.wait_log("lost:")
        watch.wait_log("reconnected:")
        watch.wait_for(lambda: keys(laptop) == keys(remote) and len(keys(remote)) == 4,
                       SETTLE, "convergence after the reconnect")
        deliver(remote, "1700000005.M1P1.after")  # notifications flow again
        watch.wait_for(lambda: "1700000005.M1P1.after" in keys(laptop), SETTLE, "live again")
        assert watch.stop() == 0, watch.log()
    assert "Traceback" not in watch.log(), watch.log()
    assert sum("lost:" in line for line in watch.lines) == 1, watch.log()


def test_profile_falls_over_to_the_backup_and_returns_to_main(ssh_rig: SshRig,
                                                               tmp_path: Path) -> None:
    main = home_server(ssh_rig, "a", tmp_path / "main")
    backup = home_server(ssh_rig, "b", tmp_path / "backup")
    ssh_rig.point(main, "main")
    ssh_rig.point(backup, "backup")
    on_main = maildir(tmp_path / "main" / "Maildir")
    on_backup = maildir(tmp_path / "backup" / "Maildir")
    laptop = maildir(tmp_path / "laptop")
    config = tmp_path / "config.toml"
    config.write_text(
        "[profile.laptop]\n"
        f'local = "{laptop}"\n'
        'remotes = ["main:Maildir", "backup:Maildir"]\n'
        f'remote_command = "{AGENT_COMMAND}"\n'
        f'ssh_config = "{ssh_rig.ssh_config}"\n'
        f'identity = "{ssh_rig.user_key}"\n'
        f'known_hosts = "{ssh_rig.known_hosts}"\n'
        "timeout = 2\n")
    deliver(on_main, "1700000100.M1P1.main")
    cli = make_cli(tmp_path)
    args = ["laptop", "--config", str(config), "--state", str(tmp_path / "state.db"),
            "--interval", "3"]
    with Watch(cli, args) as watch:
        watch.wait_for(lambda: "1700000100.M1P1.main" in keys(laptop), SETTLE, "start-up")
        assert "main:Maildir" in watch.log()

        crash(ssh_rig, "a")  # main dies
        deliver(laptop, "1700000101.M1P1.laptop")
        watch.wait_log("remote switched:")
        watch.wait_for(lambda: {"1700000100.M1P1.main", "1700000101.M1P1.laptop"}
                       <= keys(on_backup), SETTLE, "the laptop's mail on the backup")
        deliver(on_backup, "1700000102.M1P1.backup")  # the backup MX takes mail meanwhile
        watch.wait_for(lambda: "1700000102.M1P1.backup" in keys(laptop), SETTLE,
                       "live from the backup")

        main = home_server(ssh_rig, "a", tmp_path / "main")  # main is back (new port)
        ssh_rig.point(main, "main")
        watch.wait_log("remote switched:", count=2)
        watch.wait_for(lambda: keys(laptop) <= keys(on_main), SETTLE, "main catches up")
        deliver(on_main, "1700000103.M1P1.main")
        watch.wait_for(lambda: "1700000103.M1P1.main" in keys(laptop), SETTLE,
                       "live from main again")

        # the backup's old connection drops (sshd restarted there), then main dies again:
        # the backup must be reached anew, not through the connection that ended
        kill_sessions(ssh_rig.servers["b"])
        crash(ssh_rig, "a")
        watch.wait_log("remote switched:", count=3)
        deliver(on_backup, "1700000104.M1P1.backup")
        watch.wait_for(lambda: "1700000104.M1P1.backup" in keys(laptop), SETTLE,
                       "live from the backup again")
        assert watch.stop() == 0, watch.log()
    assert "Traceback" not in watch.log(), watch.log()
    switched = [line for line in watch.lines if "remote switched:" in line]
    assert "backup:Maildir" in switched[0] and "main:Maildir" in switched[1], switched
    assert "backup:Maildir" in switched[2].split("(was")[0], switched
    assert len(keys(laptop)) == 5


def test_one_watch_serves_every_user_of_a_profile(ssh_rig: SshRig, tmp_path: Path) -> None:
    server = home_server(ssh_rig, "a", tmp_path / "server")
    ssh_rig.point(server)
    users = ("alice", "bob")
    for user in users:
        maildir(tmp_path / "server" / f"Maildir-{user}")
        maildir(tmp_path / "local" / user)
    config = tmp_path / "config.toml"
    config.write_text(
        "[profile.all]\n"
        f'local = "{tmp_path}/local/{{user}}"\n'
        'remotes = ["mailhost:Maildir-{user}"]\n'
        f'users = {list(users)!r}\n'.replace("'", '"') +
        f'remote_command = "{AGENT_COMMAND}"\n'
        f'ssh_config = "{ssh_rig.ssh_config}"\n'
        f'identity = "{ssh_rig.user_key}"\n'
        f'known_hosts = "{ssh_rig.known_hosts}"\n')
    cli = make_cli(tmp_path)
    with Watch(cli, ["all", "--config", str(config), "--state", str(tmp_path / "s.db")]) as watch:
        watch.wait_log("connected", count=2)
        for i, user in enumerate(users):
            deliver(tmp_path / "server" / f"Maildir-{user}", f"170000030{i}.M1P1.{user}")
            deliver(tmp_path / "local" / user, f"170000031{i}.M1P1.{user}-laptop")
        for user in users:
            local, remote = tmp_path / "local" / user, tmp_path / "server" / f"Maildir-{user}"
            watch.wait_for(lambda local=local, remote=remote: len(keys(local)) == 2
                           and keys(local) == keys(remote), SETTLE, f"{user} in sync")
        assert watch.stop() == 0, watch.log()
    assert all(user in " ".join(keys(tmp_path / "local" / user)) for user in users)
    sessions = [line for line in server.log_text().splitlines() if "Accepted publickey" in line]
    assert len(sessions) == 1, sessions  # every user through one SSH connection
