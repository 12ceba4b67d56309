"""The one error hierarchy users can meet.

Each class carries its exit code; the message is one line naming the thing and the fix.
The CLI is the only place that turns these into output and exit codes.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARTIAL = 1  # finished, but some items were skipped and will be retried
EXIT_USAGE = 2  # bad command line or configuration
EXIT_FATAL = 3  # cannot reach, read or lock a replica or the state store


class MailmirrorError(Exception):
    """Base of every error meant for a user."""

    exit_code = EXIT_FATAL
    retryable = False


class UsageError(MailmirrorError):
    """Bad arguments or configuration."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """The configuration file is missing, unreadable or invalid."""


class StoreError(MailmirrorError):
    """The state database cannot be used (corrupt, too new, unwritable)."""


class ReplicaError(MailmirrorError):
    """A whole replica cannot be used for this run."""


class LockedError(MailmirrorError):
    """Another sync of the same pair holds the lock."""

    retryable = True


class SafetyStop(MailmirrorError):
    """The run looked dangerous (a replica suddenly empty, a different replica id) and stopped."""


def printable(text: object, limit: int | None = None) -> str:
    """Text as one printable line: a file name or a remote's answer could otherwise move
    the cursor, clear the screen or forge a second line of our output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text)[:limit])
