"""The failover decision: which server DNS points at, given the history of health checks.

Pure: the clock reading arrives as `now`, the policy as a value. Fail over after `fail_after`
consecutive failures; fail back after `recover_after` consecutive successes once at least
`min_backup_seconds` were spent on the backup; an operator hold overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

Server = Literal["main", "backup"]
Status = Literal["up", "down"]


@dataclass(frozen=True)
class Policy:
    fail_after: int = 2
    recover_after: int = 1
    min_backup_seconds: float = 0.0


@dataclass(frozen=True)
class Health:
    """What the state store remembers between runs.

    status/consecutive: the last observation of main and how many identical ones in a row.
    active: where DNS points. since: when `active` last changed (None: never).
    hold: an operator's pin to one server, or None.
    """

    status: Status = "up"
    consecutive: int = 0
    active: Server = "main"
    since: datetime | None = None
    hold: Server | None = None


@dataclass(frozen=True)
class Transition:
    health: Health
    switched: bool
    reason: str


def observe(health: Health, ok: bool, now: datetime, policy: Policy) -> Transition:
    """Fold one health observation of main into `health` and decide where DNS points."""
    status: Status = "up" if ok else "down"
    streak = health.consecutive + 1 if status == health.status else 1
    seen = replace(health, status=status, consecutive=streak)
    if health.hold is not None:
        return _move(seen, health.hold, now, f"held on {health.hold} by the operator")
    if health.active == "main" and not ok and streak >= policy.fail_after:
        return _move(seen, "backup", now, f"main failed {streak} consecutive check(s)")
    if health.active == "backup" and ok and streak >= policy.recover_after:
        spent = None if health.since is None else (now - health.since).total_seconds()
        if spent is None or spent >= policy.min_backup_seconds:
            return _move(seen, "main", now, f"main healthy again for {streak} check(s)")
        wait = f"{spent:.0f} of {policy.min_backup_seconds:.0f} s"
        return Transition(seen, False, f"main healthy, but on backup for only {wait}")
    return Transition(seen, False, _steady_reason(seen, policy))


def hold(health: Health, server: Server, now: datetime) -> Transition:
    """Pin DNS to `server` until release(), whatever the checks say (maintenance)."""
    return _move(replace(health, hold=server), server, now, f"held on {server} by the operator")


def release(health: Health) -> Health:
    """Hand the decision back to the checks; where DNS points changes at the next observation."""
    return replace(health, hold=None)


def _move(health: Health, server: Server, now: datetime, reason: str) -> Transition:
    if health.active == server:
        return Transition(health, False, reason)
    return Transition(replace(health, active=server, since=now), True, reason)


def _steady_reason(health: Health, policy: Policy) -> str:
    if health.active == "main" and health.status == "down":
        need = policy.fail_after
        return f"main failed {health.consecutive} of {need} check(s) needed to fail over"
    if health.active == "backup" and health.status == "up":
        need = policy.recover_after
        return f"main healthy {health.consecutive} of {need} check(s) needed to fail back"
    return f"main {health.status}, DNS stays on {health.active}"
