"""The command line: help with examples, one-line errors with documented exit codes, quiet cron."""

import json
import signal
import sqlite3
import subprocess
import sys

import pytest
from failover_rig import BACKUP_IP, MAIN_IP, TEMPLATE, write_config
from typer.testing import CliRunner

from failover.cli import app

COMMANDS = ["zones", "run", "check", "watch", "status", "hold", "release"]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def config(tmp_path, main_server):
    templates, zones = tmp_path / "templates", tmp_path / "zones"
    templates.mkdir()
    zones.mkdir()
    (templates / "example.test.zone").write_text(TEMPLATE)
    return write_config(
        tmp_path / "config.toml",
        [{"type": "http", "url": main_server.url, "timeout": 1}],
        main_ip=MAIN_IP,
        backup_ip=BACKUP_IP,
        templates=str(templates),
        zones_dir=str(zones),
        reload=[],
        fail_after=1,
    )


def test_help_is_import_light():
    code = (
        "import sys; from failover.cli import app; "
        "heavy = {'httpx', 'dns', 'dns.zone', 'sqlite3'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_has_an_example(runner, command):
    result = runner.invoke(app, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0 and "Example" in result.output


def test_a_missing_config_is_one_line_with_exit_2(runner, tmp_path):
    result = runner.invoke(app, ["--config", str(tmp_path / "nope.toml"), "run"])
    assert result.exit_code == 2
    assert result.stderr == (
        f"failover: config file {tmp_path / 'nope.toml'} not found: create it with a "
        "[failover] section (see docs/failover.md) or pass --config FILE\n"
    )


def test_a_bad_config_lists_every_problem_on_one_line(runner, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[failover]\nmain_ip = "x"\nbackup_ip = "y"\n')
    result = runner.invoke(app, ["--config", str(path), "zones"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert "failover.main_ip: must be an IPv4 address" in line
    assert "failover.backup_ip: must be an IPv4 address" in line
    assert "failover.check: missing" in line


def test_debug_adds_the_traceback(runner, tmp_path):
    result = runner.invoke(app, ["--debug", "--config", str(tmp_path / "nope.toml"), "run"])
    assert result.exit_code == 2 and "Traceback" in result.stderr


def test_a_missing_zones_dir_exits_3_and_names_the_key(runner, config, tmp_path):
    (tmp_path / "zones").rmdir()
    result = runner.invoke(app, ["--config", str(config), "zones"])
    assert result.exit_code == 3
    assert "zones_dir" in result.stderr and "create it" in result.stderr
    assert not (tmp_path / "zones").exists()


@pytest.mark.parametrize("key", ["templates", "zones_dir"])
def test_a_directory_that_is_a_file_is_called_a_file(runner, config, tmp_path, key):
    folder = tmp_path / ("templates" if key == "templates" else "zones")
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    config.write_text(config.read_text().replace(f'"{folder}"', f'"{a_file}"'))
    result = runner.invoke(app, ["--config", str(config), "zones"])
    assert result.exit_code == 3
    assert result.stderr.startswith(f"failover: {key} {a_file} is a file, not a directory: ")
    assert f"[failover] {key}" in result.stderr and result.stderr.count("\n") == 1
    assert list((tmp_path / "zones").iterdir()) == []


def test_an_unusable_state_store_exits_3(runner, config, tmp_path):
    bad = tmp_path / "state.sqlite3"
    bad.write_text("this is not sqlite" * 100)
    result = runner.invoke(app, ["--config", str(config), "--state", str(bad), "run"])
    assert result.exit_code == 3 and "use --state PATH" in result.stderr


def test_run_is_quiet_without_a_tty_except_ip_changes(runner, config, main_server, tmp_path):
    first = runner.invoke(app, ["--config", str(config), "run"])
    assert (first.exit_code, first.output) == (0, "")
    main_server.stop()
    down = runner.invoke(app, ["--config", str(config), "run"])
    assert down.exit_code == 0
    assert down.stdout.splitlines()[0].startswith(f"DNS now points at backup {BACKUP_IP}")
    assert "example.test: written" in down.stdout
    assert (tmp_path / "zones" / "example.test.zone.prev").exists()


def test_check_changes_nothing_and_exits_1_when_main_is_down(runner, config, main_server,
                                                             tmp_path):
    up = runner.invoke(app, ["--config", str(config), "check", "--json"])
    assert up.exit_code == 0 and json.loads(up.stdout)["healthy"] is True
    main_server.stop()
    down = runner.invoke(app, ["--config", str(config), "check"])
    assert down.exit_code == 1 and down.stdout.startswith("main is down\n  FAIL http://")
    assert not (tmp_path / "state").exists()  # not even a state store was created


@pytest.mark.parametrize("command", [["status", "--json"], ["release"]])
def test_with_no_state_yet_status_and_release_say_so_and_create_none(runner, tmp_path,
                                                                      command):
    """Neither creates a store at a mistyped --state: an empty one would then read as "main
    is up" (and nothing can be held where failover never ran)."""
    typo = tmp_path / "typo" / "state.sqlite3"
    result = runner.invoke(app, ["--state", str(typo), *command])
    assert (result.exit_code, result.stdout) == (3, "")
    assert result.stderr == (
        f"failover: no failover state at {typo} yet: nothing has run with this state "
        "database; check the path (--state, $MAILMIRROR_STATE), or run `failover run` first\n"
    )
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("command", ["status", "release"])
def test_on_a_store_only_mailmirror_used_there_is_no_failover_state(runner, tmp_path,
                                                                    command):
    from mailmirror.store import open_store

    shared = tmp_path / "state.sqlite3"
    open_store(shared).close()
    result = runner.invoke(app, ["--state", str(shared), command])
    assert result.exit_code == 3 and "no failover state at" in result.stderr
    with sqlite3.connect(shared) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert not {t for t in tables if t.startswith("failover")}


def test_status_lists_zones_health_and_history(runner, config):
    runner.invoke(app, ["--config", str(config), "run"])
    text = runner.invoke(app, ["--config", str(config), "status"]).stdout
    lines = text.splitlines()
    assert lines[0].startswith("main is up (1 in a row, last checked ")
    assert lines[1].startswith("example.test: serial ") and f", {MAIN_IP}, changed " in lines[1]
    assert lines[2] == "history:" and " check   up   http://" in lines[3]


def test_release_says_when_nothing_was_held_and_records_nothing(runner, config):
    def history() -> list:
        shown = runner.invoke(app, ["--config", str(config), "status", "--json"]).stdout
        return json.loads(shown)["history"]

    runner.invoke(app, ["--config", str(config), "run"])
    before = history()
    result = runner.invoke(app, ["--config", str(config), "release"])
    assert (result.exit_code, result.stdout) == (
        0, "nothing was held; DNS points at main as the checks decide\n")
    assert history() == before
    runner.invoke(app, ["--config", str(config), "hold", "backup"])
    held = runner.invoke(app, ["--config", str(config), "release"])
    assert held.stdout == "released; DNS points at backup until the next check decides\n"
    assert history()[-1]["kind"] == "release"


def test_the_json_report_of_run(runner, config):
    report = json.loads(runner.invoke(app, ["--config", str(config), "run", "--json"]).stdout)
    assert report["healthy"] is True and report["active"] == "main"
    assert report["checks"][0]["ok"] and report["problems"] == []
    status = json.loads(runner.invoke(app, ["--config", str(config), "status", "--json"]).stdout)
    assert report["health"] == status["health"]  # checked_at too: main was checked just now
    assert report["health"]["checked_at"] == report["at"][:19] + "+00:00"
    (zone,) = report["zones"]
    assert (zone["zone"], zone["status"], zone["reason"]) == (
        "example.test",
        "written",
        "live zone file missing",
    )


def test_watch_reports_a_failing_cycle_and_keeps_going(config, tmp_path):
    (tmp_path / "zones").rmdir()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "failover", "--config", str(config), "watch", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_error = daemon.stderr.readline()
    second_error = daemon.stderr.readline()  # the daemon survived the first failure
    daemon.send_signal(signal.SIGTERM)
    daemon.communicate(timeout=10)
    assert daemon.returncode == 0
    assert first_error == second_error and first_error.startswith("failover: zones_dir ")


def test_a_missing_nsd_fails_under_ci_and_skips_otherwise(monkeypatch):
    from failover_rig import require_binary

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="scripts/setup --test"):
        require_binary("nsd-that-is-not-installed")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_binary("nsd-that-is-not-installed")
