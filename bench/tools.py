"""How each tool is run: its command line, environment and one-off preparation.

The commands are the ones in /work/shared/notes/anchors.md, so figures measured here sit beside
the published ones. A tool never sees another tool's files: each run gets a fresh `Pair`.

Transports: replica B is either local (`Local`) or behind the loopback sshd of `bench.ssh`
(`Ssh`), whose `SshEndpoint` says how to reach it. Each tool spells B its own way from that
(unison `ssh://127.0.0.1//abs/B` plus `-sshargs`, rsync `-e 'ssh -F cfg -p port'`, mailmirror
`ssh://127.0.0.1:port/abs/B` with the rig's key, known_hosts and ssh_config), and starts its
remote half through the endpoint's `remote_time` wrapper so that the remote peak memory is
measured too. Tools that cannot sync over SSH (doveadm, mbsync) or only over SSH (mailmirror
--sftp) say so in `supports`. A tool whose documented semantics differ from a mirror's (mbsync
flags deletions instead of removing them) says what it must leave in `expected`.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bench.gen import Delta
from bench.maildir import Key, State

DOVEADM_USER = "mmbench"
"""Dovecot refuses mail access as root: when run as root, doveadm's trees belong to this user."""


@dataclass(frozen=True)
class Pair:
    """One run's replicas and the tool's private state, all under `root` (a fresh directory)."""

    root: Path

    @property
    def a(self) -> Path:
        return self.root / "A"

    @property
    def b(self) -> Path:
        return self.root / "B"

    @property
    def state(self) -> Path:
        return self.root / "state"


@dataclass(frozen=True)
class SshEndpoint:
    """How to reach replica B's machine: a loopback sshd and the client files for it."""

    host: str  # "127.0.0.1"; the ssh_config has a Host block for it (and the `mailhost` alias)
    port: int
    config: Path  # client ssh_config
    identity: Path  # user key
    known_hosts: Path
    remote_time: Path
    """Runs its arguments under GNU time on the remote side; the peak lands in the transport's
    peak directory (see `bench.ssh.Ssh.remote_peak_mb`)."""

    @property
    def mailmirror_args(self) -> list[str]:
        """The options that make mailmirror use only these client files."""
        return ["--ssh-config", str(self.config), "--identity", str(self.identity),
                "--known-hosts", str(self.known_hosts)]

    @property
    def ssh_args(self) -> str:
        """Options for OpenSSH, as unison's `-sshargs` and rsync's `-e 'ssh ...'` take them."""
        return f"-F {self.config} -p {self.port}"


class Transport(Protocol):
    """Where replica B lives and how each tool names it."""

    label: str
    ssh: SshEndpoint | None  # None: B is a local path

    def address(self, path: Path) -> str:
        """B as scp-style `host:path` (remote) or its path (local)."""
        ...

    def before_run(self, kept: Callable[[], int] = lambda: 0) -> None:
        """Called before each run of a tool: wait until the previous run's remote side is gone
        (but for the kept() connections that outlive runs: mailmirror's keepers)."""
        ...

    def remote_peak_mb(self, kept: Callable[[], int] = lambda: 0) -> float | None:
        """After a run: the highest peak RSS of the processes started through `remote_time`
        during it (agent, sftp-server, unison -server, rsync --server), or None."""
        ...


class Local:
    """Both replicas on this machine, B named by its path."""

    label = "local"
    ssh: SshEndpoint | None = None

    def address(self, path: Path) -> str:
        return str(path)

    def before_run(self, kept: Callable[[], int] = lambda: 0) -> None:
        pass

    def remote_peak_mb(self, kept: Callable[[], int] = lambda: 0) -> float | None:
        return None


def ssh_env(env: dict[str, str]) -> dict[str, str]:
    """No ssh-agent: every tool authenticates with the rig's key only."""
    return {k: v for k, v in env.items() if k != "SSH_AUTH_SOCK"}


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]


class Tool:
    """A sync tool under test. `two_way` tools run the delta case; rsync is the one-way floor.
    A tool that `renames` writes copies under file names of its own, so the checks find its
    messages by Message-ID (`bench.maildir.MessageIds`) instead of by name."""

    name: str
    two_way = True
    renames = False
    added_header = b""
    """A header line the tool writes into every copy (mbsync's X-TUID): the size and content
    checks compare messages without it, and the table says so."""

    def check_ready(self) -> str | None:
        """Do one-off setup if needed; return why the tool cannot run here, or None."""
        exe = self.argv0()
        return None if shutil.which(exe) else f"{exe} not found (install it with apt)"

    def argv0(self) -> str:
        return self.name

    def supports(self, transport: Transport) -> bool:
        return True

    def prepare(self, pair: Pair) -> None:
        """Make the pair usable by the tool; called again after the harness changes the trees."""
        pair.state.mkdir(exist_ok=True)

    def command(self, pair: Pair, transport: Transport) -> Command:
        raise NotImplementedError

    def idle_problem(self, stdout: str) -> str | None:
        """For a sync that had nothing to do: why its output says it did something, or None."""
        return None

    pause = 0.0
    """Seconds the harness waits before each run (see Mailmirror)."""

    def kept(self) -> int:
        """SSH connections of this tool alive between its runs (mailmirror's keepers)."""
        return 0

    def finish(self) -> None:
        """After a tool's chain of runs: stop what it left running."""

    def differs(self) -> list[str]:
        """How every result of this tool differs from a mirror's, as the checks allow for."""
        return [f"{self.added_header.decode()} header added to copies"] if self.added_header else []

    def expected(self, before: State, delta: Delta) -> tuple[State, State, list[str]]:
        """What trees A and B must hold after the delta sync, and how that differs from a
        mirror's result (the same state on both) by the tool's documented semantics."""
        after = delta.expected(before)
        return after, after, self.differs()


class Mailmirror(Tool):
    """mailmirror as installed: over SSH through its agent, with the default --keep-connection
    auto, so after the first copy every run goes through the keeper the one before left, as
    in a cron job (docs/remote.md); or (`plain=True`, SSH only) with --keep-connection 0,
    every run connecting itself; or (`sftp=True`, SSH only) over SFTP."""

    name = "mailmirror"

    def __init__(self, exe: str, sftp: bool = False, plain: bool = False) -> None:
        self.exe, self.sftp, self.plain = exe, sftp, plain
        if sftp:
            self.name = "mailmirror-sftp"
        if plain:
            self.name = "mailmirror-plain"
        if not (sftp or plain):
            # a keeper starts the agent for the next run once a run ends (not during it:
            # CPU the run wants); cron runs are minutes apart, this harness's a few ms, so
            # it leaves the keeper this long, as the time between cron runs would
            self.pause = 2.0
        # the keepers' XDG_RUNTIME_DIR: short, it holds Unix sockets
        self.run_dir = Path(tempfile.gettempdir()) / f"mmbench-{os.getpid()}"

    def supports(self, transport: Transport) -> bool:
        return transport.ssh is not None or not (self.sftp or self.plain)

    def kept(self) -> int:
        return len(self._keepers())

    def _keepers(self) -> list[int]:
        pids = []
        for lock in self.run_dir.glob("mailmirror/*.lock"):
            text = lock.read_text().strip()
            if text.isdigit() and Path(f"/proc/{text}").exists():
                pids.append(int(text))
        return pids

    def finish(self) -> None:
        for pid in self._keepers():
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while self._keepers() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def check_ready(self) -> str | None:
        if not shutil.which(self.exe):
            return f"{self.exe} not found (run `bash scripts/setup --test`)"
        probe = subprocess.run([self.exe, "sync", "--help"], capture_output=True, text=True)
        return None if probe.returncode == 0 else f"`{self.exe} sync --help` failed"

    def command(self, pair: Pair, transport: Transport) -> Command:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMIRROR_")}
        # Keep the user's own config and state out of the measurement.
        env |= {
            "XDG_CONFIG_HOME": str(pair.state / "config"),
            "XDG_STATE_HOME": str(pair.state / "xdg-state"),
        }
        argv = [self.exe, "sync", str(pair.a)]
        if (ssh := transport.ssh) is None:
            argv.append(str(pair.b))
        else:
            env = ssh_env(env)
            exe = str(Path(shutil.which(self.exe) or self.exe).absolute())
            argv += [f"ssh://{ssh.host}:{ssh.port}{pair.b}", *ssh.mailmirror_args]
            agent = f"{ssh.remote_time} {exe} agent"
            argv += ["--sftp"] if self.sftp else ["--remote-command", agent]
            if self.plain:
                argv += ["--keep-connection", "0"]
            self.run_dir.mkdir(mode=0o700, exist_ok=True)
            env["XDG_RUNTIME_DIR"] = str(self.run_dir)
            env.pop("INVOCATION_ID", None)  # a bench started by a systemd unit: still cron's case
        return Command(argv + ["--state", str(pair.state / "state.sqlite3"), "--json"], env)

    def idle_problem(self, stdout: str) -> str | None:
        try:
            counts = json.loads(stdout)["counts"]
        except (ValueError, KeyError, TypeError):
            return f"no JSON object with counts on stdout: {stdout[:200]!r}"
        return f"acted in a sync with nothing to do: {counts}" if counts else None


class Unison(Tool):
    name = "unison"

    def prepare(self, pair: Pair) -> None:
        (pair.state / "server").mkdir(parents=True, exist_ok=True)

    def command(self, pair: Pair, transport: Transport) -> Command:
        env = dict(os.environ, UNISON=str(pair.state))
        if (ssh := transport.ssh) is None:
            argv = ["unison", str(pair.a), str(pair.b)]
        else:
            # The server's archive goes into the run's state too, not into ~/.unison.
            server = f"env UNISON={pair.state / 'server'} {ssh.remote_time} unison"
            argv = ["unison", str(pair.a), f"ssh://{ssh.host}/{pair.b}"]
            argv += ["-sshargs", ssh.ssh_args, "-servercmd", server]
            env = ssh_env(env)
        argv += ["-batch", "-times", "-log=false", "-confirmbigdel=false", "-contactquietly"]
        return Command(argv + ["-silent"], env)


class Rsync(Tool):
    name = "rsync"
    two_way = False

    def command(self, pair: Pair, transport: Transport) -> Command:
        argv = ["rsync", "-a", "--delete"]
        if (ssh := transport.ssh) is not None:
            argv += ["-e", f"ssh {ssh.ssh_args}", "--rsync-path", f"{ssh.remote_time} rsync"]
        argv += [f"{pair.a}/", f"{transport.address(pair.b)}/"]
        return Command(argv, ssh_env(dict(os.environ)))


DOVECOT_CONF = """\
protocols =
base_dir = {s}/run
state_dir = {s}/dstate
ssl = no
mail_uid = {user}
mail_gid = {group}
mail_location = maildir:{a}:INDEX={s}/idxA:CONTROL={s}/ctlA
userdb {{
  driver = static
  args = home={s}/home
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
"""


class Doveadm(Tool):
    """`doveadm sync` without a running Dovecot, configured as in anchors.md."""

    name = "doveadm"

    def supports(self, transport: Transport) -> bool:
        return transport.ssh is None

    def check_ready(self) -> str | None:
        if not shutil.which("doveadm"):
            return "doveadm not found (apt-get install dovecot-core)"
        if os.getuid() == 0 and not _user_exists(DOVEADM_USER):
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
                + [DOVEADM_USER],
                check=True,
            )
        return None

    def prepare(self, pair: Pair) -> None:
        s = pair.state
        for sub in ("home", "run", "dstate"):
            (s / sub).mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            user = group = DOVEADM_USER
            # The whole run directory, so that doveadm (as that user) can create B in it.
            subprocess.run(["chown", "-R", f"{user}:{user}", str(pair.root)], check=True)
        else:
            user = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
        (s / "dovecot.conf").write_text(DOVECOT_CONF.format(s=s, a=pair.a, user=user, group=group))

    def command(self, pair: Pair, transport: Transport) -> Command:
        s = pair.state
        target = f"maildir:{transport.address(pair.b)}:INDEX={s}/idxB:CONTROL={s}/ctlB"
        argv = ["doveadm", "-c", str(s / "dovecot.conf"), "sync", target]
        return Command(argv, dict(os.environ, USER="bench", HOME=str(s / "home")))


MBSYNCRC = """\
# Written by bench/tools.py: A is the far side, B the near side; both Maildir++.
MaildirStore a
Inbox {a}
SubFolders Maildir++

MaildirStore b
Inbox {b}
SubFolders Maildir++

Channel bench
Far :a:
Near :b:
Patterns *
Create Both
Expunge None
Sync All
SyncState {s}/
"""


class Mbsync(Tool):
    """mbsync (isync) between two local MaildirStores, with the sync state out of the trees.

    Local only: mbsync reaches a remote store over IMAP (a `Tunnel` can start an IMAP server
    over SSH), never a Maildir over SSH. It names the files it writes itself
    (`<time>.<pid>_<n>.<host>,U=<uid>:2,<flags>`) and appends `,U=<uid>` to the names of the
    files it finds, hence `renames`. `Expunge None` (its default): with `Expunge Both` every
    message flagged T on either side would be removed, so a deletion is propagated as the T flag
    on the other side."""

    name = "mbsync"
    renames = True
    added_header = b"X-TUID"

    def supports(self, transport: Transport) -> bool:
        return transport.ssh is None

    def check_ready(self) -> str | None:
        return None if shutil.which("mbsync") else "mbsync not found (apt-get install isync)"

    def prepare(self, pair: Pair) -> None:
        (pair.state / "mbsync").mkdir(parents=True, exist_ok=True)
        rc = MBSYNCRC.format(a=pair.a, b=pair.b, s=pair.state / "mbsync")
        (pair.state / "mbsyncrc").write_text(rc)

    def command(self, pair: Pair, transport: Transport) -> Command:
        argv = ["mbsync", "-c", str(pair.state / "mbsyncrc"), "-q", "bench"]
        return Command(argv, dict(os.environ))

    def expected(self, before: State, delta: Delta) -> tuple[State, State, list[str]]:
        """A deletion on one side leaves the other side's copy in place, flagged T (in cur/),
        as `Sync Delete` does without `Expunge`."""
        after = delta.expected(before)

        def keeping(deleted: tuple[Key, ...]) -> State:
            state = dict(after)
            for key in deleted:
                state[key] = ("cur", "".join(sorted(set(before[key][1]) | {"T"})))
            return state

        kept = len(delta.a.deletions) + len(delta.b.deletions)
        notes = self.differs() + [f"{kept} deletions only flagged T on the other side"]
        return keeping(delta.b.deletions), keeping(delta.a.deletions), notes


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def make_tools(names: list[str], mailmirror_exe: str) -> list[Tool]:
    """The tools named on the command line, in that order."""
    known: dict[str, Tool] = {
        "mailmirror": Mailmirror(mailmirror_exe),
        "mailmirror-sftp": Mailmirror(mailmirror_exe, sftp=True),
        "mailmirror-plain": Mailmirror(mailmirror_exe, plain=True),
        "unison": Unison(),
        "rsync": Rsync(),
        "doveadm": Doveadm(),
        "mbsync": Mbsync(),
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]
