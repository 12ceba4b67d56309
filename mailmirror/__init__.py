"""mailmirror: message-aware two-way Maildir synchronisation."""

__version__ = "0.1.0"
