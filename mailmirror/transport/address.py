"""Replica addresses: a local path, `ssh://[user@]host[:port]/path` or scp-style `[user@]host:path`.

Pure parsing, no I/O. An scp-style path is relative to the remote home (as with scp and rsync);
a local path containing ':' must be written with a './' or '/' in front, as rsync asks too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mailmirror.errors import UsageError

_SCP = re.compile(r"^(?:(?P<user>[^@/:\s]+)@)?"
                  r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^@/:\s\[\]]+):(?P<path>.*)$")


@dataclass(frozen=True, slots=True)
class Remote:
    host: str
    path: str  # absolute, or relative to the remote user's home
    user: str | None = None
    port: int | None = None

    def label(self) -> str:
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{who}{self.host}{port}:{self.path}"


def parse_address(text: str) -> Remote | str:
    """A Remote for remote addresses, else the local path unchanged. Raises UsageError."""
    if text.startswith("ssh://"):
        try:
            parts = urlsplit(text)
        except ValueError:  # an unclosed [ of an IPv6 address
            raise UsageError(f"{text!r} is not a valid address: write "
                             "ssh://[user@]host[:port]/path") from None
        if not parts.hostname:
            raise UsageError(f"{text!r} has no host: write ssh://[user@]host[:port]/path")
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"{text!r} has an invalid port") from None
        path = unquote(parts.path)
        if not path or path == "/":
            raise UsageError(f"{text!r} has no maildir path: write ssh://host/path/to/Maildir")
        if path.startswith("/~/"):
            path = path[3:]
        return Remote(parts.hostname, path, unquote(parts.username) if parts.username else None,
                      port)
    if text.startswith(("/", ".", "~")):
        return text
    match = _SCP.match(text)
    if not match:
        if ":" in text.split("/", 1)[0]:
            raise UsageError(f"{text!r} has no host: write [user@]host:path, or ./{text} for "
                             "a local path")
        return text
    path = match["path"] or "."
    host = match["host"].strip("[]")
    return Remote(host, path, match["user"])
