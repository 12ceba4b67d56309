"""Folder names and layouts: canonical names ("INBOX", "Lists/Debian") <-> directories.

Maildir++ (default): the root is INBOX, `.Lists.Debian/` a subfolder. `fs`: `Lists/Debian/`.
Also owns creating a folder the way an MDA does and validating names from untrusted peers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePath
from typing import TypeVar

from mailmirror import crashpoint
from mailmirror.maildir.fsops import is_process_alive

P = TypeVar("P", bound=PurePath)

INBOX = "INBOX"
MAILDIRPP = "maildir++"
FS = "fs"
LAYOUTS = (MAILDIRPP, FS)
SUBDIRS = ("cur", "new", "tmp")
_STAGE = "mailmirror-folder-"  # + PID@HOST-NAME: a folder being built in the root's tmp/


class InvalidFolder(ValueError):
    """A folder name that cannot be mapped safely inside a replica root."""


def check_folder(folder: str, layout: str = MAILDIRPP) -> None:
    """Raise InvalidFolder for names that could escape the root or collide with subdirs."""
    if folder == INBOX:
        return
    parts = folder.split("/")
    for part in parts:
        if part in ("", ".", "..") or "\x00" in part or "\\" in part:
            raise InvalidFolder(f"invalid folder name {folder!r}")
        if any(ord(c) < 32 for c in part):
            raise InvalidFolder(f"folder name {folder!r} contains a control byte")
        if not part.isascii():
            try:
                part.encode("utf-8")
            except UnicodeEncodeError:  # the state store could not record it
                raise InvalidFolder(f"folder name {folder!r} is not UTF-8") from None
        if layout == MAILDIRPP and "." in part:
            raise InvalidFolder(f"folder name {folder!r} has a '.', which Maildir++ cannot store")
    if layout == FS and parts[-1] in SUBDIRS:
        raise InvalidFolder(f"folder name {folder!r} collides with a maildir subdirectory")


def folder_dir(root: P, folder: str, layout: str = MAILDIRPP) -> P:
    """The directory holding cur/ new/ tmp/ of `folder`."""
    if folder == INBOX:
        return root
    check_folder(folder, layout)
    if layout == MAILDIRPP:
        return root / ("." + folder.replace("/", "."))
    return root.joinpath(*folder.split("/"))


def list_folders(root: Path, layout: str = MAILDIRPP) -> list[str]:
    """Every folder under `root` that has a cur/ directory (INBOX first when present)."""
    found = [INBOX] if os.path.isdir(root / "cur") else []
    if layout == MAILDIRPP:
        with os.scandir(root) as it:
            for entry in it:
                name = entry.name
                if (name.startswith(".") and name not in (".", "..")
                        and entry.is_dir(follow_symlinks=False)
                        and os.path.isdir(os.path.join(entry.path, "cur"))):
                    folder = name[1:].replace(".", "/")
                    try:
                        check_folder(folder, layout)
                    except InvalidFolder:
                        continue
                    found.append(folder)
        return found
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SUBDIRS and not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        if rel != "." and os.path.isdir(os.path.join(dirpath, "cur")):
            found.append(rel.replace(os.sep, "/"))
    return found


def create_folder(root: Path, folder: str, layout: str = MAILDIRPP) -> Path:
    """Create `folder` with cur/ new/ tmp/ and, for subfolders, the `maildirfolder` marker.

    A subfolder is built under a temporary name and renamed into place, so a crash never
    leaves a folder that has cur/ but no tmp/; an existing folder gets what it lacks.
    """
    path = folder_dir(root, folder, layout)
    if folder != INBOX and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # staged in the root's tmp/ (same file system, never listed as a folder)
        _remove_stale_stages(root / "tmp")
        staged = root / "tmp" / f"{_STAGE}{os.getpid()}@{_host()}-{path.name}"
        shutil.rmtree(staged, ignore_errors=True)
        _fill(staged, with_marker=True)
        try:
            os.rename(staged, path)
            crashpoint.after("rename folder")
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)  # created meanwhile: complete it below
    _fill(path, with_marker=folder != INBOX)
    return path


def _remove_stale_stages(tmp: Path) -> None:
    """Remove folders staged by runs on this host that were killed before renaming them
    (found by the crash-point sweep: they stayed in tmp/ for ever)."""
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        pid, _, rest = name.removeprefix(_STAGE).partition("@")
        if (name.startswith(_STAGE) and pid.isdigit() and rest.startswith(_host() + "-")
                and not is_process_alive(int(pid))):
            shutil.rmtree(tmp / name, ignore_errors=True)


def _host() -> str:
    return os.uname().nodename.replace("/", "_").replace("@", "_")


def _fill(path: Path, with_marker: bool) -> None:
    for sub in SUBDIRS:
        if not (path / sub).is_dir():
            (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            crashpoint.after("mkdir")
    if with_marker:
        marker = path / "maildirfolder"
        if not marker.exists():
            marker.touch(mode=0o600)
            crashpoint.after("create marker")



def folder_of_path(parts: tuple[str, ...], is_dir: bool, layout: str = MAILDIRPP) -> str | None:
    """The folder a changed path (split, relative to the root) belongs to, for file-event hints.

    A file in cur/ or new/ is a change of its folder; a folder directory (or its cur/, new/)
    appearing or going is a change of that folder. tmp/, Dovecot's index files and everything
    else are noise: None. So is a name that is no valid folder (the periodic sync still looks).
    """
    if layout == MAILDIRPP:
        if parts and not parts[0].startswith("."):
            parts = ("",) + parts  # INBOX: the root itself
        if (len(parts) == 1 and is_dir) or (len(parts) == 2 and parts[1] in ("cur", "new")):
            pass  # the folder directory, or its cur/ or new/
        elif len(parts) == 3 and parts[1] in ("cur", "new") and not is_dir:
            pass  # a message file
        else:
            return None
        folder = parts[0][1:].replace(".", "/") or INBOX
    else:
        if parts and parts[-1] in ("cur", "new"):
            parts = parts[:-1]
        elif len(parts) >= 2 and parts[-2] in ("cur", "new") and not is_dir:
            parts = parts[:-2]
        elif not is_dir or not parts:
            return None
        if any(p in SUBDIRS or p.startswith(".") for p in parts):
            return None
        folder = "/".join(parts) or INBOX
    try:
        check_folder(folder, layout)
    except InvalidFolder:
        return None
    return folder
