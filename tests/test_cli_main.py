"""`mailmirror CMD ...` builds only CMD (cli.main); help, usage errors and exit codes must be
exactly those of the whole command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailmirror.cli import app

WHOLE = "import sys; from mailmirror.cli import app; sys.argv[0] = 'mailmirror'; app()"
ONE = "import sys; from mailmirror.cli import main; sys.argv[0] = 'mailmirror'; main()"
COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands if c.callback]


def run(program: str, *args: str) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-c", program, *args], capture_output=True,
                          text=True, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("args", [[c, "--help"] for c in COMMANDS]
                         + [["sync"], ["sync", "--bogus", "a", "b"], ["status", "x"]])
def test_one_command_behaves_as_the_whole_command_line(args: list[str]) -> None:
    assert run(ONE, *args) == run(WHOLE, *args)


def test_every_plain_command_is_covered() -> None:
    assert {"sync", "watch", "status", "agent", "init"} <= set(COMMANDS)


LEAVE = """
import atexit, sys, threading, time
from pathlib import Path
from mailmirror.main import leave
atexit.register(lambda: print("atexit ran", file=sys.stderr))
if len(sys.argv) > 2:
    def late() -> None:
        time.sleep(0.3)
        Path(sys.argv[2]).write_text("done")
    threading.Thread(target=late).start()
print("x" * 200_000, end="")
print("tail", end="")  # left in the buffer
code = sys.argv[1]
leave(int(code) if code.isdigit() else None if code == "none" else code)
"""


@pytest.mark.parametrize(("code", "status", "err"), [
    ("0", 0, ""), ("3", 3, ""), ("none", 0, ""), ("bad config", 1, "bad config\n")])
def test_the_quick_exit_keeps_output_status_and_atexit(code: str, status: int,
                                                       err: str) -> None:
    # the console entry point ends with leave() (mailmirror/main.py): nothing buffered may
    # be lost, and the status is sys.exit()'s
    got = run(LEAVE, code)
    assert got == (status, "x" * 200_000 + "tail", err + "atexit ran\n")


def test_the_quick_exit_waits_for_a_running_thread(tmp_path: Path) -> None:
    marker = tmp_path / "late"
    assert run(LEAVE, "0", str(marker))[0] == 0
    assert marker.read_text() == "done"


def test_the_entry_point_exits_with_the_commands_status() -> None:
    done = subprocess.run([sys.executable, "-m", "mailmirror", "sync", "--bogus"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "No such option" in done.stderr
    done = subprocess.run([sys.executable, "-m", "mailmirror", "status", "--help"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "Usage" in done.stdout


def _maildir(root: Path, messages: int) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for n in range(messages):
        (root / "cur" / f"{1700000000 + n}.M{n}P1.h:2,S").write_bytes(b"Subject: x\n\nb\n")
    return root


def test_output_that_cannot_be_written_neither_hides_nor_fakes_the_outcome(
        tmp_path: Path) -> None:
    """stdout closed (`>&-`) or stderr closed: the run's own status; a reader that leaves
    early (`| head -c1`): the rest is dropped, the run goes on; a full disk (/dev/full): one
    line, exit 3. Never a traceback."""
    a, state = _maildir(tmp_path / "a", 40), str(tmp_path / "s.db")
    base = [sys.executable, "-m", "mailmirror"]

    def run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args, "--state", state], text=True, **kw)

    closed = run(["sync", str(a), str(tmp_path / "b"), "--json"], stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE, pass_fds=(), preexec_fn=lambda: os.close(1))
    assert (closed.returncode, closed.stderr) == (0, ""), closed.stderr
    assert len(os.listdir(tmp_path / "b" / "cur")) == 40  # the sync did its work
    fatal = run(["sync", str(a), str(tmp_path / "nowhere" / "b")], stdout=subprocess.PIPE,
                preexec_fn=lambda: os.close(2))
    assert (fatal.returncode, fatal.stdout) == (3, "")
    many = _maildir(tmp_path / "many", 2000)  # a plan longer than a pipe holds (64 KiB)
    with subprocess.Popen([*base, "sync", str(many), str(tmp_path / "c"), "--dry-run",
                           "--state", state], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(1)
        proc.stdout.close()  # `| head -c1`: the reader leaves
        err = proc.stderr.read()
    assert (proc.returncode, err) == (0, ""), err
    with open("/dev/full", "w") as full:
        lost = run(["status", "--json"], stdout=full, stderr=subprocess.PIPE)
    assert lost.returncode == 3, lost.stderr
    assert lost.stderr == "mailmirror: cannot write the output: No space left on device\n"


def test_both_programs_print_their_version() -> None:
    """Errors ask for the same mailmirror version on both sides: it must be easy to read."""
    from mailmirror import __version__

    for program, says in (("mailmirror", f"mailmirror {__version__}\n"),
                          ("failover", f"failover (mailmirror {__version__})\n")):
        done = subprocess.run([sys.executable, "-m", program, "--version"],
                              capture_output=True, text=True)
        assert (done.returncode, done.stdout) == (0, says), done.stderr
