"""Which agent command a sync runs: `--remote-command` on the command line beats a profile's
`remote_command`, which beats the default (issue 3). A wrong command shows as the SFTP
fallback notice, so each case tells which command was really run.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.sshkit import AGENT_COMMAND, deliver, maildir, make_cli, view
from tests.ssh.sshrig import SshRig


def test_command_line_beats_the_profile(ssh_rig: SshRig, tmp_path: Path) -> None:
    remote = maildir(tmp_path / "remote")
    laptop = maildir(tmp_path / "laptop")
    deliver(remote, "1700000600.M1P1.server")
    config = tmp_path / "config.toml"
    config.write_text(
        "[profile.laptop]\n"
        f'local = "{laptop}"\n'
        f'remotes = ["mailhost:{remote}"]\n'
        'remote_command = "/nonexistent/mailmirror agent"\n'
        f'ssh_config = "{ssh_rig.ssh_config}"\n'
        f'identity = "{ssh_rig.user_key}"\n'
        f'known_hosts = "{ssh_rig.known_hosts}"\n')
    cli = make_cli(tmp_path)
    base = ["sync", "laptop", "--config", str(config), "--state", str(tmp_path / "s.db"),
            "--json"]

    by_profile = cli.run(*base)
    assert by_profile.rc == 0, by_profile.stderr
    assert "/nonexistent/mailmirror agent" in by_profile.stderr  # the profile's command ran
    assert "using SFTP" in by_profile.stderr and by_profile.json["b"].endswith("(sftp)")

    by_option = cli.run(*base, "--remote-command", AGENT_COMMAND)
    assert by_option.rc == 0, by_option.stderr
    assert "using SFTP" not in by_option.stderr, by_option.stderr
    assert not by_option.json["b"].endswith("(sftp)"), by_option.json
    assert set(view(laptop)) == {"1700000600.M1P1.server"}


def test_a_remote_command_that_never_answers_is_given_the_profile_timeout(
        ssh_rig: SshRig, tmp_path: Path) -> None:
    """A remote command that starts but never speaks (a wrapper waiting on a lock, a prompt)
    must not hang the sync: its hello waits the profile's timeout, then the next remote is
    tried, and the last one's failure is one line naming the command."""
    import time

    laptop = maildir(tmp_path / "laptop")
    config = tmp_path / "config.toml"
    config.write_text(
        "[profile.laptop]\n"
        f'local = "{laptop}"\n'
        f'remotes = ["mailhost:{tmp_path}/m1", "mailhost:{tmp_path}/m2"]\n'
        'remote_command = "sleep 60; true"\n'
        "timeout = 2\n"
        f'ssh_config = "{ssh_rig.ssh_config}"\n'
        f'identity = "{ssh_rig.user_key}"\n'
        f'known_hosts = "{ssh_rig.known_hosts}"\n')
    started = time.monotonic()
    run = make_cli(tmp_path).run("sync", "laptop", "--config", str(config), "--state",
                                 str(tmp_path / "s.db"))
    took = time.monotonic() - started
    assert run.rc == 3 and "Traceback" not in run.stderr, (run.rc, run.stderr)
    first, last = run.stderr.splitlines()
    assert first.endswith(f"; trying mailhost:{tmp_path}/m2"), first
    assert last == ("mailmirror: mailhost: `sleep 60; true` did not answer within 2 s: check "
                    "--remote-command (or the profile's remote_command and timeout)"), last
    assert took < 20, f"took {took:.1f} s"
