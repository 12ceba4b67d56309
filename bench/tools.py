"""How each tool is run: its command line, environment and one-off preparation.

The commands are the ones in /work/shared/notes/anchors.md, so figures measured here sit beside
the published ones. A tool never sees another tool's files: each run gets a fresh `Pair`.

Transport hook (issue 3): every command spells replica B through `Transport.address`. The SSH
cases will add a sibling of `Local` that starts a loopback sshd and returns each tool's remote
spelling of B (unison `ssh://127.0.0.1//abs/B` plus `-sshargs`, rsync `-e 'ssh -F cfg -p port'`,
mailmirror `ssh://...`); tools that cannot sync over SSH (doveadm here) will say so in `supports`.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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


class Transport(Protocol):
    """Where replica B lives and how each tool names it."""

    label: str

    def address(self, path: Path) -> str:
        """B's path as the tools spell it on their command line."""
        ...


class Local:
    """Both replicas on this machine, B named by its path."""

    label = "local"

    def address(self, path: Path) -> str:
        return str(path)


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]


class Tool:
    """A sync tool under test. `two_way` tools run the delta case; rsync is the one-way floor."""

    name: str
    two_way = True

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


class Mailmirror(Tool):
    name = "mailmirror"

    def __init__(self, exe: str) -> None:
        self.exe = exe

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
        argv = [self.exe, "sync", str(pair.a), transport.address(pair.b)]
        return Command(argv + ["--state", str(pair.state / "state.sqlite3"), "--json"], env)

    def idle_problem(self, stdout: str) -> str | None:
        try:
            counts = json.loads(stdout)["counts"]
        except (ValueError, KeyError, TypeError):
            return f"no JSON object with counts on stdout: {stdout[:200]!r}"
        return f"acted in a sync with nothing to do: {counts}" if counts else None


class Unison(Tool):
    name = "unison"

    def command(self, pair: Pair, transport: Transport) -> Command:
        argv = ["unison", str(pair.a), transport.address(pair.b), "-batch", "-times"]
        argv += ["-log=false", "-confirmbigdel=false", "-contactquietly", "-silent"]
        return Command(argv, dict(os.environ, UNISON=str(pair.state)))


class Rsync(Tool):
    name = "rsync"
    two_way = False

    def command(self, pair: Pair, transport: Transport) -> Command:
        argv = ["rsync", "-a", "--delete", f"{pair.a}/", f"{transport.address(pair.b)}/"]
        return Command(argv, dict(os.environ))


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
        return transport.label == "local"

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
        "unison": Unison(),
        "rsync": Rsync(),
        "doveadm": Doveadm(),
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]
