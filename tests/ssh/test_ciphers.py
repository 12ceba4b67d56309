"""The cipher a session negotiates with a real sshd: AES-GCM when ssh_config is silent (asyncssh's
ChaCha20 costs Python work per packet), the user's `Ciphers` when it names some."""

from __future__ import annotations

from mailmirror.transport.address import Remote
from mailmirror.transport.options import SshOptions
from mailmirror.transport.ssh import SshSession
from tests.ssh.sshrig import ALIAS, SshRig


def negotiated(rig: SshRig) -> str:
    options = SshOptions(config=rig.ssh_config, identity=rig.user_key,
                         known_hosts=rig.known_hosts)
    session = SshSession(Remote(ALIAS, "/"), options)
    try:
        return str(session.conn.get_extra_info("send_cipher"))
    finally:
        session.close()


def test_aes_gcm_unless_the_user_chose(ssh_rig: SshRig) -> None:
    assert negotiated(ssh_rig).endswith("-gcm@openssh.com")

    config = ssh_rig.ssh_config.read_text()
    ssh_rig.ssh_config.write_text(config.replace(
        "    BatchMode yes\n", "    BatchMode yes\n    Ciphers chacha20-poly1305@openssh.com\n"))
    assert negotiated(ssh_rig) == "chacha20-poly1305@openssh.com"
