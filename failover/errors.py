"""failover's user-facing errors and exit codes, on top of mailmirror's error base.

Exit codes: 0 all done; 1 partial (a zone failed, a reload/NOTIFY/verification failed, a server
serves a newer serial, or `check` found main unhealthy); 2 bad command line or configuration;
3 fatal (state store, template or zones directory unusable). Each message is one line with a fix.
"""

from __future__ import annotations

from mailmirror.errors import EXIT_FATAL, EXIT_PARTIAL, ConfigError, MailmirrorError

__all__ = ["ConfigError", "FailoverError", "DirectoryError", "NoStateError", "TemplateError",
           "EXIT_PARTIAL"]


class FailoverError(MailmirrorError):
    """Base of failover's own errors; fatal for the whole run unless a subclass says otherwise."""

    exit_code = EXIT_FATAL


class DirectoryError(FailoverError):
    """The templates or zones directory is missing or unusable; no zone was touched."""


class NoStateError(FailoverError):
    """A command that only reads found no failover state at the path given; none was created."""


class TemplateError(FailoverError):
    """One template cannot be rendered into a valid zone; only that zone is skipped.

    `line` is 1-based in the template (rendering never changes line numbers), or None when
    the problem concerns the whole file (no SOA, no NS).
    """

    exit_code = EXIT_PARTIAL

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def located(self, file: str) -> str:
        """The one-line message naming `file` and the line, as users see it."""
        where = f"{file}:{self.line}" if self.line else file
        return f"{where}: {self.message}"
