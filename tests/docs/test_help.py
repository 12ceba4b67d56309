"""Every `--help` of mailmirror and failover works and shows an example, and typer's shell
completion is wired up for both programs (docs/install.md tells how to turn it on).

Commands are found by walking the real command trees, so a command added later is checked
too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main

from failover.cli import app as failover_app
from mailmirror.cli import app as mailmirror_app

BIN = Path(sys.executable).parent


def command_paths(program: str, app: typer.Typer) -> list[tuple[str, ...]]:
    """(program, subcommand, ...) for the program itself and every command below it."""
    found: list[tuple[str, ...]] = []

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        found.append(path)
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                if not sub.hidden:
                    walk(sub, (*path, name))

    walk(typer.main.get_command(app), (program,))
    return found


COMMANDS = (command_paths("mailmirror", mailmirror_app)
            + command_paths("failover", failover_app))


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_help_shows_an_example(path: tuple[str, ...]) -> None:
    run = subprocess.run([str(BIN / path[0]), *path[1:], "--help"], capture_output=True,
                         text=True, timeout=30, env={**os.environ, "COLUMNS": "100"})
    assert run.returncode == 0, run.stderr
    assert "Example" in run.stdout, f"`{' '.join(path)} --help` shows no example"
    example_lines = [ln for ln in run.stdout.splitlines() if path[0] in ln and
                     not ln.lstrip().startswith("Usage:")]
    assert example_lines, f"`{' '.join(path)} --help`: no example line runs {path[0]}"


def test_the_walk_sees_every_command() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"mailmirror sync", "mailmirror config check", "mailmirror init",
            "failover run", "failover hold"} <= names


@pytest.mark.parametrize("program, partial, expected", [
    ("mailmirror", "sy", "sync"),
    ("mailmirror", "con", "config"),
    ("failover", "rel", "release"),
])
def test_shell_completion_completes_commands(program: str, partial: str,
                                             expected: str) -> None:
    """What the script installed by `--install-completion` asks the program, done by hand."""
    variable = f"_{program.upper()}_COMPLETE"
    env = {**os.environ, variable: "complete_bash", "COMP_WORDS": f"{program} {partial}",
           "COMP_CWORD": "1"}
    run = subprocess.run([str(BIN / program)], env=env, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    assert expected in run.stdout.split(), run.stdout
