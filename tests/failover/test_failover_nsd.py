"""Against a real NSD primary and secondary: the acceptance story of issue 5, end to end.

Every check asks the servers themselves (SOA and A queries): `nsd-control reload` says ok
even when NSD then drops a broken zone, so its exit code proves nothing.
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from failover_rig import BACKUP_IP, MAIN_IP, ZONE, free_endpoint, wait_for, write_config

from failover import engine
from failover.config import load
from failover.state import open_state


def failover(config, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real CLI the way cron does: no TTY, so quiet except IP changes and errors."""
    return subprocess.run(
        [sys.executable, "-m", "failover", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def config_for(nsd_rig, main_server, tmp_path):
    def make(**overrides):
        settings = {
            "main_ip": MAIN_IP,
            "backup_ip": BACKUP_IP,
            "templates": str(nsd_rig.templates),
            "zones_dir": str(nsd_rig.zones),
            "reload": nsd_rig.reload_argv(),
            "fail_after": 2,
            "recover_after": 1,
            "verify_timeout": 3,
            **overrides,
        }
        check = {"type": "http", "url": main_server.url, "timeout": 1, "expect": "main is up"}
        return write_config(tmp_path / "config.toml", [check], **settings)

    return make


def served(server, ip: str, above: int = 0):
    """A predicate: `server` answers `ip` for the apex with a serial above `above`."""
    return lambda: server.address() == ip and (server.serial() or 0) > above and server.serial()


def test_run_points_at_main_fails_over_within_2s_and_fails_back(nsd_rig, main_server, config_for):
    config = config_for()
    primary, secondary = nsd_rig.primary, nsd_rig.secondary
    live = nsd_rig.zones / f"{ZONE}.zone"

    first = failover(config, "run")
    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")  # quiet under cron
    s1 = wait_for(served(secondary, MAIN_IP), timeout=2)
    assert s1 and primary.serial() == s1

    main_server.stop()
    once = failover(config, "run")  # 1 of fail_after=2: one lost answer does not move DNS
    assert once.returncode == 0 and once.stdout == ""
    assert secondary.serial() == s1 and secondary.address() == MAIN_IP

    switch = failover(config, "run")
    returned = time.monotonic()
    s2 = wait_for(served(secondary, BACKUP_IP, above=s1), timeout=2)
    propagation = time.monotonic() - returned
    assert s2 and propagation < 2.0, f"secondary not updated {propagation:.2f} s after run"
    assert switch.returncode == 0, switch.stderr
    assert switch.stdout.startswith(f"DNS now points at backup {BACKUP_IP}: main failed 2 ")
    print(f"failover propagation to the secondary: {propagation:.3f} s after `failover run`")

    main_server.start()
    back = failover(config, "run")
    assert back.returncode == 0 and "DNS now points at main" in back.stdout
    s3 = wait_for(served(secondary, MAIN_IP, above=s2), timeout=2)
    assert s3 and s3 > s2

    before = (
        live.read_bytes(),
        live.stat().st_mtime_ns,
        (nsd_rig.zones / f"{ZONE}.zone.prev").stat().st_mtime_ns,
    )
    idle = failover(config, "run")
    assert (idle.returncode, idle.stdout, idle.stderr) == (0, "", "")
    after = (
        live.read_bytes(),
        live.stat().st_mtime_ns,
        (nsd_rig.zones / f"{ZONE}.zone.prev").stat().st_mtime_ns,
    )
    assert after == before and primary.serial() == secondary.serial() == s3


def test_verification_reports_each_server_and_status_shows_it(nsd_rig, config_for):
    config = config_for(verify=[nsd_rig.primary.endpoint, nsd_rig.secondary.endpoint])
    result = failover(config, "run", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (zone,) = report["zones"]
    assert zone["status"] == "written" and zone["actions"][0]["ok"]
    assert [(v["server"], v["outcome"], v["expected"], v["served"])
            for v in zone["verify"]] == [
        (nsd_rig.primary.endpoint, "ok", zone["serial"], zone["serial"]),
        (nsd_rig.secondary.endpoint, "ok", zone["serial"], zone["serial"]),
    ]
    print("verified after", [v["seconds"] for v in zone["verify"]], "s")
    status = json.loads(failover(config, "status", "--json").stdout)
    (row,) = status["zones"]
    assert {k: row[k] for k in ("zone", "serial", "ip", "health", "consecutive")} == {
        "zone": ZONE,
        "serial": zone["serial"],
        "ip": MAIN_IP,
        "health": "up",
        "consecutive": 1,
    }
    assert row["changed_at"] and not row["pending"]
    # the same keys as run's report, which adds each answer's detail, status its time
    assert [{k: v for k, v in entry.items() if k != "at"} for entry in row["verify"]] == [
        {k: v for k, v in entry.items() if k != "detail"}
        for entry in sorted(zone["verify"], key=lambda entry: entry["server"])]
    assert status["health"]["state"] == "up" and status["history"][-1]["kind"] == "check"


def test_44_flips_each_served_by_the_primary_and_the_last_by_the_secondary(nsd_rig, config_for):
    config = load(config_for(verify=[nsd_rig.primary.endpoint]))
    state = open_state(nsd_rig.root / "state.sqlite3")
    start = datetime(2024, 1, 1, 8, tzinfo=UTC)
    serials = []
    for i in range(44):
        report = engine.hold(
            config, state, "backup" if i % 2 == 0 else "main", start + timedelta(minutes=i)
        )
        (zone,) = report.zones
        assert report.exit_code == 0, report.problems()
        assert [s.outcome for s in zone.served] == ["ok"]  # the primary serves each serial
        serials.append(zone.outcome.serial)
    state.close()
    assert serials == list(range(2024010100, 2024010144))
    assert wait_for(lambda: nsd_rig.secondary.serial() == serials[-1], timeout=3)
    assert nsd_rig.secondary.address() == MAIN_IP


def test_a_broken_template_never_reaches_nsd(nsd_rig, config_for):
    config = config_for()
    assert failover(config, "zones").returncode == 0
    good = wait_for(nsd_rig.primary.serial)
    template = nsd_rig.templates / f"{ZONE}.zone"
    template.write_text(
        template.read_text().replace("192.0.2.10 ; @IP@\nwww", "203.0.113.999\nwww")
    )
    live_before = (nsd_rig.zones / f"{ZONE}.zone").read_bytes()

    result = failover(config, "zones", "--force")
    assert result.returncode == 1
    assert (
        result.stderr == f'failover: {template}:13: invalid value in "@   IN A   203.0.113.999"\n'
    )
    assert (nsd_rig.zones / f"{ZONE}.zone").read_bytes() == live_before
    assert nsd_rig.primary.serial() == good  # still served: NSD never saw the broken text


def test_nsd_not_running_is_reported_and_the_reload_retried_later(nsd_rig, config_for):
    config = config_for(verify=[nsd_rig.primary.endpoint], verify_timeout=0.5)
    nsd_rig.primary.stop()
    result = failover(config, "zones")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"failover: {ZONE}: reload failed: /")
    assert "nsd-control exit 1: error: connect" in lines[0]
    assert lines[0].endswith("Connection refused (is NSD running?)")
    assert lines[1].startswith(f"failover: {ZONE}: {nsd_rig.primary.endpoint} does not serve 2")
    assert lines[1].endswith(": no answer")
    written = (nsd_rig.zones / f"{ZONE}.zone").read_text()
    status = json.loads(failover(config, "status", "--json").stdout)
    assert (
        status["zones"][0]["pending"]
        and status["zones"][0]["verify"][0]["outcome"] == "unreachable"
    )

    nsd_rig.primary.start()
    retry = failover(config, "zones")  # nothing to rewrite, but the pending reload is redone
    assert retry.returncode == 0, retry.stderr
    assert (nsd_rig.zones / f"{ZONE}.zone").read_text() == written
    assert nsd_rig.primary.serial() == status["zones"][0]["serial"]
    assert not json.loads(failover(config, "status", "--json").stdout)["zones"][0]["pending"]


def test_notify_reaches_the_secondary_and_an_unreachable_target_is_reported(nsd_rig, config_for):
    dead_host, dead_port = free_endpoint()
    config = config_for(
        notify=[nsd_rig.secondary.endpoint, f"{dead_host}:{dead_port}"], notify_timeout=0.2
    )
    result = failover(config, "zones", "--json")
    assert result.returncode == 1
    actions = json.loads(result.stdout)["zones"][0]["actions"]
    assert [(a["action"], a["ok"]) for a in actions] == [
        ("reload", True),
        (f"notify {nsd_rig.secondary.endpoint}", True),
        (f"notify {dead_host}:{dead_port}", False),
    ]
    assert result.stderr == (
        f"failover: {ZONE}: notify {dead_host}:{dead_port} failed: unreachable: "
        "no answer after 3 tries of 0.2 s\n"
    )
    serial = json.loads(result.stdout)["zones"][0]["serial"]
    assert wait_for(lambda: nsd_rig.secondary.serial() == serial, timeout=2)  # not undone


def test_a_secondary_serving_a_newer_serial_is_reported_loudly(nsd_rig, config_for):
    servers = [nsd_rig.primary.endpoint, nsd_rig.secondary.endpoint]
    config = load(config_for(verify=servers, verify_timeout=1))
    june = datetime(2024, 6, 1, tzinfo=UTC)
    state = open_state(nsd_rig.root / "state.sqlite3")
    assert engine.rewrite_zones(config, state, False, june).exit_code == 0
    state.close()
    # Someone restores an old zone directory and state from a January backup:
    os.unlink(nsd_rig.root / "state.sqlite3")
    (nsd_rig.zones / f"{ZONE}.zone").unlink()
    state = open_state(nsd_rig.root / "state.sqlite3")
    report = engine.rewrite_zones(config, state, False, datetime(2024, 1, 1, tzinfo=UTC))
    state.close()
    outcomes = {s.server: (s.outcome, s.serial) for s in report.zones[0].served}
    assert outcomes == {
        nsd_rig.primary.endpoint: ("ok", 2024010100),
        nsd_rig.secondary.endpoint: ("newer", 2024060100),
    }
    (problem,) = report.problems()
    assert (
        f"{nsd_rig.secondary.endpoint} serves serial 2024060100, NEWER than ours 2024010100"
        in problem
    )
    assert report.exit_code == 1


def test_hold_and_release_for_maintenance(nsd_rig, config_for):
    config = config_for()
    held = failover(config, "hold", "backup")
    assert held.returncode == 0 and held.stdout.startswith("held on backup")
    assert wait_for(served(nsd_rig.secondary, BACKUP_IP), timeout=2)
    assert failover(config, "run").returncode == 0  # main is up, but the hold wins
    assert nsd_rig.primary.address() == BACKUP_IP
    assert failover(config, "release").stdout.startswith("released; DNS points at backup")
    back = failover(config, "run")
    assert "DNS now points at main" in back.stdout
    assert wait_for(served(nsd_rig.secondary, MAIN_IP), timeout=2)


def test_watch_fails_over_within_seconds_and_stops_on_sigterm(nsd_rig, main_server, config_for):
    config = config_for(fail_after=1)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "failover", "--config", str(config), "watch", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(served(nsd_rig.secondary, MAIN_IP), timeout=5)
        main_server.stop()
        stopped = time.monotonic()
        assert wait_for(served(nsd_rig.secondary, BACKUP_IP), timeout=5)
        print(
            f"watch: main stopped -> secondary serves backup in {time.monotonic() - stopped:.2f} s"
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=10)
    assert daemon.returncode == 0, err
    assert f"DNS now points at backup {BACKUP_IP}" in out
