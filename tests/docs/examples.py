"""Checkers for the files under docs/examples/, one per kind, each using the real tool.

A file's kind comes from its name (kind_of); a file of no known kind is an error, so a new
example cannot slip in unchecked. Each checker returns the problems it found (empty = good)
and calls tests.conftest.require for the external program it needs.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import click
import typer.main

from tests.conftest import missing, require

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "docs" / "examples"
VENV_BIN = Path(sys.executable).parent
PROGRAMS = ("mailmirror", "failover")
UNIT_SUFFIXES = (".service", ".timer", ".path", ".socket")
TEST_SERIAL = 2024010102


def kind_of(path: Path) -> str | None:
    """The kind of an example file, from its name; None for a file no checker knows."""
    name = path.name
    if name.endswith(".toml"):
        return "config"
    if name.endswith(".zone"):
        return "zone"
    if name.startswith("nsd") and name.endswith(".conf"):
        return "nsd"
    if name.endswith(UNIT_SUFFIXES):
        return "systemd"
    if name == "crontab" or name.endswith(".crontab"):
        return "cron"
    if name.startswith("sudoers"):
        return "sudoers"
    if name == "authorized_keys":
        return "authorized_keys"
    if name.endswith(("-wrapper", ".sh")):
        return "shell"
    if name.endswith("muttrc"):
        return "muttrc"
    return None


def check_config(path: Path) -> list[str]:
    """Parsed by `config check` and by the loaders sync and failover really use."""
    import tomllib

    from failover.config import load as load_failover
    from mailmirror.config import load_profile
    from mailmirror.configcheck import check_file
    from mailmirror.errors import MailmirrorError
    from mailmirror.starter import STARTERS

    problems = [f"line {p.line}: {p.message}" for p in check_file(path)]
    document = tomllib.loads(path.read_text())
    try:
        for name in document.get("profile", {}):
            load_profile(path, name)
        if "failover" in document:
            load_failover(path)
    except MailmirrorError as exc:
        problems.append(str(exc))
    if path.parent.name == "init" and STARTERS.get(path.stem) != path.read_text():
        problems.append(f"differs from `mailmirror init --role {path.stem}`: regenerate it")
    return problems


def check_zone(path: Path) -> list[str]:
    """Rendered for main and for backup by failover, validated by it and by nsd-checkzone."""
    from failover.errors import TemplateError
    from failover.template import Values, render, zone_name
    from failover.zonecheck import validate

    text = path.read_text()
    zone = zone_name(path.name, text)
    problems = []
    for ip, ip6 in (("192.0.2.10", "2001:db8::10"), ("198.51.100.20", "2001:db8:1::20")):
        try:
            rendered = render(text, Values(TEST_SERIAL, ip, ip6))
            validate(rendered, zone, TEST_SERIAL)
        except TemplateError as exc:
            problems.append(exc.located(path.name))
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".zone") as out:
            out.write(rendered)
            out.flush()
            run = subprocess.run([require("nsd-checkzone"), zone, out.name],
                                 capture_output=True, text=True)
        if run.returncode != 0:
            problems.append(f"nsd-checkzone ({ip}): {run.stdout}{run.stderr}")
    return problems


def check_nsd(path: Path) -> list[str]:
    run = subprocess.run([require("nsd-checkconf"), str(path)], capture_output=True, text=True)
    return [] if run.returncode == 0 else [f"nsd-checkconf: {run.stdout}{run.stderr}"]


_EXEC = re.compile(r"^(Exec[A-Za-z]*=[-@:+!]*)(\S*/)?(mailmirror|failover)(?=\s|$)", re.M)


def check_systemd(path: Path) -> list[str]:
    """systemd-analyze verify, with the unit's siblings beside it (a timer needs its service).

    Our own programs are not installed under /usr/local/bin here, so Exec lines that start
    mailmirror or failover point at this checkout's venv in the verified copy; any other
    missing executable is still an error.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze")
    with tempfile.TemporaryDirectory() as tmp:
        for unit in path.parent.iterdir():
            if unit.name.endswith(UNIT_SUFFIXES):
                text = _EXEC.sub(lambda m: f"{m.group(1)}{VENV_BIN}/{m.group(3)}",
                                 unit.read_text())
                (Path(tmp) / unit.name).write_text(text)
        run = subprocess.run([analyze, "verify", "--man=no", str(Path(tmp) / path.name)],
                             capture_output=True, text=True)
    output = (run.stdout + run.stderr).strip()
    return [] if run.returncode == 0 and not output else [f"systemd-analyze verify: {output}"]


_CRON_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_ITEM = re.compile(r"^(\*|\d+(?:-\d+)?)(?:/(\d+))?$")


def check_cron(path: Path) -> list[str]:
    """Five valid time fields, then a mailmirror or failover command line that our own
    command-line parser accepts (options, subcommand, arguments); an optional user field
    (as in /etc/cron.d) is allowed before the command."""
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#") or re.match(r"^\w+=", line):
            continue
        fields = line.split(None, 5)
        if len(fields) < 6:
            problems.append(f"line {number}: fewer than 5 time fields and a command")
            continue
        for field, (low, high) in zip(fields[:5], _CRON_FIELDS, strict=True):
            if not _cron_field_ok(field, low, high):
                problems.append(f"line {number}: bad time field {field!r}")
        argv = shlex.split(fields[5])
        if Path(argv[0]).name not in PROGRAMS and len(argv) > 1:
            argv = argv[1:]  # the user field of a system crontab
        problem = parse_command_line(argv)
        if problem:
            problems.append(f"line {number}: {problem}")
    return problems


def _cron_field_ok(field: str, low: int, high: int) -> bool:
    for item in field.split(","):
        found = _CRON_ITEM.match(item)
        if not found:
            return False
        numbers = [int(n) for n in re.findall(r"\d+", found.group(1))]
        if any(not low <= n <= high for n in numbers) or found.group(2) == "0":
            return False
    return True


def parse_command_line(argv: list[str]) -> str | None:
    """None when our own CLI parser accepts argv (program, options, subcommand, arguments)."""
    program = Path(argv[0]).name
    if program not in PROGRAMS:
        return f"{argv[0]!r} is not mailmirror or failover"
    group = _click_group(program)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2 protected_args
            ctx = group.make_context(program, argv[1:])
            rest = [*ctx.protected_args, *ctx.args]
            while isinstance(group, click.Group):
                name, command, rest = group.resolve_command(ctx, rest)
                ctx = command.make_context(name, rest, parent=ctx)
                rest = [*ctx.protected_args, *ctx.args]
                group = command
    except click.ClickException as exc:
        return f"{' '.join(argv)}: {exc.format_message()}"
    return None


def _click_group(program: str) -> click.Group:
    if program == "mailmirror":
        from mailmirror.cli import app
    else:
        from failover.cli import app
    command = typer.main.get_command(app)
    assert isinstance(command, click.Group)
    return command


def check_sudoers(path: Path) -> list[str]:
    run = subprocess.run([require("visudo"), "-cf", str(path)], capture_output=True, text=True)
    return [] if run.returncode == 0 else [f"visudo: {run.stdout}{run.stderr}"]


_KEY_LINE = re.compile(r'^(?P<options>(?:[a-z-]+(?:="[^"]*")?,?)+) (?P<type>ssh-ed25519|'
                       r'ssh-rsa|ecdsa-sha2-nistp\d+) (?P<key>\S+)(?: .*)?$')


def check_authorized_keys(path: Path) -> list[str]:
    """Option list, key type and the forced command: the wrapper shipped beside it."""
    problems = []
    wrapper = next((p for p in path.parent.iterdir() if kind_of(p) == "shell"), None)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        found = _KEY_LINE.match(line)
        if not found:
            problems.append(f"line {number}: not 'options type key comment'")
            continue
        options = found.group("options")
        if "restrict" not in options.split(","):
            problems.append(f"line {number}: the key must be `restrict`ed")
        command = re.search(r'command="([^"]*)"', options)
        if not command or wrapper is None or Path(command.group(1)).name != wrapper.name:
            problems.append(f"line {number}: command= must start {wrapper and wrapper.name}")
    return problems


def check_shell(path: Path) -> list[str]:
    run = subprocess.run([require("dash"), "-n", str(path)], capture_output=True, text=True)
    return [] if run.returncode == 0 else [f"dash -n: {run.stderr}"]


def check_muttrc(path: Path) -> list[str]:
    """neomutt reads it (against an empty ~/Maildir) without a single complaint."""
    neomutt = require("neomutt")
    with tempfile.TemporaryDirectory() as home:
        for sub in ("cur", "new", "tmp"):
            (Path(home) / "Maildir" / sub).mkdir(parents=True)
        run = subprocess.run([neomutt, "-n", "-F", str(path), "-Q", "folder"],
                             env={"HOME": home, "PATH": "/usr/bin:/bin", "TERM": "dumb"},
                             stdin=subprocess.DEVNULL, capture_output=True, text=True)
    ok = run.returncode == 0 and not run.stderr and run.stdout.startswith("set folder")
    return [] if ok else [f"neomutt: {run.stdout}{run.stderr}"]


CHECKERS: dict[str, Callable[[Path], list[str]]] = {
    "config": check_config,
    "zone": check_zone,
    "nsd": check_nsd,
    "systemd": check_systemd,
    "cron": check_cron,
    "sudoers": check_sudoers,
    "authorized_keys": check_authorized_keys,
    "shell": check_shell,
    "muttrc": check_muttrc,
}
