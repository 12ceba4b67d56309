"""Turn engine reports and stored state into the text and JSON the CLI prints.

Formatting only: no decisions, no writes. JSON keys are a contract (docs/failover.md);
rename none of them without a note in the docs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from failover.checks import CheckResult
from failover.config import Config
from failover.engine import Report, ZoneReport
from failover.hysteresis import Health
from failover.state import State


def check_lines(healthy: bool, results: list[CheckResult]) -> list[str]:
    lines = [f"main is {'up' if healthy else 'down'}"]
    for r in results:
        mark = "ok  " if r.ok else "FAIL"
        lines.append(f"  {mark} {r.label}: {r.detail} ({r.seconds * 1000:.0f} ms)")
    return lines


def switch_lines(config: Config, report: Report) -> list[str]:
    """The lines printed even when quiet: where DNS now points and why, per rewritten zone."""
    lines = []
    if report.transition is not None and report.transition.switched:
        ip, ip6 = config.ip_for(report.health.active)
        shown = f"{ip} / {ip6}" if ip6 else ip
        lines.append(
            f"DNS now points at {report.health.active} {shown}: {report.transition.reason}"
        )
    for z in report.zones:
        if z.outcome.status == "written" and z.outcome.reason.startswith("IP "):
            lines.append(_zone_line(z))
    return lines


def report_lines(config: Config, report: Report) -> list[str]:
    """The full human summary shown on a terminal."""
    lines = check_lines(bool(report.healthy), report.checks) if report.checks else []
    ip, _ = config.ip_for(report.health.active)
    hold = ", held by the operator" if report.health.hold else ""
    reason = f" ({report.transition.reason})" if report.transition else ""
    now = "now " if report.transition is not None and report.transition.switched else ""
    lines.append(f"DNS {now}points at {report.health.active} {ip}{hold}{reason}")
    lines += [_zone_line(z) for z in report.zones]
    return lines


def _zone_line(z: ZoneReport) -> str:
    o = z.outcome
    if o.status == "failed":
        return f"  {o.zone}: FAILED"
    line = f"  {o.zone}: {o.status}, serial {o.serial}"
    if o.status == "written":
        line += f" (was {o.previous or 'none'}; {o.reason})"
    for a in z.actions:
        line += f"; {a.what} {'ok' if a.ok else 'FAILED'}"
    for s in z.served:
        serving = f" {s.serial}" if s.serial is not None else ""
        line += f"; {s.server} {s.outcome}{serving} after {s.seconds:.2f} s"
    return line


def report_json(report: Report) -> dict[str, Any]:
    return {
        "at": report.now.isoformat(),
        "healthy": report.healthy,
        "checks": [_check_json(r) for r in report.checks],
        "active": report.health.active,
        "switched": bool(report.transition and report.transition.switched),
        "reason": report.transition.reason if report.transition else None,
        "health": _health_json(report.health, report.checked_at),
        "zones": [_zone_report_json(z) for z in report.zones],
        "problems": report.problems(),
    }


def check_json(healthy: bool, results: list[CheckResult]) -> dict[str, Any]:
    return {"healthy": healthy, "checks": [_check_json(r) for r in results]}


def _check_json(r: CheckResult) -> dict[str, Any]:
    return {"check": r.label, "ok": r.ok, "detail": r.detail, "seconds": round(r.seconds, 3)}


def _zone_report_json(z: ZoneReport) -> dict[str, Any]:
    o = z.outcome
    return {
        "zone": o.zone,
        "file": o.file,
        "status": o.status,
        "serial": o.serial,
        "previous_serial": o.previous,
        "reason": o.reason,
        "actions": [{"action": a.what, "ok": a.ok, "detail": a.detail} for a in z.actions],
        "verify": [
            {
                "server": s.server,
                "expected": o.serial,
                "served": s.serial,
                "outcome": s.outcome,
                "seconds": round(s.seconds, 3),
                "detail": s.detail,
            }
            for s in z.served
        ],
    }


def _health_json(health: Health, checked_at: datetime | None) -> dict[str, Any]:
    return {
        "state": health.status,
        "consecutive": health.consecutive,
        "active": health.active,
        "since": _iso(health.since),
        "hold": health.hold,
        "checked_at": _iso(checked_at),
    }


def status_json(state: State, history: int) -> dict[str, Any]:
    """`failover status --json`: per zone what was written, plus health and its history."""
    health, checked_at = state.health()
    zones = []
    for row in state.zones():
        zones.append(
            {
                "zone": row.zone,
                "file": row.file,
                "serial": row.serial,
                "ip": row.ip,
                "ip6": row.ip6,
                "changed_at": _iso(row.changed_at),
                "reason": row.reason,
                "pending": row.pending,
                "health": health.status,
                "consecutive": health.consecutive,
                "verify": [
                    {
                        "server": v.server,
                        "expected": v.expected,
                        "served": v.served,
                        "outcome": v.outcome,
                        "seconds": round(v.seconds, 3),
                        "at": _iso(v.at),
                    }
                    for v in state.verifications(row.zone)
                ],
            }
        )
    events = [
        {"at": _iso(e.at), "kind": e.kind, "ok": e.ok, "detail": e.detail}
        for e in state.events(history)
    ]
    return {"health": _health_json(health, checked_at), "zones": zones, "history": events}


def status_lines(status: dict[str, Any]) -> list[str]:
    h = status["health"]
    hold = f", HELD on {h['hold']}" if h["hold"] else ""
    lines = [
        f"main is {h['state']} ({h['consecutive']} in a row, last checked "
        f"{h['checked_at'] or 'never'}); "
        f"DNS points at {h['active']} since {h['since'] or 'the start'}{hold}"
    ]
    for z in status["zones"]:
        pending = "  (reload/NOTIFY pending)" if z["pending"] else ""
        lines.append(
            f"{z['zone']}: serial {z['serial']}, {z['ip']}, changed {z['changed_at']} "
            f"({z['reason']}){pending}"
        )
        for v in z["verify"]:
            lines.append(
                f"  {v['server']}: {v['outcome']} (serves {v['served'] or 'nothing'}, "
                f"expected {v['expected']}, {v['seconds']} s, at {v['at']})"
            )
    if status["history"]:
        lines.append("history:")
        for e in status["history"]:
            mark = "" if e["ok"] is None else ("up   " if e["ok"] else "down ")
            lines.append(f"  {e['at']} {e['kind']:7} {mark}{e['detail']}")
    return lines


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None
