"""Running sync jobs: open each side (local, or over SSH), pick the first remote that answers,
lock the pair, sync, and close everything.

A job is one maildir A and an ordered list of candidate Bs (a laptop pulling from main, then
backup). Several jobs to one host share one SSH connection (every user of a server). Errors
stay ReplicaError/UsageError; the CLI turns them into lines and exit codes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mailmirror.errors import ReplicaError, UsageError
from mailmirror.replica.base import Replica
from mailmirror.replica.local import check_local, open_local
from mailmirror.replica.remote import AgentReplica
from mailmirror.store import open_store
from mailmirror.sync import guard
from mailmirror.sync.engine import ProgressFn, SyncOptions, SyncReport, sync
from mailmirror.sync.lock import pair_lock
from mailmirror.sync.model import Side
from mailmirror.sync.state import SyncState
from mailmirror.transport.address import Remote, parse_address
from mailmirror.transport.options import AUTO_KEEP_SECONDS, DEFAULT_AGENT, KEEP_AUTO, SshOptions

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
    keep_connection: float | str = KEEP_AUTO  # seconds a keeper holds each SSH connection


@dataclass
class Pair:
    """Both sides of a job, open: `b_address` is the candidate that answered."""

    job: Job
    a: Replica
    b: Replica
    b_address: str


class Runner:
    """Owns the SSH sessions of one invocation; use as a context manager."""

    def __init__(self, settings: Settings, notice: Callable[[str], None],
                 progress: ProgressFn | None = None) -> None:
        self.settings = settings
        self.notice = notice
        self.progress = progress
        self.sessions: dict[tuple[str, int | None, str | None], SshSession] = {}
        self.opened: list[tuple[Replica, SshSession | None]] = []  # and the session it uses
        # connections this run made itself, to leave a keeper for: socket, remote, options
        # and the agents (command, root) it started there
        self.to_keep: dict[Path, tuple[Remote, SshOptions, list[tuple[str, str]]]] = {}
        self.keep_of: dict[int, Path] = {}  # id() of a replica -> the socket it would keep
        self.often: set[Path] = set()  # sockets of pairs synced often (for KEEP_AUTO)
        self.keeping = True  # False once keeping proved impossible (said once)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        for replica, session in reversed(self.opened):
            if self._alive(session):
                with contextlib.suppress(ReplicaError):
                    replica.close()
        self.opened.clear()
        for session in list(self.sessions.values()):
            session.close()
        self.sessions.clear()
        # a user's Ctrl-C stops everything, keepers included
        if self.to_keep and (kind is None or not issubclass(kind, KeyboardInterrupt)):
            from mailmirror.transport.kept import start_keeper

            seconds = self.settings.keep_connection
            for path, (remote, options, agents) in self.to_keep.items():
                if seconds != KEEP_AUTO:
                    start_keeper(path, remote, options, float(seconds), agents)
                elif path in self.often:
                    start_keeper(path, remote, options, AUTO_KEEP_SECONDS, agents)
        self.to_keep.clear()

    def run(self, job: Job) -> SyncReport:
        return self.sync_pair(self.open_pair(job))

    def candidates(self, job: Job) -> list[str]:
        """The job's Bs that --remote allows, in the order they are tried."""
        s = self.settings
        found = [c for c in job.candidates if _matches(c, s.only_remote)]
        if not found:
            raise UsageError(f"--remote {s.only_remote!r} matches none of "
                             f"{', '.join(job.candidates)}")
        return found

    def open_pair(self, job: Job, first: int = 0) -> Pair:
        """Open A and the first B that answers, trying candidates from index `first` on."""
        candidates = self.candidates(job)[first:]
        for address in (job.a, *candidates):
            parsed = parse_address(address)
            if isinstance(parsed, str):
                check_local(parsed, self.settings.layout)
        a = self.open(job.a, job.remote_command)
        for i, address in enumerate(candidates):
            try:
                return Pair(job, a, self.open(address, job.remote_command), address)
            except ReplicaError as exc:
                if i + 1 == len(candidates):
                    raise
                self.notice(f"{exc}; trying {candidates[i + 1]}")
        raise AssertionError("no candidates")

    def sync_pair(self, pair: Pair, options: SyncOptions | None = None) -> SyncReport:
        """One sync run of an open pair, under the pair lock."""
        s = self.settings
        options = replace(options or s.options, progress=self.progress)
        with open_store(s.state_path, readonly=options.dry_run) as store:
            state = SyncState(store)
            # before anything reads an id: reading creates a missing one
            guard.check_identity(state, {Side.A: pair.a, Side.B: pair.b},
                                 options.accept_new_replica)
            # a dry run changes nothing: it needs no lock (nor a lock file)
            locked = (contextlib.nullcontext() if options.dry_run
                      else pair_lock(s.state_path, pair.a.id, pair.b.id, s.lock_timeout))
            with locked:
                for line in state.moved_labels(pair.a, pair.b):
                    self.notice(line)
                self._note_often(pair, state)
                return sync(pair.a, pair.b, state, options)

    def _note_often(self, pair: Pair, state: SyncState) -> None:
        """With KEEP_AUTO, a connection is kept for pairs synced often; a oneshot systemd
        service (INVOCATION_ID set) would kill the keeper the moment the run ends."""
        paths = [self.keep_of[id(r)] for r in (pair.a, pair.b) if id(r) in self.keep_of]
        if (paths and self.settings.keep_connection == KEEP_AUTO
                and "INVOCATION_ID" not in os.environ
                and state.synced_within(pair.a.id, pair.b.id, AUTO_KEEP_SECONDS)):
            self.often.update(paths)

    def open(self, address: str, command: str | None) -> Replica:
        """A replica at `address`: local, or over this runner's SSH session to its host."""
        s = self.settings
        readonly = s.options.dry_run
        parsed = parse_address(address)
        if isinstance(parsed, str):
            replica: Replica = open_local(parsed, s.layout, s.separator, readonly=readonly)
            self.opened.append((replica, None))
            return replica
        options = self._ssh_options()
        program = command or options.remote_command or DEFAULT_AGENT
        keep_at = self._keep_at(parsed, options)
        if keep_at is not None and (kept := self._open_kept(keep_at, parsed, program,
                                                            options)) is not None:
            self.opened.append((kept, None))
            return kept
        from mailmirror.transport.ssh import AgentMissing

        session = self._session(parsed, options)
        if options.sftp:
            return session.open_sftp(parsed.path, s.layout, s.separator, readonly)
        try:
            replica = session.open_agent(parsed.path, s.layout, s.separator, readonly,
                                         command=program)
        except AgentMissing as exc:
            self.notice(f"{exc.host}: no `{exc.command}` there, using SFTP (slower; install "
                        "mailmirror on the remote, or fix --remote-command, for speed)")
            return session.open_sftp(parsed.path, s.layout, s.separator, readonly)
        self.opened.append((replica, session))
        if keep_at is not None:
            self.to_keep.setdefault(keep_at, (parsed, options, []))[2].append(
                (program, parsed.path))
            self.keep_of[id(replica)] = keep_at
        return replica

    def _keep_at(self, remote: Remote, options: SshOptions) -> Path | None:
        """The keeper socket for `remote` (None with --keep-connection 0, or where there is no
        private directory for it: said once, unless the setting is the default's auto)."""
        keep = self.settings.keep_connection
        if keep == 0 or options.sftp or not self.keeping:
            return None
        from mailmirror.transport.kept import KeepUnavailable, socket_path

        try:
            return socket_path(remote, options)
        except KeepUnavailable as exc:
            if keep != KEEP_AUTO:
                self.notice(f"--keep-connection: {exc}")
            self.keeping = False
            return None

    def _open_kept(self, path: Path, remote: Remote, program: str,
                   options: SshOptions) -> AgentReplica | None:
        """The agent for `remote` through a keeper left by an earlier run, or None (then
        the caller connects itself, as if there were none)."""
        from mailmirror.transport.kept import open_kept

        channel = open_kept(path, program, remote.path, remote.host, options.connect_timeout,
                            options.io_timeout)
        if channel is None:
            return None
        try:
            replica = AgentReplica(channel, remote.label(), self.settings.layout,
                                   self.settings.separator, self.settings.options.dry_run)
        except ReplicaError:
            channel.close()
            return None
        return replica

    def close(self, replica: Replica) -> None:
        """Close one replica opened here before the runner ends (a remote given up)."""
        for i, (opened, session) in enumerate(self.opened):
            if opened is replica:
                del self.opened[i]
                if self._alive(session):
                    with contextlib.suppress(ReplicaError):
                        replica.close()
                return

    def _alive(self, session: SshSession | None) -> bool:
        """Whether a replica's connection is still open (a dropped one cannot say bye)."""
        return session is None or any(s is session for s in self.sessions.values())

    def drop(self, address: str, keep: str | None = None) -> None:
        """Forget the SSH session behind `address` (it failed, or is left); the next open()
        reconnects. Not when it is also the session of `keep` (the same host)."""
        parsed = parse_address(address)
        if isinstance(parsed, str):
            return
        kept = parse_address(keep) if keep is not None else None
        if isinstance(kept, Remote) and _key(kept) == _key(parsed):
            return
        session = self.sessions.pop(_key(parsed), None)
        if session is not None:
            session.close()

    def _ssh_options(self) -> SshOptions:
        ssh = self.settings.ssh
        if self.settings.connect_timeout is not None:
            # the profile's timeout also paces keepalives: a link silent for three
            # of them is dead, and the run ends (exit 3) instead of hanging
            ssh = replace(ssh, connect_timeout=self.settings.connect_timeout,
                          keepalive=self.settings.connect_timeout)
        return ssh

    def _session(self, remote: Remote, options: SshOptions) -> SshSession:
        from mailmirror.transport.ssh import SshSession

        key = _key(remote)
        cached = self.sessions.get(key)
        if cached is not None and not cached.alive():
            # its connection ended since (a long-running watch): a new one, not a dead end
            cached.close()
            cached = None
        if cached is None:
            cached = self.sessions[key] = SshSession(remote, options)
        return cached


def _key(remote: Remote) -> tuple[str, int | None, str | None]:
    return (remote.host, remote.port, remote.user)


def _matches(address: str, wanted: str | None) -> bool:
    if wanted is None:
        return True
    parsed = parse_address(address)
    return address == wanted or (isinstance(parsed, Remote) and parsed.host == wanted)
