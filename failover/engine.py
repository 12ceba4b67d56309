"""One failover cycle: check main, decide, rewrite the zones, reload/notify, verify.

The only module that sequences the others and writes the state store; it prints nothing
(the CLI renders the returned Report). A lock file next to the state store serialises cron
runs, watch cycles and manual commands so two writers never hand out the same serial.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from failover import hysteresis, rewrite
from failover.checks import CheckResult, run_checks
from failover.config import Config
from failover.errors import EXIT_PARTIAL, DirectoryError, TemplateError
from failover.hysteresis import Health, Policy, Transition
from failover.notify import Action, reload_zone, send_notify
from failover.state import Event, State, VerifyRow
from failover.verify import Served, verify


@dataclass
class ZoneReport:
    outcome: rewrite.Outcome
    actions: list[Action] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)

    def problems(self) -> list[str]:
        """One line per thing that went wrong for this zone, each saying what to do."""
        zone = self.outcome.zone
        found = [self.outcome.reason] if self.outcome.status == "failed" else []
        found += [f"{zone}: {a.what} failed: {a.detail}" for a in self.actions if not a.ok]
        for s in self.served:
            if s.outcome == "newer":
                found.append(
                    f"{zone}: {s.server} serves serial {s.serial}, NEWER than ours "
                    f"{self.outcome.serial}: the zone was changed elsewhere; compare before "
                    "editing, failover will not silently overtake it"
                )
            elif s.outcome != "ok":
                found.append(f"{zone}: {s.server} does not serve {self.outcome.serial}: {s.detail}")
        return found


@dataclass
class Report:
    now: datetime
    health: Health
    zones: list[ZoneReport]
    checks: list[CheckResult] = field(default_factory=list)
    healthy: bool | None = None
    transition: Transition | None = None
    checked_at: datetime | None = None  # when main was last checked (this run, if it checked)

    def problems(self) -> list[str]:
        """Each once: templates that serve one zone all carry the same line."""
        return list(dict.fromkeys(p for z in self.zones for p in z.problems()))

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.problems() else 0


def run_cycle(config: Config, state: State, now: datetime | None = None) -> Report:
    """What cron calls: check main, record the observation, repoint DNS if the decision says so."""
    healthy, results = run_checks(config.checks, config.combine)
    now = now or datetime.now(UTC)
    policy = Policy(config.fail_after, config.recover_after, config.min_backup_seconds)
    with _changing(state):
        health, _ = _remembered(config, state)
        transition = hysteresis.observe(health, healthy, now, policy)
        state.save_health(transition.health, now)
        summary = "; ".join(f"{r.label}: {r.detail}" for r in results)
        state.add_event(Event(now, "check", healthy, summary))
        if transition.switched:
            state.add_event(Event(now, "switch", None, _switch_text(config, transition)))
        zones = apply_zones(config, state, transition.health, now, force=False)
    return Report(now, transition.health, zones, results, healthy, transition, now)


def rewrite_zones(config: Config, state: State, force: bool, now: datetime | None = None) -> Report:
    """`failover zones`: rewrite for the server DNS points at now, without checking main."""
    now = now or datetime.now(UTC)
    with _changing(state):
        health, checked_at = _remembered(config, state)
        zones = apply_zones(config, state, health, now, force)
    return Report(now, health, zones, checked_at=checked_at)


def hold(
    config: Config, state: State, server: hysteresis.Server, now: datetime | None = None
) -> Report:
    """Pin DNS to `server` for maintenance and apply it at once."""
    now = now or datetime.now(UTC)
    with _changing(state):
        health, checked_at = _remembered(config, state)
        transition = hysteresis.hold(health, server, now)
        state.save_health(transition.health, checked_at)
        state.add_event(Event(now, "hold", None, f"held on {server} by the operator"))
        if transition.switched:
            state.add_event(Event(now, "switch", None, _switch_text(config, transition)))
        zones = apply_zones(config, state, transition.health, now, force=False)
    return Report(now, transition.health, zones, transition=transition, checked_at=checked_at)


def release(state: State, now: datetime | None = None) -> tuple[Health, hysteresis.Server | None]:
    """End a hold; the next check decides where DNS points. Returns the health and the server
    that was held, or None when nothing was (and then writes nothing)."""
    now = now or datetime.now(UTC)
    with locked(state.path):
        health, checked_at = state.health()
        if health.hold is None:
            return health, None
        released = hysteresis.release(health)
        state.save_health(released, checked_at)
        state.add_event(Event(now, "release", None, "hold released; checks decide again"))
    return released, health.hold


def watch(
    config: Config,
    state: State,
    interval: float,
    stop: threading.Event,
    on_report: Callable[[Report], None],
    on_error: Callable[[Exception], None],
) -> None:
    """Run cycles every `interval` seconds until `stop` is set (SIGTERM, Ctrl-C).

    A failing cycle (state store busy, zones directory gone) is reported and retried at the
    next tick rather than ending the daemon: the point of watch is to be there when needed.
    """
    while not stop.is_set():
        started = datetime.now(UTC)
        try:
            on_report(run_cycle(config, state, started))
        except Exception as exc:  # the daemon's isolation boundary: report, retry next tick
            on_error(exc)
        spent = (datetime.now(UTC) - started).total_seconds()
        stop.wait(max(0.0, interval - spent))


def apply_zones(
    config: Config, state: State, health: Health, now: datetime, force: bool
) -> list[ZoneReport]:
    """Rewrite every template for the server `health` points at, then reload, notify, verify.

    A zone that fails (bad template) is reported and skipped; the others still proceed.
    Raises DirectoryError before touching anything when a directory is unusable.
    """
    templates = rewrite.load_templates(config.templates)
    rewrite.check_zones_dir(config.zones_dir)
    ip, ip6 = config.ip_for(health.active)
    reports = []
    for template in templates:
        row = state.zone(template.zone)
        if template.problem is not None:
            reports.append(ZoneReport(rewrite.failed(template, template.problem)))
            continue
        try:
            outcome = rewrite.rewrite(template, row, ip, ip6, config.zones_dir, now, force)
        except TemplateError as exc:
            outcome = rewrite.failed(template, exc.located(str(template.path)))
        except OSError as exc:
            live = config.zones_dir / template.path.name
            outcome = rewrite.failed(template, f"{live}: cannot write: {exc.strerror}")
        if outcome.row is not None and outcome.status in ("written", "adopted"):
            state.save_zone(outcome.row)
        reports.append(ZoneReport(outcome))
    announce = [r for r in reports if _needs_announcing(r, state)]
    for report in announce:
        report.actions = _announce(config, report.outcome)
        if all(a.ok for a in report.actions):
            state.set_pending(report.outcome.zone, False)
    for report in announce:
        if config.verify and report.outcome.serial is not None:
            report.served = _verify(config, state, report.outcome, now)
    return reports


def _remembered(config: Config, state: State) -> tuple[Health, datetime | None]:
    """The remembered health. With none (a new or lost state store), DNS is taken to point
    where the live zones point: a run during an outage must not send it back to the dead
    main (the checks then decide, with the usual hysteresis). What it infers is saved, so
    `failover status` says it from then on."""
    if state.has_health():
        return state.health()
    try:
        templates = rewrite.load_templates(config.templates)
        rewrite.check_zones_dir(config.zones_dir)
    except DirectoryError:
        return Health(), None  # apply_zones says what is wrong with the directories
    ips = {server: config.ip_for(server) for server in ("backup", "main")}
    health = Health(active=rewrite.points_at(templates, config.zones_dir, ips) or "main")
    state.save_health(health, None)
    return health, None


def _needs_announcing(report: ZoneReport, state: State) -> bool:
    """Written now, or written earlier while the reload/NOTIFY failed (pending)."""
    if report.outcome.status == "written":
        return True
    row = state.zone(report.outcome.zone)
    return report.outcome.status == "unchanged" and row is not None and row.pending


def _announce(config: Config, outcome: rewrite.Outcome) -> list[Action]:
    actions = []
    if config.reload:
        actions.append(reload_zone(config.reload, outcome.zone, config.zones_dir / outcome.file))
    actions += [send_notify(outcome.zone, t, config.notify_timeout) for t in config.notify]
    return actions


def _verify(config: Config, state: State, outcome: rewrite.Outcome, now: datetime) -> list[Served]:
    assert outcome.serial is not None
    served = verify(outcome.zone, config.verify, outcome.serial, config.verify_timeout)
    for s in served:
        state.save_verify(
            VerifyRow(outcome.zone, s.server, outcome.serial, s.serial, s.outcome, s.seconds, now)
        )
    return served


def _switch_text(config: Config, transition: Transition) -> str:
    server = transition.health.active
    ip, ip6 = config.ip_for(server)
    shown = f"{ip} / {ip6}" if ip6 else ip
    return f"DNS now points at {server} {shown}: {transition.reason}"


@contextmanager
def _changing(state: State) -> Iterator[None]:
    """The lock, and a store known to take writes: a read-only one fails here (sqlite3.Error),
    before a zone file is written that could then not be recorded."""
    with locked(state.path):
        state.check_writable()
        yield


@contextmanager
def locked(state_path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the state store for the duration of a change."""
    lock_path = state_path.with_name(state_path.name + ".failover.lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
