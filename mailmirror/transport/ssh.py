"""SSH connections (asyncssh) for remote replicas: the agent over an exec channel, or SFTP.

The engine is synchronous; asyncssh lives on an event loop in a background thread and every
call crosses over with a timeout. asyncssh and OS errors are translated here, at the boundary,
into one-line ReplicaErrors (exit 3) naming the host and the fix. Host keys are always
verified against known_hosts: an unknown or changed key is an error, never accepted silently.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import socket
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mailmirror.errors import ReplicaError
from mailmirror.memory import share_one_heap
from mailmirror.replica.remote import AgentReplica
from mailmirror.replica.sftp import SftpReplica, open_sftp
from mailmirror.transport.address import Remote
from mailmirror.transport.loop import LoopThread
from mailmirror.transport.options import DEFAULT_AGENT, SshOptions
from mailmirror.transport.protocol import send_chunks
from mailmirror.transport.sshlib import asyncssh

T = TypeVar("T")
SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005).
The loop thread gives the GIL up at every socket write and then waited up to the default
for the copy's reader and recorder threads: a first copy over SSH took about 10% longer."""
GATHER_BYTES = 256 << 10
"""Bytes of SSH packets gathered into one socket write at most (see _GatheredWrites)."""


class AgentMissing(ReplicaError):
    """The remote has no `mailmirror agent` at the configured command: SFTP can stand in."""

    def __init__(self, host: str, command: str) -> None:
        super().__init__(f"{host}: `{command}` was not found on the remote: install mailmirror "
                         "there, or point --remote-command at it (or use --sftp)")
        self.host = host
        self.command = command


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", "") or exc) or type(exc).__name__


class SshChannel:
    """A Channel (see replica/remote.py) over an asyncssh exec session."""

    def __init__(self, session: SshSession, process: asyncssh.SSHClientProcess,
                 command: str) -> None:
        self.session = session
        self.process = process
        self.command = command
        self.greeted = False  # the agent answered hello: replies may take io_timeout

    def send(self, pieces: Sequence[bytes]) -> None:
        async def write() -> None:
            # each chunk once the channel drained: asyncssh's own copy stays small too, and
            # the packets full
            stdin = self.process.stdin
            for chunk in send_chunks(pieces):
                stdin.write(chunk)
                await stdin.drain()

        self.session.run(write(), self.session.options.io_timeout)

    def read_exactly(self, n: int) -> bytes:
        async def read() -> bytes:
            try:
                return await self.process.stdout.readexactly(n)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    return exc.partial
                await self._explain_eof()
                return b""

        if self.greeted:
            return self.session.run(read(), self.session.options.io_timeout)

        async def first() -> bytes:
            limit = self.session.options.connect_timeout
            try:
                return await asyncio.wait_for(read(), limit)
            except TimeoutError:
                raise ReplicaError(f"{self.session.host}: `{self.command}` did not answer "
                                   f"within {limit:g} s: check --remote-command (or the "
                                   "profile's remote_command and timeout)") from None

        return self.session.run(first(), None)

    def answered(self) -> None:
        self.greeted = True

    async def _explain_eof(self) -> None:
        """The agent went away before answering: say why, from its exit status and stderr."""
        try:
            await asyncio.wait_for(self.process.wait_closed(), 5)
        except (TimeoutError, asyncssh.Error):
            return
        err = ""
        try:
            raw = await asyncio.wait_for(self.process.stderr.read(), 1)
            err = raw.decode("utf-8", "replace").strip()
        except (TimeoutError, asyncssh.Error):
            pass
        status = self.process.exit_status
        first = err.splitlines()[0] if err else ""
        if status == 127:
            raise AgentMissing(self.session.host, self.command)
        if status not in (None, 0) or first:
            raise ReplicaError(f"{self.session.host}: the agent exited with status {status}"
                               + (f": {first}" if first else ""))

    def close(self) -> None:
        async def close() -> None:  # on the loop's thread (see SshSession.close)
            try:
                self.process.stdin.write_eof()
            except (OSError, asyncssh.Error):
                pass
            self.process.close()

        if not self.session.is_open():
            return
        try:
            self.session.run(close(), 5)
        except ReplicaError:
            pass  # the connection is gone already: nothing left to close


class SshSession:
    """One SSH connection to one host; it can serve several replicas (maildirs) there."""

    def __init__(self, remote: Remote, options: SshOptions) -> None:
        # a dropped connection makes asyncio log "socket.send() raised exception." for every
        # pending write; the one line users need comes from run() instead
        logging.getLogger("asyncio").setLevel(logging.ERROR)
        self.remote = remote
        self.host = remote.host
        self.options = options
        share_one_heap()  # before the loop thread: a copy's threads then share one heap
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._loop = LoopThread("mailmirror-ssh")
        self._connected = False
        self._sftp: asyncssh.SFTPClient | None = None
        try:
            self.conn = self.run(self._connect(), options.connect_timeout + 5)
            self._connected = True
        except BaseException:
            self._loop.close()
            raise

    def is_open(self) -> bool:
        return not self._loop.loop.is_closed()

    def alive(self) -> bool:
        """Whether the connection still stands (a server restart or a dropped link ends it)."""
        return self.is_open() and not self.conn.is_closed()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        try:
            return self._loop.run(coro, timeout)
        except TimeoutError:
            limit = timeout if self._connected else self.options.connect_timeout
            raise ReplicaError(f"{self.host}: no answer for {limit:g} s: the connection "
                               "stalled (check the network)") from None
        except asyncssh.HostKeyNotVerifiable as exc:
            if self._host_is_known():
                raise ReplicaError(
                    f"{self.host}: the host key does not match known_hosts: it changed since "
                    "you last connected, which may be an attack. Check with the server's admin "
                    "before removing the old key (ssh-keygen -R HOST)") from None
            raise ReplicaError(
                f"{self.host}: host key not verified ({exc.reason}): check the host, then add "
                "its key to known_hosts (ssh-keyscan, or connect once with ssh) or pass "
                "--known-hosts FILE") from None
        except asyncssh.PermissionDenied:
            raise ReplicaError(
                f"{self.host}: authentication failed: check the user and key (--identity, "
                "ssh-agent, ~/.ssh/config)") from None
        except asyncssh.DisconnectError as exc:
            if self._connected:
                raise ReplicaError(f"{self.host}: connection lost ({exc.reason}); nothing "
                                   "half-written was published: run the sync again") from None
            raise ReplicaError(f"{self.host}: disconnected: {exc.reason}") from None
        except asyncssh.ChannelOpenError as exc:
            raise ReplicaError(f"{self.host}: cannot open a channel: {exc.reason}") from None
        except asyncssh.SFTPError as exc:
            raise ReplicaError(f"{self.host}: SFTP failed ({exc.reason}): check that the server "
                               "offers the sftp subsystem, or install mailmirror there") from None
        except (asyncssh.ConnectionLost, BrokenPipeError, ConnectionResetError) as exc:
            raise ReplicaError(f"{self.host}: connection lost ({_reason(exc)}); nothing "
                               "half-written was published: run the sync again") from None
        except asyncssh.KeyImportError as exc:
            raise ReplicaError(f"{self.host}: cannot use the key ({exc}): give --identity (or "
                               "IdentityFile) the private key file, not the .pub") from None
        except asyncssh.Error as exc:
            raise ReplicaError(f"{self.host}: {exc.reason}") from None
        except ConnectionRefusedError:
            raise ReplicaError(f"{self.host}: connection refused: is sshd running, and is the "
                               "port right?") from None
        except socket.gaierror as exc:
            raise ReplicaError(f"{self.host}: cannot resolve the host name ({exc.strerror})"
                               ) from None
        except OSError as exc:
            if not self._connected and exc.filename:  # a file the connection is made from
                raise ReplicaError(f"{self.host}: cannot read {exc.filename} "
                                   f"({exc.strerror or exc}): check --identity, --ssh-config "
                                   "and --known-hosts (or the profile's)") from None
            if not self._connected:
                raise ReplicaError(f"{self.host}: {exc.strerror or exc}") from None
            raise ReplicaError(f"{self.host}: connection lost ({exc.strerror or exc}); nothing "
                               "half-written was published: run the sync again") from None

    def _host_is_known(self) -> bool:
        """Whether known_hosts has keys for this host at all (then a mismatch is a change).

        Resolved the way the connection was: ssh_config aliases, ports and known_hosts files.
        """
        try:
            options = self._options()
            files = options.known_hosts
            if files is None:
                files = [str(Path("~/.ssh/known_hosts").expanduser())]
            elif isinstance(files, str | Path):
                files = [str(files)]
            for path in files:
                known = asyncssh.read_known_hosts(str(path))
                if known.match(options.host, "", options.port)[0]:
                    return True
        except (OSError, ValueError, TypeError, asyncssh.Error):
            return False
        return False

    def target(self) -> tuple[str, int] | None:
        """Host name and port the connection went to after ssh_config (None: a proxy's)."""
        options = self._options()
        if options.tunnel or options.proxy_command:
            return None
        return options.host, options.port

    def _options(self) -> asyncssh.SSHClientConnectionOptions:
        """The options the connection was made with."""
        return _client_options(**self._connect_args())

    def _connect_args(self) -> dict[str, Any]:
        opts = self.options
        kwargs: dict[str, Any] = {"host": self.host}
        if self.remote.port:
            kwargs["port"] = self.remote.port
        if self.remote.user:
            kwargs["username"] = self.remote.user
        if opts.config:
            kwargs["config"] = [str(opts.config)]
        if opts.identity:
            kwargs["client_keys"] = [str(opts.identity)]
        if opts.known_hosts:
            kwargs["known_hosts"] = str(opts.known_hosts)
        return kwargs

    async def _connect(self) -> asyncssh.SSHClientConnection:
        kwargs = self._connect_args()
        host = kwargs.pop("host")
        conn = await asyncssh.connect(host, connect_timeout=self.options.connect_timeout,
                                      keepalive_interval=self.options.keepalive,
                                      keepalive_count_max=3, **_ciphers(host, kwargs), **kwargs)
        _ack_at_once(conn)
        _gather_writes(conn)
        return conn

    def open_agent(self, path: str, layout: str, sep: str, readonly: bool,
                   command: str | None = None) -> AgentReplica:
        """Start `COMMAND PATH` on the remote and speak the agent protocol to it.

        COMMAND defaults to the session's --remote-command; PATH is shell-quoted.
        """
        program = command or self.options.remote_command or DEFAULT_AGENT
        command = f"{program} {shlex.quote(path)}"

        async def start() -> asyncssh.SSHClientProcess:
            return await self.conn.create_process(command, encoding=None)

        process = self.run(start(), self.options.connect_timeout)
        channel = SshChannel(self, process, program)
        label = self.remote.label() if self.remote.path == path else f"{self.host}:{path}"
        return AgentReplica(channel, label, layout, sep, readonly)

    def open_sftp(self, path: str, layout: str, sep: str, readonly: bool) -> SftpReplica:
        """The same maildir over SFTP: for remotes without mailmirror, or with --sftp."""
        if self._sftp is None:
            async def start() -> asyncssh.SFTPClient:
                return await self.conn.start_sftp_client()

            self._sftp = self.run(start(), self.options.connect_timeout)
        label = self.remote.label() if self.remote.path == path else f"{self.host}:{path}"
        return open_sftp(self._sftp, self._loop.loop, path, layout, sep, readonly,
                         f"{label} (sftp)")

    def close(self) -> None:
        async def close() -> None:
            # on the loop's thread: asyncio transports are not thread-safe, and closing from
            # ours raced the loop tearing a connection down that the server had just closed
            # (a traceback after a completed sync, seen once in CI)
            if self._sftp is not None:
                self._sftp.exit()
            self.conn.close()
            await self.conn.wait_closed()

        try:
            self._loop.run(close(), 5)
        except (TimeoutError, OSError, asyncssh.Error):
            pass
        self._loop.close()


def _ack_at_once(conn: asyncssh.SSHClientConnection) -> None:
    """Acknowledge what the server sends at once instead of up to 40 ms later (Linux).

    sshd leaves Nagle's algorithm on for sessions without a terminal: a small packet it sends
    while an earlier one is not acknowledged yet waits for that acknowledgement, which our
    kernel delays while we have nothing to send. Right after authentication sshd sends a few
    such packets, and its answer to our first channel request then waited 40 ms (45-50 ms
    for the channel where 2-6 ms would do). TCP_QUICKACK does not stick, so it is set again
    after every read.
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    sock = conn.get_extra_info("socket")
    if quickack is None or sock is None:
        return
    received = conn.data_received

    def ack() -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except OSError:
            pass  # the connection is closing: its error comes through asyncssh

    def data_received(data: bytes) -> None:
        received(data)
        ack()

    conn.data_received = data_received  # type: ignore[method-assign]
    ack()  # what arrived before this was installed


class _GatheredWrites:
    """A connection's transport that writes the SSH packets of one event-loop turn at once.

    asyncssh writes each packet on its own, and an SSH_MSG_IGNORE before each: a copy made
    65,000 socket writes per GiB, and sshd woke as often to read them. Gathered, sending 1 GiB
    took 3.0-3.2 s of the client's CPU instead of 3.9-4.6 s, and sshd's 1.7 s instead of
    2.5 s. The order of writes is kept; abort drops what waits, as the transport's own
    abort drops its buffer.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []
        self._size = 0
        self._due = False

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= GATHER_BYTES:
            self._flush()
        elif not self._due:
            self._due = True
            self._loop.call_soon(self._flush_due)

    def _flush_due(self) -> None:
        self._due = False
        self._flush()

    def _flush(self) -> None:
        if not self._parts:
            return
        parts, self._parts, self._size = self._parts, [], 0
        try:
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
        except ConnectionError:
            pass  # as asyncssh's own write: the lost connection is reported by asyncssh
        except Exception:
            # bytes dropped mid-stream would leave a gap in it: end the connection instead,
            # which asyncssh then reports as lost
            self._transport.abort()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._parts, self._size = [], 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _gather_writes(conn: asyncssh.SSHClientConnection) -> None:
    """Install _GatheredWrites under the connection (on the loop, right after connect);
    an asyncssh without the attribute it replaces keeps writing packet by packet."""
    transport = getattr(conn, "_transport", None)
    if transport is not None and callable(getattr(transport, "write", None)):
        conn._transport = _GatheredWrites(transport, asyncio.get_running_loop())


def _client_options(**kwargs: Any) -> asyncssh.SSHClientConnectionOptions:
    """Connection options with ssh_config applied as connect() applies it (without
    config=(), SSHClientConnectionOptions skips ~/.ssh/config)."""
    return asyncssh.SSHClientConnectionOptions(**({"config": ()} | kwargs))


def _ciphers(host: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """AES-GCM before ChaCha20 unless ssh_config names its own Ciphers.

    Both are OpenSSH's AEAD ciphers; asyncssh's ChaCha20 costs Python work per packet
    (119 MiB/s here) where AES-GCM is one call (190 MiB/s): a first copy moves every byte.
    """
    algs = _client_options(host=host, **kwargs).encryption_algs
    if list(algs) != list(asyncssh.encryption.get_default_encryption_algs()):
        return {}  # the user's choice
    gcm = [alg for alg in algs if alg.endswith(b"-gcm@openssh.com")]
    return {"encryption_algs": [a.decode() for a in gcm + [a for a in algs if a not in gcm]]}
