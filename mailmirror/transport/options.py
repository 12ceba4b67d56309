"""How to reach remote replicas over SSH: settings only, so callers need not import asyncssh."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_AGENT = "mailmirror agent"
MAX_KEEP_SECONDS = 86400  # --keep-connection and a profile's keep_connection: a day at most
KEEP_AUTO = "auto"
"""The default of --keep-connection: keep a connection only after a sync of a pair that was
synced less than AUTO_KEEP_SECONDS before (cron every 15 minutes or more often), for
AUTO_KEEP_SECONDS; a one-off or hourly run leaves nothing behind."""
AUTO_KEEP_SECONDS = 960.0


def parse_keep(value: object) -> float | str | None:
    """--keep-connection's or keep_connection's value: seconds or KEEP_AUTO; None if invalid."""
    if value == KEEP_AUTO:
        return KEEP_AUTO
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return float(value) if 0 <= value <= MAX_KEEP_SECONDS else None


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
