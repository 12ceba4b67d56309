"""Running sync jobs: open each side (local, or over SSH), pick the first remote that answers,
lock the pair, sync, and close everything.

A job is one maildir A and an ordered list of candidate Bs (a laptop pulling from main, then
backup). Several jobs to one host share one SSH connection (every user of a server). Errors
stay ReplicaError/UsageError; the CLI turns them into lines and exit codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mailmirror.errors import ReplicaError, UsageError
from mailmirror.replica.base import Replica
from mailmirror.replica.local import check_local, open_local
from mailmirror.store import open_store
from mailmirror.sync.engine import ProgressFn, SyncOptions, SyncReport, sync
from mailmirror.sync.lock import pair_lock
from mailmirror.sync.state import SyncState
from mailmirror.transport.address import Remote, parse_address
from mailmirror.transport.options import SshOptions

if TYPE_CHECKING:
    from mailmirror.transport.ssh import SshSession


@dataclass(frozen=True)
class Job:
    a: str
    candidates: tuple[str, ...]
    remote_command: str | None = None


@dataclass(frozen=True)
class Settings:
    state_path: Path
    options: SyncOptions
    ssh: SshOptions
    layout: str = "maildir++"
    separator: str = ":"
    lock_timeout: float = 60.0
    connect_timeout: float | None = None
    only_remote: str | None = None


class Runner:
    """Owns the SSH sessions of one invocation; use as a context manager."""

    def __init__(self, settings: Settings, notice: Callable[[str], None],
                 progress: ProgressFn | None = None) -> None:
        self.settings = settings
        self.notice = notice
        self.progress = progress
        self.stack = contextlib.ExitStack()
        self.sessions: dict[tuple[str, int | None, str | None], SshSession] = {}

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def run(self, job: Job) -> SyncReport:
        s = self.settings
        candidates = [c for c in job.candidates if _matches(c, s.only_remote)]
        if not candidates:
            raise UsageError(f"--remote {s.only_remote!r} matches none of "
                             f"{', '.join(job.candidates)}")
        for address in (job.a, *candidates):
            parsed = parse_address(address)
            if isinstance(parsed, str):
                check_local(parsed, s.layout)
        a = self._open(job.a, job.remote_command)
        b = self._first_answering(candidates, job.remote_command)
        with open_store(s.state_path, readonly=s.options.dry_run) as store, \
                pair_lock(s.state_path, a.id, b.id, s.lock_timeout):
            state = SyncState(store)
            for line in state.moved_labels(a, b):
                self.notice(line)
            return sync(a, b, state, replace(s.options, progress=self.progress))

    def _first_answering(self, candidates: list[str], command: str | None) -> Replica:
        for i, address in enumerate(candidates):
            try:
                return self._open(address, command)
            except ReplicaError as exc:
                if i + 1 == len(candidates):
                    raise
                self.notice(f"{exc}; trying {candidates[i + 1]}")
        raise AssertionError("no candidates")

    def _open(self, address: str, command: str | None) -> Replica:
        s = self.settings
        readonly = s.options.dry_run
        parsed = parse_address(address)
        if isinstance(parsed, str):
            return open_local(parsed, s.layout, s.separator, readonly=readonly)
        from mailmirror.transport.ssh import AgentMissing

        session = self._session(parsed)
        if s.ssh.sftp:
            return session.open_sftp(parsed.path, s.layout, s.separator, readonly)
        try:
            replica = session.open_agent(parsed.path, s.layout, s.separator, readonly,
                                         command=command)
        except AgentMissing as exc:
            self.notice(f"{exc.args[0].split(':')[0]}: no mailmirror agent there, using SFTP "
                        "(slower; install mailmirror on the remote for speed)")
            return session.open_sftp(parsed.path, s.layout, s.separator, readonly)
        self.stack.callback(replica.close)
        return replica

    def _session(self, remote: Remote) -> SshSession:
        from mailmirror.transport.ssh import SshSession

        key = (remote.host, remote.port, remote.user)
        if key not in self.sessions:
            ssh = self.settings.ssh
            if self.settings.connect_timeout is not None:
                ssh = replace(ssh, connect_timeout=self.settings.connect_timeout)
            session = SshSession(remote, ssh)
            self.stack.callback(session.close)
            self.sessions[key] = session
        return self.sessions[key]


def _matches(address: str, wanted: str | None) -> bool:
    if wanted is None:
        return True
    parsed = parse_address(address)
    return address == wanted or (isinstance(parsed, Remote) and parsed.host == wanted)
