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
