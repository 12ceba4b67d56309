"""Fixtures for tests over SSH: a real OpenSSH sshd on 127.0.0.1 with its own keys and config.

`ssh_rig` is per test, so a test may repoint the `mailhost` alias or start a second sshd
(`ssh_rig.start("b")`) without affecting others; the machinery is in sshrig.py. A missing sshd
skips these tests locally and fails them under CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.ssh.sshrig import SshRig, running_rig


@pytest.fixture
def ssh_rig(tmp_path: Path) -> Iterator[SshRig]:
    """sshd `a` running, `mailhost` pointing at it; every sshd is killed afterwards."""
    with running_rig(tmp_path / "ssh", require("sshd")) as rig:
        yield rig
