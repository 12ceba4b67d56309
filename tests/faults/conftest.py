"""Fixtures for the fault tests: a real sshd on 127.0.0.1 (tests/ssh/sshrig.py) for the tests
that cut, stall or kill the far side, and the end-to-end tests' unprivileged user and installed
command (tests/e2e/conftest.py) for the tests where file modes must apply, which they do not
to root. A missing sshd skips locally and fails under CI=true."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.e2e.conftest import cli, scratch, user, workspace  # noqa: F401 (fixtures)
from tests.ssh.sshrig import SshRig, running_rig


@pytest.fixture
def ssh_rig(tmp_path: Path) -> Iterator[SshRig]:
    """sshd `a` running, `mailhost` pointing at it; every sshd is killed afterwards."""
    with running_rig(tmp_path / "ssh", require("sshd")) as rig:
        yield rig
