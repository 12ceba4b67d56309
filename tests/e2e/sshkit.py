"""Helpers for tests that run the installed `mailmirror` command against maildirs reached
through the SSH test rig (tests/ssh/sshrig.py): the command line with the rig's files, maildirs
written as plain files, and trees read back by message key (the UNIQUE part of a file name).

The command runs as the current user (root in CI), forked from pytest like the e2e scenarios
(conftest.Cli); every "server" maildir is on this machine too, so trees are read from disk.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.conftest import MAILMIRROR, Cli, Run, User
from tests.ssh.sshrig import Sshd, SshRig

AGENT_COMMAND = f"{MAILMIRROR} agent"
TEMP_SUFFIXES = (".mmtmp", ".mmsftp")


@contextmanager
def fast_dir() -> Iterator[Path]:
    """A fresh directory on tmpfs when there is one: thousands of small files and the
    engine's syncfs barriers cost little there, so the volume tests stay fast."""
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="mm-ssh-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def current_user() -> User:
    entry = pwd.getpwuid(os.geteuid())
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, ())


def make_cli(scratch: Path) -> Cli:
    for sub in ("home", "config", "xdgstate"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    return Cli(current_user(), scratch)


def ssh_args(rig: SshRig, *, known_hosts: Path | None = None, identity: Path | None = None,
             config: Path | None = None, command: str = AGENT_COMMAND) -> list[str]:
    """The options that make the command use only the rig's files (no ~/.ssh, no ssh-agent)."""
    return ["--ssh-config", str(config or rig.ssh_config),
            "--identity", str(identity or rig.user_key),
            "--known-hosts", str(known_hosts or rig.known_hosts),
            "--remote-command", command]


@dataclass
class Mm:
    """`mailmirror sync` with one state database, through the rig."""

    cli: Cli
    rig: SshRig
    state: Path

    def sync(self, a: str | Path, b: str | Path, *extra: str, expect_rc: int | None = 0,
             ssh: list[str] | None = None) -> Run:
        run = self.cli.run("sync", str(a), str(b), "--state", str(self.state), "--json",
                           *(ssh if ssh is not None else ssh_args(self.rig)), *extra)
        assert expect_rc is None or run.rc == expect_rc, (run.rc, run.stdout, run.stderr)
        assert "Traceback" not in run.stderr + run.stdout, (run.rc, run.stderr)
        return run


def home_server(rig: SshRig, name: str, home: Path) -> Sshd:
    """Start (or restart) sshd `name` as a machine whose home directory is `home`: remote
    commands run there, so `mailhost:Maildir` is a different maildir on each server, as on
    two real machines. (Both servers are this machine and log in the same user.)"""
    if name in rig.servers:
        rig.stop(name)
    home.mkdir(parents=True, exist_ok=True)
    force = f'ForceCommand cd {shlex.quote(str(home))} && eval "$SSH_ORIGINAL_COMMAND"'
    return rig.start(name, extra_config=(force,))


# ---------------------------------------------------------------------------------------------
# maildirs as plain files


def maildir(root: Path, *folders: str) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for folder in folders:
        path = root / ("." + folder.replace("/", "."))
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        (path / "maildirfolder").touch()
    return root


def _head(key: str) -> bytes:
    return f"From: a@e2e.test\nSubject: {key}\nMessage-ID: <{key}@e2e.test>\n\n".encode()


def _tail(key: str) -> bytes:
    return f"\nend of {key}\n".encode()


def body(key: str, size: int = 0) -> bytes:
    """A message naming its key, padded with `size` x's, and ending with a marker: a
    truncated copy cannot pass for a complete one."""
    return _head(key) + b"x" * size + _tail(key)


def deliver(root: Path, key: str, folder: str = "INBOX", subdir: str = "new",
            flags: str | None = None, size: int = 0) -> Path:
    """A message file named KEY (new/KEY, or cur/KEY:2,FLAGS) whose content names its key."""
    base = root if folder == "INBOX" else root / ("." + folder.replace("/", "."))
    name = key if flags is None else f"{key}:2,{flags}"
    path = base / subdir / name
    path.write_bytes(body(key, size))
    return path


@dataclass(frozen=True)
class Seen:
    folder: str
    subdir: str
    flags: str
    content: bytes


def messages(root: Path) -> dict[str, list[Seen]]:
    """Every message file under root, by key (a key seen twice is a duplicate)."""
    out: dict[str, list[Seen]] = {}
    for folder_dir, folder in _folder_dirs(root):
        for subdir in ("cur", "new"):
            try:
                names = os.listdir(folder_dir / subdir)
            except FileNotFoundError:
                continue
            for name in names:
                key, _, info = name.partition(":")
                flags = info[2:] if info.startswith("2,") else ""
                out.setdefault(key, []).append(
                    Seen(folder, subdir, flags, (folder_dir / subdir / name).read_bytes()))
    return out


def view(root: Path) -> dict[str, Seen]:
    """messages(root) with each key exactly once (asserted)."""
    found = messages(root)
    dups = {k: v for k, v in found.items() if len(v) != 1}
    assert not dups, f"duplicates in {root}: {dups}"
    return {k: v[0] for k, v in found.items()}


def partial_files(root: Path) -> list[str]:
    """Files in cur/ or new/ that are mailmirror temp files, or whose content is not the
    complete message their key names (every message here is written by deliver())."""
    bad = []
    for key, seen in messages(root).items():
        for s in seen:
            if key.endswith(TEMP_SUFFIXES) or any(x in key for x in TEMP_SUFFIXES):
                bad.append(f"{s.folder}/{s.subdir}/{key}: temp file")
            elif not _complete(key, s.content):
                bad.append(f"{s.folder}/{s.subdir}/{key}: {len(s.content)} bytes, incomplete")
    return bad


def _complete(key: str, content: bytes) -> bool:
    head, tail = _head(key), _tail(key)
    if not content.startswith(head) or not content.endswith(tail):
        return False
    middle = content[len(head):len(content) - len(tail)]
    return middle == b"x" * len(middle)


def _folder_dirs(root: Path) -> list[tuple[Path, str]]:
    out = [(root, "INBOX")]
    if root.is_dir():
        for entry in sorted(os.listdir(root)):
            if entry.startswith(".") and entry not in (".", "..") and (root / entry).is_dir():
                out.append((root / entry, entry[1:].replace(".", "/")))
    return out
