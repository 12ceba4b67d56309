"""`mailmirror CMD ...` builds only CMD (cli.main); help, usage errors and exit codes must be
exactly those of the whole command line."""

from __future__ import annotations

import subprocess
import sys

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
