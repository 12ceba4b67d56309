"""Zone rewriting on files (no NSD): minimal vs forced mode, serial safety, failures per zone."""

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from failover_rig import BACKUP_IP, MAIN_IP, TEMPLATE, write_config

from failover import engine
from failover.config import load
from failover.errors import DirectoryError
from failover.state import open_state
from failover.zonecheck import read_serial

DAY = datetime(2024, 1, 1, 12, tzinfo=UTC)


@pytest.fixture
def setup(tmp_path):
    templates, zones = tmp_path / "templates", tmp_path / "zones"
    templates.mkdir()
    zones.mkdir()
    (templates / "example.test.zone").write_text(TEMPLATE)
    (templates / "other.test").write_text(TEMPLATE.replace("example.test", "other.test"))
    config = load(
        write_config(
            tmp_path / "config.toml",
            [{"type": "tcp", "host": "127.0.0.1", "port": 9}],
            main_ip=MAIN_IP,
            backup_ip=BACKUP_IP,
            templates=str(templates),
            zones_dir=str(zones),
            reload=[],
        )
    )
    state = open_state(tmp_path / "state.sqlite3")
    yield config, state, zones
    state.close()


def serial_of(path: Path) -> int | None:
    return read_serial(path.read_text())


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def flip(config, state, count: int, start: datetime, step=timedelta(minutes=1)) -> list[int]:
    """Flip DNS between backup and main `count` times; return example.test's serials."""
    serials = []
    for i in range(count):
        report = engine.hold(config, state, "backup" if i % 2 == 0 else "main", start + i * step)
        assert report.exit_code == 0, report.problems()
        serials.append(report.zones[0].outcome.serial)
    return serials


def test_first_run_writes_every_zone_with_todays_serial_and_readable_mode(setup):
    config, state, zones = setup
    report = engine.rewrite_zones(config, state, force=False, now=DAY)
    assert [z.outcome.status for z in report.zones] == ["written", "written"]
    for name in ("example.test.zone", "other.test"):
        assert serial_of(zones / name) == 2024010100
        assert (zones / name).stat().st_mode & 0o777 == 0o644  # NSD runs as another user
        assert f"A   {MAIN_IP} ; @IP@" in (zones / name).read_text()
    assert not list(zones.glob(".*"))  # no temp file left behind


def test_a_run_with_nothing_changed_touches_nothing(setup):
    config, state, zones = setup
    engine.rewrite_zones(config, state, force=False, now=DAY)
    before = snapshot(zones)
    report = engine.rewrite_zones(config, state, force=False, now=DAY + timedelta(days=3))
    assert [z.outcome.status for z in report.zones] == ["unchanged", "unchanged"]
    assert snapshot(zones) == before


def test_an_ip_change_bumps_the_serial_and_keeps_the_previous_file(setup):
    config, state, zones = setup
    engine.rewrite_zones(config, state, force=False, now=DAY)
    old = (zones / "example.test.zone").read_text()
    engine.hold(config, state, "backup", DAY)
    live = zones / "example.test.zone"
    assert serial_of(live) == 2024010101 and BACKUP_IP in live.read_text()
    assert (zones / "example.test.zone.prev").read_text() == old


def test_an_edited_template_is_rewritten_without_force(setup):
    config, state, zones = setup
    engine.rewrite_zones(config, state, force=False, now=DAY)
    template = config.templates / "other.test"
    template.write_text(template.read_text() + "new IN A 192.0.2.77\n")
    report = engine.rewrite_zones(config, state, force=False, now=DAY)
    assert {z.outcome.zone: z.outcome.status for z in report.zones} == {
        "example.test": "unchanged",
        "other.test": "written",
    }
    assert report.zones[1].outcome.reason == "template edited"


def test_force_bumps_every_zone(setup):
    config, state, zones = setup
    engine.rewrite_zones(config, state, force=False, now=DAY)
    report = engine.rewrite_zones(config, state, force=True, now=DAY)
    assert [z.outcome.serial for z in report.zones] == [2024010101, 2024010101]


def test_44_flips_in_one_day_keep_serials_strictly_increasing(setup):
    config, state, zones = setup
    serials = flip(config, state, 44, DAY)
    assert serials == list(range(2024010100, 2024010144))


def test_150_flips_in_one_day_roll_forward_past_99_and_the_next_day_continues(setup):
    config, state, zones = setup
    serials = flip(config, state, 150, DAY, step=timedelta(seconds=10))
    assert all(b > a for a, b in zip(serials, serials[1:], strict=False))
    assert serials[99:101] == [2024010199, 2024010200]  # never back to a smaller value
    assert serials[-1] == 2024010249
    tomorrow = flip(config, state, 2, DAY + timedelta(days=1))
    assert tomorrow == [2024010250, 2024010251]  # 20240102 00 is taken: count on
    assert serial_of(zones / "example.test.zone") == 2024010251


def test_the_live_serial_is_respected_when_the_state_store_is_lost(setup, tmp_path):
    config, state, zones = setup
    flip(config, state, 3, DAY)
    live_serial = serial_of(zones / "example.test.zone")
    fresh = open_state(tmp_path / "new-state.sqlite3")
    report = engine.rewrite_zones(config, fresh, force=True, now=DAY - timedelta(days=30))
    assert report.zones[0].outcome.serial == live_serial + 1
    fresh.close()


def test_a_lost_state_store_adopts_up_to_date_live_files_without_touching_them(setup, tmp_path):
    config, state, zones = setup
    engine.rewrite_zones(config, state, force=False, now=DAY)
    before = snapshot(zones)
    fresh = open_state(tmp_path / "new-state.sqlite3")
    report = engine.rewrite_zones(config, fresh, force=False, now=DAY + timedelta(days=1))
    assert [z.outcome.status for z in report.zones] == ["adopted", "adopted"]
    assert snapshot(zones) == before
    assert fresh.zone("example.test").serial == 2024010100
    fresh.close()


def test_a_broken_template_fails_only_its_zone_and_leaves_the_live_file(setup):
    config, state, zones = setup
    engine.rewrite_zones(config, state, force=False, now=DAY)
    live = snapshot(zones)["other.test"]
    template = config.templates / "other.test"
    template.write_text(template.read_text().replace("192.0.2.10 ; @IP@\nwww", "@IP@.5\nwww"))
    report = engine.rewrite_zones(config, state, force=True, now=DAY)
    outcomes = {z.outcome.zone: z.outcome for z in report.zones}
    assert outcomes["example.test"].status == "written"
    assert outcomes["other.test"].status == "failed"
    assert report.exit_code == 1
    (problem,) = report.problems()
    assert problem == f'{template}:13: invalid value in "@   IN A   {MAIN_IP}.5"'
    assert snapshot(zones)["other.test"] == live


def test_a_template_without_soa_names_the_file(setup):
    config, state, zones = setup
    (config.templates / "nosoa.test").write_text("$TTL 60\n@ IN NS ns1.nosoa.test.\n")
    report = engine.rewrite_zones(config, state, force=False, now=DAY)
    assert report.problems() == [
        f"{config.templates / 'nosoa.test'}: no SOA record at the zone origin nosoa.test.: add one"
    ]
    assert not (zones / "nosoa.test").exists()


def test_a_missing_zones_dir_stops_before_any_write(setup):
    config, state, zones = setup
    zones.rmdir()
    with pytest.raises(DirectoryError) as caught:
        engine.rewrite_zones(config, state, force=False, now=DAY)
    assert str(caught.value) == (
        f"zones_dir {zones} does not exist: create it (it is NSD's zonesdir) or fix "
        "[failover] zones_dir in the config"
    )
    assert caught.value.exit_code == 3
    assert not zones.exists() and state.zones() == []


def test_a_missing_templates_dir_is_a_clear_error(setup):
    config, state, zones = setup
    for template in config.templates.iterdir():
        template.unlink()
    with pytest.raises(DirectoryError, match="holds no zone template"):
        engine.rewrite_zones(config, state, force=False, now=DAY)
    config.templates.rmdir()
    with pytest.raises(DirectoryError, match="does not exist: create it or fix"):
        engine.rewrite_zones(config, state, force=False, now=DAY)


def test_two_templates_for_one_zone_fail_that_zone_and_the_others_proceed(setup):
    config, state, zones = setup
    (config.templates / "copy").write_text("$ORIGIN example.test.\n" + TEMPLATE)
    report = engine.rewrite_zones(config, state, force=False, now=DAY)
    assert [z.outcome.status for z in report.zones] == ["failed", "failed", "written"]
    assert "all serve zone example.test: remove all but one" in report.problems()[0]
    assert len(report.problems()) == 1  # said once, not once per template
    assert report.exit_code == 1
    assert sorted(p.name for p in zones.iterdir()) == ["other.test"]


def test_an_unreadable_template_fails_its_zone_and_backups_are_not_templates(setup):
    config, state, zones = setup
    (config.templates / "example.test.zone~").write_text(TEMPLATE)  # an editor's backup
    (config.templates / "broken.test").write_bytes(b"; caf\xe9\n" + TEMPLATE.encode())
    report = engine.rewrite_zones(config, state, force=False, now=DAY)
    assert {z.outcome.zone: z.outcome.status for z in report.zones} == {
        "broken.test": "failed", "example.test": "written", "other.test": "written"}
    assert "cannot read template" in report.problems()[0]


def test_a_zone_installed_but_not_recorded_is_rewritten_when_dns_goes_back(setup, monkeypatch):
    """A run that stopped between installing a zone (backup's IP) and saving its row (disk
    full, killed): minimal mode must not trust the row, which still says main's IP."""
    config, state, zones = setup
    engine.hold(config, state, "main", DAY)
    monkeypatch.setattr(state, "save_zone", lambda row: None)  # the row is never saved
    engine.hold(config, state, "backup", DAY + timedelta(minutes=1))
    assert BACKUP_IP in (zones / "example.test.zone").read_text()
    monkeypatch.undo()
    report = engine.hold(config, state, "main", DAY + timedelta(minutes=2))
    assert report.zones[0].outcome.status == "written", report.zones[0].outcome
    assert BACKUP_IP not in (zones / "example.test.zone").read_text()


def test_a_lost_state_store_during_an_outage_keeps_dns_on_the_backup(setup, tmp_path):
    config, state, zones = setup
    engine.hold(config, state, "backup", DAY)
    engine.release(state, DAY)
    fresh = open_state(tmp_path / "new-state.sqlite3")
    report = engine.rewrite_zones(config, fresh, force=False, now=DAY + timedelta(hours=1))
    assert report.health.active == "backup"
    assert fresh.health()[0].active == "backup"  # and `failover status` says so
    assert [z.outcome.status for z in report.zones] == ["adopted", "adopted"]
    assert BACKUP_IP in (zones / "example.test.zone").read_text()
    fresh.close()


def test_crlf_live_files_are_adopted_after_a_lost_state_store(setup, tmp_path):
    config, state, zones = setup
    for template in config.templates.iterdir():
        template.write_bytes(template.read_bytes().replace(b"\n", b"\r\n"))
    engine.rewrite_zones(config, state, force=False, now=DAY)
    assert b"\r\n" in (zones / "other.test").read_bytes()
    fresh = open_state(tmp_path / "new-state.sqlite3")
    report = engine.rewrite_zones(config, fresh, force=False, now=DAY + timedelta(days=1))
    assert [z.outcome.status for z in report.zones] == ["adopted", "adopted"]
    fresh.close()


def test_zones_nsd_would_refuse_never_replace_the_live_zone(setup):
    """dnspython loads these, NSD drops the whole zone at its reload (SERVFAIL)."""
    config, state, zones = setup
    engine.rewrite_zones(config, state, force=False, now=DAY)
    before = snapshot(zones)
    template = config.templates / "example.test.zone"
    for extra, why in [("ns3.example.net. IN A 192.0.2.53\n", "out of zone"),
                       ("c IN CNAME a.test.\nc IN CNAME b.test.\n", "CNAME"),
                       ("d IN DNAME x.test.\ne.d IN A 192.0.2.9\n", "below the DNAME"),
                       ("$GENERATE 1-3 h$ A 192.0.2.$\n", "$GENERATE")]:
        template.write_text(TEMPLATE + extra)
        report = engine.rewrite_zones(config, state, force=False, now=DAY)
        assert report.zones[0].outcome.status == "failed", extra
        assert why in report.problems()[0], report.problems()
        assert snapshot(zones) == before


def test_the_live_files_mode_is_kept(setup):
    config, state, zones = setup
    engine.rewrite_zones(config, state, force=False, now=DAY)
    os.chmod(zones / "example.test.zone", 0o640)
    engine.rewrite_zones(config, state, force=True, now=DAY)
    assert (zones / "example.test.zone").stat().st_mode & 0o777 == 0o640


def test_a_reload_command_that_cannot_run_is_one_problem_per_zone(setup, tmp_path):
    config, state, zones = setup
    script = tmp_path / "reload-nsd"
    script.write_text("nsd-control reload $1\n")  # no #! line, and not executable
    config = replace(config, reload=(str(script), "{zone}"))
    report = engine.rewrite_zones(config, state, force=False, now=DAY)
    assert [z.outcome.status for z in report.zones] == ["written", "written"]
    assert report.exit_code == 1
    assert all("cannot run" in p and "[failover] reload" in p for p in report.problems())


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_the_live_files_owner_and_group_are_kept(setup):
    """cron runs failover as root; NSD reads the zones as its own user through the group."""
    config, state, zones = setup
    engine.rewrite_zones(config, state, force=False, now=DAY)
    os.chown(zones / "example.test.zone", 65534, 65534)
    engine.rewrite_zones(config, state, force=True, now=DAY)
    for name in ("example.test.zone", "example.test.zone.prev"):
        st = (zones / name).stat()
        assert (st.st_uid, st.st_gid) == (65534, 65534), name
