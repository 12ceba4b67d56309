"""Fixtures for failover: a real NSD primary and secondary on loopback, a local main server.

The NSD pair gets fresh 127.x.y.z addresses and free ports above 1024 per test and is stopped
afterwards; the machinery is in failover_rig.py. Every test gets its own state and config path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from failover_rig import TEMPLATE, ZONE, MainServer, Nsd, Rig, free_endpoint, require_binary


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Never read or write the developer's real config or state."""
    monkeypatch.setenv("MAILMIRROR_STATE", str(tmp_path / "state" / "state.sqlite3"))
    monkeypatch.setenv("MAILMIRROR_CONFIG", str(tmp_path / "absent-config.toml"))


def _give_to_nobody(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "nobody", "nogroup")


@pytest.fixture
def nsd_rig() -> Iterator[Rig]:
    """Primary + secondary NSD for example.test; the zones dir starts empty (like a new install).

    Yields once both answer queries; failover writes the primary's zone file itself.
    """
    require_binary("nsd")
    require_binary("nsd-control")
    # /tmp, not pytest's tmp_path: nobody must traverse it, and the control socket path
    # must stay short (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="fo-nsd-", dir="/tmp"))
    root.chmod(0o755)
    templates, zones = root / "templates", root / "zones"
    for folder in (templates, zones):
        folder.mkdir(mode=0o755)
    (templates / f"{ZONE}.zone").write_text(TEMPLATE)
    p_host, p_port = free_endpoint()
    s_host, s_port = free_endpoint()
    primary = Nsd(
        "primary",
        root / "primary",
        p_host,
        p_port,
        f"""    outgoing-interface: {p_host}
    notify: {s_host}@{s_port} NOKEY
    provide-xfr: {s_host} NOKEY
""",
        zones,
    )
    secondary = Nsd(
        "secondary",
        root / "secondary",
        s_host,
        s_port,
        f"""    outgoing-interface: {s_host}
    allow-notify: {p_host} NOKEY
    allow-notify: 127.0.0.1 NOKEY
    request-xfr: {p_host}@{p_port} NOKEY
""",
        root / "secondary" / "zones",
    )
    for server in (primary, secondary):
        server.root.mkdir()
        (server.root / "tmp").mkdir()
        server.zonesdir.mkdir(exist_ok=True)
        server.write_conf()
        for path in (server.root, server.root / "tmp", server.zonesdir):
            if path != zones:
                _give_to_nobody(path)
    rig = Rig(root, templates, zones, primary, secondary)
    try:
        primary.start()
        secondary.start()
        yield rig
    finally:
        secondary.stop()
        primary.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A scratch folder nobody owns, under /tmp: pytest's tmp_path is closed to other users."""
    root = Path(tempfile.mkdtemp(prefix="fo-", dir="/tmp"))
    root.chmod(0o755)
    _give_to_nobody(root)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def main_server() -> Iterator[MainServer]:
    server = MainServer()
    server.start()
    yield server
    server.stop()
