"""How to reach remote replicas over SSH: settings only, so callers need not import asyncssh."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_AGENT = "mailmirror agent"
MAX_KEEP_SECONDS = 86400  # --keep-connection and a profile's keep_connection: a day at most


@dataclass(frozen=True)
class SshOptions:
    config: Path | None = None
    identity: Path | None = None
    known_hosts: Path | None = None
    remote_command: str | None = None  # None: the profile's, else DEFAULT_AGENT
    connect_timeout: float = 15.0
    io_timeout: float = 300.0
    keepalive: float = 15.0
    sftp: bool = False  # always use SFTP, even where the agent is installed
