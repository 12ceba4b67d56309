"""End-to-end fixtures: real maildirs changed by Dovecot's `doveadm`, synced by the installed
`mailmirror` command, read back independently by Python's `mailbox.Maildir` and by `doveadm`.

Dovecot refuses mail access as root, so everything runs as one unprivileged user: `mmtest`
(created as a system user when the tests run as root, with setpriv to switch to it) or the
current user otherwise. mailmirror runs as that same user, so every file has one owner.

Each replica gets its own Dovecot config (anchors.md), with one deliberate difference: the
index and control files stay inside the maildir (Dovecot's default, as on a real server).
With anchors.md's separate INDEX=/CONTROL= directories, `dovecot-keywords` and
`dovecot-uidlist` would live outside the tree, so neither the keyword translation nor the
"Dovecot files are never copied" rule could be observed.

Every scenario runs over four transports (the `pair` fixture is parametrized): B as a local
path, B reached over SSH through `mailmirror agent`, the same with --keep-connection (every
sync after a scenario's first goes through the keeper the one before left), and B reached over
SFTP (`--sftp`); live mode keeps its own connection, so its scenarios skip the third
(watchkit.py). The SSH transports go through a real OpenSSH sshd on 127.0.0.1
(tests/ssh/sshrig.py, one per session) and log in as the same unprivileged user, so the remote
side writes B's files as the user doveadm runs as. For that login the user needs a shell and
an unlocked account (sshd refuses a `!` password field even for keys), and the rig's files
live in the session workspace, which that user can traverse.

No doveadm (or, for the SSH transports, no sshd): skip, except under CI=true, where a missing
component must fail the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mailbox
import os
import pwd
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import missing, require
from tests.ssh.sshrig import ALIAS, SshRig, running_rig

MAILMIRROR = str(Path(sys.executable).with_name("mailmirror"))
TEST_USER = "mmtest"
INBOX = "INBOX"
SYSTEM_FLAGS = {"\\Seen": "S", "\\Answered": "R", "\\Flagged": "F", "\\Deleted": "T",
                "\\Draft": "D"}
DOVECOT_FILE_PREFIXES = ("dovecot-uidlist", "dovecot.index", "dovecot.list.index",
                         "dovecot-uidvalidity")
TRANSPORTS = ("local", "agent", "kept", "sftp")
AGENT_COMMAND = f"{MAILMIRROR} agent"




# ---------------------------------------------------------------------------------------------
# the unprivileged user


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    prefix: tuple[str, ...]  # argv prefix that runs a command as this user

    def run(self, argv: list[str], env: dict[str, str], stdin: bytes | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self.prefix, *argv], input=stdin, env=env,
                              capture_output=True, timeout=timeout, cwd="/")

    def own(self, *paths: Path) -> None:
        """Give paths (recursively) to this user; a no-op when we already are that user."""
        if os.geteuid() != 0:
            return
        for top in paths:
            os.chown(top, self.uid, self.gid)
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    os.chown(os.path.join(dirpath, name), self.uid, self.gid, follow_symlinks=False)


@pytest.fixture(scope="session")
def user() -> User:
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return User(entry.pw_name, entry.pw_uid, entry.pw_gid, ())
    if shutil.which("setpriv") is None:
        missing("setpriv (util-linux)")
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh",
                        TEST_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(TEST_USER)
    _allow_ssh_login(entry)
    prefix = ("setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups")
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, prefix)


def _allow_ssh_login(entry: pwd.struct_passwd) -> None:
    """sshd runs remote commands with the user's shell and refuses locked accounts (a `!`
    password field), even for key logins: give the test user a shell and a `*` password
    (no password can match it, but the account is not locked)."""
    if os.path.basename(entry.pw_shell) in ("nologin", "false", ""):
        subprocess.run(["usermod", "--shell", "/bin/sh", entry.pw_name], check=True,
                       capture_output=True)
    if _password_field(entry.pw_name).startswith("!"):
        subprocess.run(["usermod", "--password", "*", entry.pw_name], check=True,
                       capture_output=True)


def _password_field(name: str) -> str:
    try:
        lines = Path("/etc/shadow").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split(":")
        if fields[0] == name and len(fields) > 1:
            return fields[1]
    return ""


@pytest.fixture(scope="session")
def doveadm() -> str:
    path = shutil.which("doveadm") or ("/usr/bin/doveadm" if os.path.exists("/usr/bin/doveadm")
                                       else None)
    if path is None:
        missing("doveadm (dovecot-core)")
    return path


@pytest.fixture(scope="session")
def workspace(user: User) -> Iterator[Path]:
    """One directory for the session, on tmpfs when there is one (fast, stable)."""
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    top = Path(tempfile.mkdtemp(prefix="mm-e2e-", dir=parent))
    top.chmod(0o755)
    user.own(top)
    yield top
    _make_removable(top)
    shutil.rmtree(top, ignore_errors=True)


def _make_removable(top: Path) -> None:
    for dirpath, _, _ in os.walk(top):
        try:
            os.chmod(dirpath, 0o700)
        except OSError:
            pass


@pytest.fixture
def scratch(workspace: Path, user: User, request: pytest.FixtureRequest) -> Path:
    # short: Dovecot puts unix sockets under it (108 bytes at most)
    path = Path(tempfile.mkdtemp(prefix="t", dir=workspace))
    (path / "test-name").write_text(request.node.nodeid + "\n")
    path.chmod(0o755)
    for sub in ("home", "config", "xdgstate"):
        (path / sub).mkdir()
    user.own(path)
    return path


# ---------------------------------------------------------------------------------------------
# running mailmirror as the user


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)

    @property
    def counts(self) -> dict[str, int]:
        return self.json["counts"]

    def assert_clean_error(self, rc: int) -> str:
        """Exit code `rc`, exactly one line on stderr, no traceback; returns the line."""
        assert self.rc == rc, (self.rc, self.stdout, self.stderr)
        assert "Traceback" not in self.stderr + self.stdout, self.stderr
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("mailmirror: "), lines[0]
        return lines[0]


@dataclass
class Cli:
    user: User
    scratch: Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.scratch / "home"),
            "XDG_CONFIG_HOME": str(self.scratch / "config"),
            "XDG_STATE_HOME": str(self.scratch / "xdgstate"),
            "LANG": "C.UTF-8",
        }
        return env | (extra or {})

    def run(self, *args: str, env: dict[str, str] | None = None, fork: bool | None = None) -> Run:
        """Run `mailmirror ARGS` as the user; the exit code, stdout and stderr.

        fork=False runs the installed console script in a new process (setpriv when root):
        the exact thing a user runs. fork=True (the default for sync scenarios, to keep the
        suite fast) forks this process, switches to the user like setpriv --init-groups does,
        and calls the same entry point, skipping ~0.3 s of interpreter start and imports.
        MAILMIRROR_E2E_SUBPROCESS=1 makes every run a real process.
        """
        if fork is None:
            fork = os.environ.get("MAILMIRROR_E2E_SUBPROCESS") != "1"
        if fork:
            return _run_forked(self.user, list(args), self.env(env))
        done = self.user.run([MAILMIRROR, *args], self.env(env))
        return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def _run_forked(user: User, args: list[str], env: dict[str, str]) -> Run:
    import mailmirror.cli

    _preload()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.close(out_r)
            os.close(err_r)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdin = open(0, closefd=False)  # noqa: SIM115
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            if os.geteuid() == 0:
                os.initgroups(user.name, user.gid)
                os.setgid(user.gid)
                os.setuid(user.uid)
            os.chdir("/")
            os.environ.clear()
            os.environ.update(env)
            sys.argv = [MAILMIRROR, *args]
            try:
                mailmirror.cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(out_w)
    os.close(err_w)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    with selectors.DefaultSelector() as sel:
        for fd in chunks:
            sel.register(fd, selectors.EVENT_READ)
        open_fds = set(chunks)
        while open_fds:
            for key, _ in sel.select(timeout=60):
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
                    open_fds.discard(key.fd)
    os.close(out_r)
    os.close(err_r)
    _, status = os.waitpid(pid, 0)
    return Run(os.waitstatus_to_exitcode(status), b"".join(chunks[out_r]).decode(),
               b"".join(chunks[err_r]).decode())


def _preload() -> None:
    """Import what `sync` imports lazily, once, so forked runs do not pay for it each time."""
    import importlib

    for name in ("mailmirror.paths", "mailmirror.config", "mailmirror.report",
                 "mailmirror.store", "mailmirror.replica.local", "mailmirror.sync.engine",
                 "mailmirror.sync.lock", "mailmirror.sync.state", "mailmirror.jobs",
                 "mailmirror.transport.ssh"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


@pytest.fixture
def cli(user: User, scratch: Path) -> Cli:
    if not os.access(MAILMIRROR, os.X_OK):
        pytest.fail(f"{MAILMIRROR} missing: run bash scripts/setup --test")
    return Cli(user, scratch)


# ---------------------------------------------------------------------------------------------
# one replica, acted on by doveadm like a mail client


@dataclass(frozen=True)
class Found:
    folder: str
    uid: int
    flags: frozenset[str]  # IMAP names: \Seen, $Label1 (\Recent left out)
    message_id: str


class Replica:
    """A maildir root plus the Dovecot config that lets doveadm act on it."""

    def __init__(self, name: str, scratch: Path, user: User, doveadm: str,
                 control_elsewhere: bool = False) -> None:
        self.name = name
        self.root = scratch / name
        self.user = user
        self.doveadm_path = doveadm
        self.home = scratch / f"d{name}"
        for sub in ("run", "state"):
            (self.home / sub).mkdir(parents=True)
        self.conf = scratch / f"dovecot-{name}.conf"
        # anchors.md's layout: index and control files (dovecot-keywords too) outside the tree
        location_extra = (f":INDEX={self.home}/idx:CONTROL={self.home}/ctl"
                          if control_elsewhere else "")
        self.conf.write_text(
            "protocols =\n"
            f"base_dir = {self.home}/run\n"
            f"state_dir = {self.home}/state\n"
            "ssl = no\n"
            f"mail_uid = {user.name}\n"
            f"mail_gid = {user.gid}\n"
            f"mail_location = maildir:{self.root}{location_extra}\n"
            "userdb {\n  driver = static\n"
            f"  args = home={self.home}\n}}\n"
            "namespace inbox {\n  inbox = yes\n  separator = /\n}\n"
        )
        user.own(self.home, self.conf)

    # -- doveadm ------------------------------------------------------------------------------

    def doveadm(self, *args: str, stdin: bytes | None = None) -> str:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "USER": self.user.name,
               "HOME": str(self.home), "LANG": "C.UTF-8"}
        done = self.user.run([self.doveadm_path, "-c", str(self.conf), *args], env, stdin)
        out, err = done.stdout.decode(), done.stderr.decode()
        assert done.returncode == 0 and "Error" not in err, (
            f"doveadm {' '.join(args)} on {self.name}: rc={done.returncode}\n{err}")
        return out

    def create(self, folder: str) -> None:
        self.doveadm("mailbox", "create", folder)

    def save(self, message_id: str, folder: str = INBOX, subject: str = "test",
             body: str = "hello\n") -> str:
        """Deliver a generated RFC 822 message with `doveadm save` (lands in new/)."""
        msgid = f"<{message_id}@e2e.test>"
        text = (f"From: Alice <alice@e2e.test>\nTo: Bob <bob@e2e.test>\n"
                f"Subject: {subject} {message_id}\nMessage-ID: {msgid}\n"
                "Date: Mon, 01 Jan 2024 12:00:00 +0000\nMIME-Version: 1.0\n"
                f"Content-Type: text/plain; charset=utf-8\n\n{body}")
        self.doveadm("save", "-m", folder, stdin=text.encode())
        return msgid

    def fetch_all(self) -> list[Found]:
        out = self.doveadm("-f", "tab", "fetch", "mailbox uid flags hdr.message-id",
                           "mailbox", "*", "all")
        found = []
        for line in out.splitlines()[1:]:
            if not line.strip():
                continue
            folder, uid, flags, msgid = line.split("\t")
            names = frozenset(f for f in flags.split() if f != "\\Recent")
            found.append(Found(folder, int(uid), names, msgid.strip()))
        return found

    def find(self, msgid: str) -> list[Found]:
        return [f for f in self.fetch_all() if f.message_id == msgid]

    def one(self, msgid: str) -> Found:
        hits = self.find(msgid)
        assert len(hits) == 1, f"{msgid} on {self.name}: {hits}"
        return hits[0]

    def flags(self, msgid: str) -> frozenset[str]:
        """`doveadm fetch flags` of the one message with this Message-ID."""
        return self.one(msgid).flags

    def flags_add(self, msgid: str, *flags: str) -> None:
        hit = self.one(msgid)
        self.doveadm("flags", "add", " ".join(flags), "mailbox", hit.folder, "uid", str(hit.uid))
        assert set(flags) <= self.flags(msgid)

    def flags_remove(self, msgid: str, *flags: str) -> None:
        hit = self.one(msgid)
        self.doveadm("flags", "remove", " ".join(flags), "mailbox", hit.folder, "uid",
                     str(hit.uid))
        assert not set(flags) & self.flags(msgid)

    def move(self, msgid: str, dest: str) -> None:
        hit = self.one(msgid)
        self.doveadm("move", dest, "mailbox", hit.folder, "uid", str(hit.uid))
        assert self.one(msgid).folder == dest

    def expunge(self, msgid: str) -> None:
        hit = self.one(msgid)
        self.doveadm("expunge", "mailbox", hit.folder, "uid", str(hit.uid))
        assert not self.find(msgid)

    def mailboxes(self) -> set[str]:
        return set(self.doveadm("mailbox", "list").split())

    # -- what a client like mutt does without Dovecot -------------------------------------------

    def rename_file(self, msgid: str, subdir: str, flags: str) -> None:
        """Rename the message file to subdir/UNIQUE:2,FLAGS, as a maildir client does."""
        (msg,) = [m for m in self.messages() if m.message_id == msgid]
        target = msg.path.parent.parent / subdir / f"{msg.path.name.split(':')[0]}:2,{flags}"
        os.rename(msg.path, target)

    # -- independent reading --------------------------------------------------------------------

    def messages(self) -> list[Message]:
        return read_messages(self.root)

    def folders(self) -> set[str]:
        box = mailbox.Maildir(self.root, factory=None, create=False)
        return {INBOX} | {f.replace(".", "/") for f in box.list_folders()}

    def files(self) -> dict[str, str]:
        """Every regular file under the root -> sha256 of its content."""
        return tree_files(self.root)


@dataclass(frozen=True)
class Message:
    folder: str
    subdir: str  # "new" or "cur"
    flags: str  # letters after "2," exactly as on disk
    message_id: str
    content: bytes
    path: Path


def read_messages(root: Path) -> list[Message]:
    """Every message of a Maildir++ tree, read with Python's mailbox module."""
    top = mailbox.Maildir(root, factory=None, create=False)
    boxes = [(INBOX, top)] + [(f.replace(".", "/"), top.get_folder(f))
                              for f in sorted(top.list_folders())]
    out = []
    for folder, box in boxes:
        for key in box.keys():
            msg = box.get_message(key)
            subpath = box._toc[key]  # the file name is what the tests check
            out.append(Message(folder, msg.get_subdir(), msg.get_flags(),
                               str(msg["Message-ID"]), box.get_bytes(key),
                               Path(box._path) / subpath))
    return out


def tree_files(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def tree_listing(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under root (dirs too) -> (mode, content hash or '')."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = (os.lstat(path).st_mode, "")
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(path, root)] = (os.lstat(path).st_mode, digest)
    return out


class Pair:
    """Replicas A and B, a state database, and the mailmirror command between them.

    `transport` says how the command reaches B: "local" (a path), "agent" (B as
    ssh://USER@mailhost/PATH, served by `mailmirror agent` started over SSH by each sync:
    --keep-connection 0), "kept" (the same with --keep-connection 60: a keeper's connection
    from the second sync on) or "sftp" (B as
    USER@mailhost:PATH with --sftp). B is on this machine in every case, so the scenarios
    read and change its files directly.
    """

    def __init__(self, scratch: Path, user: User, doveadm: str, cli: Cli,
                 transport: str = "local", rig: SshRig | None = None,
                 run_dir: Path | None = None) -> None:
        self.scratch = scratch
        self.a = Replica("A", scratch, user, doveadm)
        self.b = Replica("B", scratch, user, doveadm)
        self.state = scratch / "state.db"
        self.cli = cli
        self.transport = transport
        self.rig = rig
        self.run_dir = run_dir  # the keepers' XDG_RUNTIME_DIR ("kept")

    def b_address(self) -> str:
        if self.transport in ("agent", "kept"):
            return f"ssh://{self.b.user.name}@{ALIAS}{self.b.root}"
        if self.transport == "sftp":
            return f"{self.b.user.name}@{ALIAS}:{self.b.root}"
        return str(self.b.root)

    def transport_args(self, watch: bool = False) -> list[str]:
        """The options of a sync (or, `watch`, of a watch: it keeps no connections) over
        this pair's transport."""
        if self.transport == "local":
            return []
        assert self.rig is not None
        args = ["--ssh-config", str(self.rig.ssh_config), "--identity", str(self.rig.user_key),
                "--known-hosts", str(self.rig.known_hosts), "--remote-command", AGENT_COMMAND]
        if self.transport == "sftp":
            return [*args, "--sftp"]
        if watch:
            return args
        # "agent" is every sync connecting itself: the kept path is the "kept" transport's
        return [*args, "--keep-connection", "60" if self.transport == "kept" else "0"]

    def sync(self, *extra: str, expect_rc: int | None = 0) -> Run:
        env = {"XDG_RUNTIME_DIR": str(self.run_dir)} if self.run_dir else None
        run = self.cli.run("sync", str(self.a.root), self.b_address(), "--state",
                           str(self.state), "--json", *self.transport_args(), *extra, env=env)
        assert expect_rc is None or run.rc == expect_rc, (run.rc, run.stdout, run.stderr)
        assert "Traceback" not in run.stderr, run.stderr
        if run.rc in (0, 1):
            self._check_transport(run)
        return run

    def _check_transport(self, run: Run) -> None:
        """B was really reached the way the parameter says (no silent fallback)."""
        label = run.json["b"]
        if self.transport == "local":
            assert label == str(self.b.root) or ALIAS not in label, label
        elif self.transport in ("agent", "kept"):
            assert ALIAS in label and "sftp" not in label, (label, run.stderr)
            assert "using SFTP" not in run.stderr, run.stderr
        else:
            assert ALIAS in label and label.endswith("(sftp)"), label

    def assert_in_sync(self) -> None:
        """Both trees hold the same messages, folders, flags and contents, and no duplicate."""
        a, b = self.a.messages(), self.b.messages()
        for side in (a, b):
            ids = [m.message_id for m in side]
            assert len(ids) == len(set(ids)), f"duplicate messages: {sorted(ids)}"
        view_a = {m.message_id: (m.folder, m.subdir, m.content) for m in a}
        view_b = {m.message_id: (m.folder, m.subdir, m.content) for m in b}
        assert view_a == view_b
        assert self.a.folders() == self.b.folders()

    def assert_nothing_planned(self) -> None:
        dry = self.sync("--dry-run")
        assert dry.counts == {}, dry.json
        assert dry.json.get("plan", []) == [], dry.json
        real = self.sync()
        assert real.counts == {}, real.json
        assert real.json["conflicts"] == [] and real.json["skipped"] == []


@pytest.fixture(scope="session")
def e2e_rig(workspace: Path, user: User) -> Iterator[SshRig]:
    """One sshd for the session's SSH transports, its files where the test user can read
    them (the private key is given to that user: the client runs as it)."""
    with running_rig(workspace / "ssh", require("sshd")) as rig:
        if os.geteuid() == 0:
            os.chown(rig.user_key, user.uid, user.gid)
        yield rig


@pytest.fixture(scope="session")
def kept_run_dir(user: User) -> Iterator[Path]:
    """XDG_RUNTIME_DIR for the "kept" transport (short: it holds Unix sockets), the test
    user's; the keepers left there are stopped at the end."""
    path = Path(tempfile.mkdtemp(prefix="mmrun-"))
    if os.geteuid() == 0:
        os.chown(path, user.uid, user.gid)
    yield path
    for lock in path.glob("mailmirror/*.lock"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(lock.read_text()), signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def make_pair(request: pytest.FixtureRequest, scratch: Path, user: User, doveadm: str,
              cli: Cli) -> Pair:
    """The `pair` fixture's body, for modules that narrow its transports."""
    transport = request.param
    rig = request.getfixturevalue("e2e_rig") if transport != "local" else None
    run_dir = request.getfixturevalue("kept_run_dir") if transport == "kept" else None
    return Pair(scratch, user, doveadm, cli, transport, rig, run_dir)


pair = pytest.fixture(params=TRANSPORTS, name="pair")(make_pair)


def letters(flags: frozenset[str]) -> str:
    """The maildir letters of the system flags among IMAP flag names."""
    return "".join(sorted(SYSTEM_FLAGS[f] for f in flags if f in SYSTEM_FLAGS))
