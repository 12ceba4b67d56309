"""`mailmirror config check` and `mailmirror init`, through the installed command.

config check must list every problem of a file at once, each at the line of the key it is
about (tomllib gives lines for syntax errors only), and init must write starters that pass it
and never replace a file unless told to.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mailmirror.configcheck import check_text, key_lines

MAILMIRROR = str(Path(sys.executable).with_name("mailmirror"))
ROLES = ("server", "backup", "desktop")


def mailmirror(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    run = subprocess.run([MAILMIRROR, *args], capture_output=True, text=True, timeout=60,
                         env=env)
    assert "Traceback" not in run.stderr, run.stderr
    return run


BAD = """\
# a comment: line 1
[profile.laptop]
local = "~/Maildir"
remotes = [
  "main:Maildir",
  3,
]
timeout = -1
keep_connection = -5
colour = "red"

[profile.pair]
a = "/a"

[failover]
main_ip = "192.0.2.999"
templates = \"\"\"
notify = "not a key: inside a string"
\"\"\"
zones_dir = "/z"

[[failover.check]]
type = "http"

[[failover.check]]
type = "tcp"
host = "main.example.org"
bogus = 1

[profiles.typo]
"""

EXPECTED = [
    (4, "[profile.laptop]: remotes must be a list of addresses"),
    (8, "[profile.laptop]: timeout must be a number of seconds, more than 0 and at most 3600"),
    (9, "[profile.laptop]: keep_connection must be \"auto\" or 0 to 86400 seconds"),
    (10, "[profile.laptop]: unknown key 'colour'"),
    (12, "[profile.pair]: b must be a maildir path or address"),
    (15, "failover.backup_ip: missing"),
    (16, "failover.main_ip: must be an IPv4 address, not '192.0.2.999'"),
    (22, "failover.check[0].url: missing"),
    (25, "failover.check[1].port: missing"),
    (28, "failover.check[1].bogus: unknown key for type tcp"),
    (30, "profiles: unknown section"),
]


def test_check_lists_every_problem_at_its_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(BAD)

    run = mailmirror("config", "check", "--config", str(config))

    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = run.stdout.splitlines()
    assert len(lines) == len(EXPECTED), lines
    for line, (number, text) in zip(lines, EXPECTED, strict=True):
        assert line.startswith(f"{config}:{number}: {text}"), (line, number, text)
    assert run.stderr == f"mailmirror: {len(EXPECTED)} problem(s) in {config}\n"


def test_syntax_error_names_its_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[profile.x]\nlocal = "~/Maildir"\nremotes = [a:M]\ntimeout = 3\n')

    run = mailmirror("config", "check", "--config", str(config))

    assert run.returncode == 2
    assert run.stdout.startswith(f"{config}:3: not valid TOML: "), run.stdout


def test_missing_file_is_one_line_with_the_fix(tmp_path: Path) -> None:
    run = mailmirror("config", "check", "--config", str(tmp_path / "absent.toml"))

    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "mailmirror init --role" in run.stderr, run.stderr


def test_an_empty_file_is_a_problem_not_a_clean_bill() -> None:
    problems = check_text("# nothing yet\n")
    assert [p.line for p in problems] == [1]
    assert "nothing to check" in problems[0].message


def test_key_lines_follow_toml_not_the_look_of_a_line() -> None:
    text = (
        'top = 1\n'                      # 1
        'multi = """\n'                  # 2
        '[not.a.table]\n'                # 3
        'x = 2\n'                        # 4
        '"""\n'                          # 5
        '[t]\n'                          # 6
        'inline = { a = 1, b = 2 }\n'    # 7
        'dotted.key = "v"\n'             # 8
        '[[t.items]]\n'                  # 9
        '[[t.items]]\n'                  # 10
        'name = "second"\n'              # 11
    )
    where = key_lines(text.splitlines())
    assert where[("top",)] == 1 and where[("multi",)] == 2
    assert ("not",) not in where and ("x",) not in where
    assert where[("t",)] == 6 and where[("t", "inline", "b")] == 7
    assert where[("t", "dotted", "key")] == 8
    assert where[("t", "items", 0)] == 9 and where[("t", "items", 1)] == 10
    assert where[("t", "items", 1, "name")] == 11


@pytest.mark.parametrize("role", ROLES)
def test_init_writes_a_starter_that_passes_check(role: str, tmp_path: Path) -> None:
    config = tmp_path / "etc" / "config.toml"

    made = mailmirror("init", "--role", role, "--output", str(config))
    checked = mailmirror("config", "check", "--config", str(config))

    assert made.returncode == 0, made.stderr
    assert checked.returncode == 0 and checked.stdout == f"{config}: ok\n", checked.stdout
    assert config.read_text().startswith("# mailmirror config for the ")


def test_init_never_replaces_a_file_unless_forced(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("# mine\n")

    refused = mailmirror("init", "--role", "desktop", "--output", str(config))
    assert refused.returncode == 2 and "--force" in refused.stderr, refused.stderr
    assert config.read_text() == "# mine\n"

    forced = mailmirror("init", "--role", "desktop", "--output", str(config), "--force")
    assert forced.returncode == 0 and "[profile.mail]" in config.read_text()


def test_init_default_path_and_unknown_role(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MAILMIRROR_CONFIG": str(tmp_path / "c" / "config.toml")}

    bad = mailmirror("init", "--role", "laptop", env=env)
    good = mailmirror("init", "--role", "desktop", env=env)

    assert bad.returncode == 2 and "--role must be one of server, backup, desktop" in bad.stderr
    assert good.returncode == 0 and (tmp_path / "c" / "config.toml").exists()


def test_the_command_init_prints_runs_as_printed_with_a_space_in_the_path(tmp_path: Path) -> None:
    config = tmp_path / "my conf" / "config.toml"
    made = mailmirror("init", "--role", "desktop", "--output", str(config))
    printed = made.stdout.split("run `", 1)[1].split("`", 1)[0]
    assert printed.startswith("mailmirror ")
    checked = mailmirror(*shlex.split(printed)[1:])
    assert checked.returncode == 0 and checked.stdout == f"{config}: ok\n", checked.stderr
