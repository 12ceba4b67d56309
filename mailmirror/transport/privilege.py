"""Privilege separation for `mailmirror agent` started as root (through a sudo rule).

The agent then serves one user's maildir, so before it opens a single file it becomes the
owner of the maildir root (supplementary groups, group, then user: the order that cannot be
undone), and every file it writes belongs to that user as if delivered by the MDA. Started by
sudo (SUDO_UID is set; sudo sets it, the caller cannot), a maildir owned by root is refused
unless --allow-root says so: a sudo rule must not become a way to read or write root's files.
A direct root login serving a root-owned maildir stays root (it is root already). Run as
anyone else, the agent stays who it is.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from mailmirror.errors import ReplicaError


def owner_of(root: Path) -> int | None:
    """The uid owning ROOT, or its parent when ROOT does not exist yet (a first sync);
    None when neither exists (the agent then refuses the path when asked to open it)."""
    for path in (root, root.parent):
        try:
            return os.stat(path).st_uid
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ReplicaError(f"cannot read {path}: {exc.strerror}") from None
    return None


def drop_to_owner(root: Path, allow_root: bool = False) -> None:
    """As root: become the owner of `root` for good. Otherwise: nothing.

    Raises ReplicaError for a root-owned maildir under sudo (without allow_root), an owner
    that has no passwd entry, or a switch that did not stick.
    """
    if os.geteuid() != 0:
        return
    uid = owner_of(root)
    if uid is None:
        return
    if uid == 0:
        if allow_root or "SUDO_UID" not in os.environ:
            return
        raise ReplicaError(f"{root} belongs to root: the agent, started as root, serves only "
                           "maildirs of other users (pass --allow-root to serve it as root)")
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise ReplicaError(f"{root} belongs to uid {uid}, which has no user entry: fix the "
                           "owner of the maildir") from None
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.geteuid() != entry.pw_uid or _can_regain_root():
        raise ReplicaError(f"could not become {entry.pw_name} to serve {root}")
    os.environ.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)


def _can_regain_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True
