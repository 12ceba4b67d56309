"""The command line against real faults: file modes, an unwritable stdout, a mistyped --state.

Each runs `python -m failover` in a new process, as nobody when the tests run as root (root
ignores file modes), in a folder under /tmp that nobody owns. Every fault must end in one line
on stderr naming the file and the fix, with the exit code docs/reference.md gives it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from failover_rig import BACKUP_IP, MAIN_IP, TEMPLATE, give_to_nobody, run_failover, write_config


@dataclass(frozen=True)
class Site:
    templates: Path
    zones: Path
    config: Path
    state: Path

    @property
    def args(self) -> list[str]:
        return ["--config", str(self.config), "--state", str(self.state)]

    @property
    def zone(self) -> Path:
        return self.zones / "example.test.zone"


@pytest.fixture
def site(open_tmp: Path) -> Site:
    templates, zones = open_tmp / "templates", open_tmp / "zones"
    templates.mkdir()
    zones.mkdir()
    (templates / "example.test.zone").write_text(TEMPLATE)
    config = write_config(
        open_tmp / "config.toml",
        [{"type": "tcp", "host": "127.0.0.1", "port": 9, "timeout": 1}],
        main_ip=MAIN_IP,
        backup_ip=BACKUP_IP,
        templates=str(templates),
        zones_dir=str(zones),
        reload=[],
    )
    (open_tmp / "state").mkdir()
    give_to_nobody(open_tmp)
    return Site(templates, zones, config, open_tmp / "state" / "state.sqlite3")


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_a_read_only_state_database_is_one_line_and_nothing_is_written(site):
    assert run_failover(*site.args, "hold", "backup").returncode == 0  # so release has work
    before = snapshot(site.zone)
    site.state.chmod(0o444)
    for command in (["run"], ["hold", "backup"], ["zones", "--force"], ["release"]):
        done = run_failover(*site.args, *command)
        assert (done.returncode, done.stdout) == (3, ""), command
        assert done.stderr == (
            f"failover: state database {site.state} cannot be written (attempt to write a "
            "readonly database): fix the permissions of the file and its directory (run as "
            "their owner), or use --state PATH\n"
        ), command
    assert snapshot(site.zone) == before  # zones --force checked the store before writing


def test_an_unreadable_templates_directory_is_one_line(site):
    site.templates.chmod(0o000)
    try:
        done = run_failover(*site.args, "run")
    finally:
        site.templates.chmod(0o755)
    assert done.returncode == 3
    assert done.stderr == (
        f"failover: cannot read the templates directory {site.templates} (Permission denied): "
        "run failover as a user that may read it, or fix [failover] templates in the config\n"
    )
    assert list(site.zones.iterdir()) == []


def test_a_zones_dir_behind_a_closed_directory_is_one_line(site, open_tmp):
    closed = open_tmp / "closed"
    (closed / "zones").mkdir(parents=True)
    give_to_nobody(closed)
    config = site.config.read_text().replace(str(site.zones), str(closed / "zones"))
    site.config.write_text(config)
    closed.chmod(0o000)
    try:
        done = run_failover(*site.args, "zones")
    finally:
        closed.chmod(0o755)
    assert done.returncode == 3
    assert done.stderr == (
        f"failover: zones_dir {closed / 'zones'} cannot be reached (Permission denied): run as "
        "the owner of the directories above it, or fix [failover] zones_dir in the config\n"
    )


LOST = ("failover: cannot write to stdout (No space left on device): the command ran to the "
        "end, but its output is lost; check where stdout goes\n")


def test_a_full_stdout_is_one_line_and_exit_1_and_the_work_is_done(site):
    with open("/dev/full", "w") as full:
        held = run_failover(*site.args, "hold", "backup", stdout=full.fileno())
        shown = run_failover(*site.args, "status", "--json", stdout=full.fileno())
    assert (shown.returncode, shown.stderr) == (1, LOST)
    assert (held.returncode, held.stderr) == (1, LOST)  # 1, not 3: the hold was applied
    status = run_failover(*site.args, "status")
    assert status.stdout.splitlines()[0].endswith(", HELD on backup")
    assert BACKUP_IP in site.zone.read_text()


def test_a_reader_that_went_away_ends_the_output_quietly_with_exit_1(site):
    run_failover(*site.args, "hold", "backup")
    read, write = os.pipe()
    os.close(read)
    try:
        done = run_failover(*site.args, "status", "--json", stdout=write)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")
