"""failover's tables in the shared SQLite state store, and the typed rows read from them.

Owns the `failover_*` schema (migrations through mailmirror's Store) and nothing else: it
never decides, renders or talks to the network. Times are stored as ISO 8601 UTC text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from failover.errors import NoStateError
from failover.hysteresis import Health
from mailmirror.store import Store, open_store

MIGRATIONS = [
    """
    CREATE TABLE failover_zone (
        zone         TEXT PRIMARY KEY,
        file         TEXT NOT NULL,
        serial       INTEGER NOT NULL,
        ip           TEXT NOT NULL,
        ip6          TEXT,
        template_sha TEXT NOT NULL,
        changed_at   TEXT NOT NULL,
        reason       TEXT NOT NULL,
        pending      INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE failover_health (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        status      TEXT NOT NULL,
        consecutive INTEGER NOT NULL,
        active      TEXT NOT NULL,
        since       TEXT,
        hold        TEXT,
        checked_at  TEXT
    );
    CREATE TABLE failover_event (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        at     TEXT NOT NULL,
        kind   TEXT NOT NULL,
        ok     INTEGER,
        detail TEXT NOT NULL
    );
    CREATE TABLE failover_verify (
        zone     TEXT NOT NULL,
        server   TEXT NOT NULL,
        expected INTEGER NOT NULL,
        served   INTEGER,
        outcome  TEXT NOT NULL,
        seconds  REAL NOT NULL,
        at       TEXT NOT NULL,
        PRIMARY KEY (zone, server)
    )
    """,
]
KEEP_EVENTS = 500  # health history is for humans; older rows are pruned


@dataclass(frozen=True)
class ZoneRow:
    """What was last written for a zone. pending: written, but reload/NOTIFY not yet confirmed."""

    zone: str
    file: str
    serial: int
    ip: str
    ip6: str | None
    template_sha: str
    changed_at: datetime
    reason: str
    pending: bool = False


@dataclass(frozen=True)
class Event:
    at: datetime
    kind: str  # check | switch | hold | release
    ok: bool | None
    detail: str


@dataclass(frozen=True)
class VerifyRow:
    zone: str
    server: str
    expected: int
    served: int | None
    outcome: str
    seconds: float
    at: datetime


class State:
    """failover's view of the store. Every write is its own autocommit statement or transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.path
        store.migrate("failover", MIGRATIONS)

    def close(self) -> None:
        self.store.close()

    def check_writable(self) -> None:
        """Raise sqlite3.Error unless the store takes writes. A read-only file opens and reads
        fine and fails only at the first write, which may come after a zone file was written."""
        conn = self.store.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM failover_event WHERE 0")  # a write that changes nothing
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def zone(self, zone: str) -> ZoneRow | None:
        row = self.store.conn.execute(
            "SELECT * FROM failover_zone WHERE zone = ?", (zone,)
        ).fetchone()
        return _zone_row(row) if row else None

    def zones(self) -> list[ZoneRow]:
        rows = self.store.conn.execute("SELECT * FROM failover_zone ORDER BY zone").fetchall()
        return [_zone_row(r) for r in rows]

    def save_zone(self, row: ZoneRow) -> None:
        self.store.conn.execute(
            "INSERT OR REPLACE INTO failover_zone VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.zone, row.file, row.serial, row.ip, row.ip6, row.template_sha,
             row.changed_at.isoformat(), row.reason, int(row.pending)),
        )  # fmt: skip

    def set_pending(self, zone: str, pending: bool) -> None:
        self.store.conn.execute(
            "UPDATE failover_zone SET pending = ? WHERE zone = ?", (int(pending), zone)
        )

    def has_health(self) -> bool:
        """Whether any health was ever saved (a new or lost state store has none)."""
        return self.store.conn.execute(
            "SELECT 1 FROM failover_health WHERE id = 1").fetchone() is not None

    def health(self) -> tuple[Health, datetime | None]:
        """The remembered health (defaults before any check) and when main was last checked."""
        row = self.store.conn.execute(
            "SELECT status, consecutive, active, since, hold, checked_at "
            "FROM failover_health WHERE id = 1"
        ).fetchone()
        if row is None:
            return Health(), None
        status, consecutive, active, since, hold, checked_at = row
        return Health(status, consecutive, active, _time(since), hold), _time(checked_at)

    def save_health(self, health: Health, checked_at: datetime | None) -> None:
        stamp = health.since.isoformat() if health.since else None
        checked = checked_at.isoformat() if checked_at else None
        self.store.conn.execute(
            "INSERT OR REPLACE INTO failover_health VALUES (1, ?, ?, ?, ?, ?, ?)",
            (health.status, health.consecutive, health.active, stamp, health.hold, checked),
        )

    def add_event(self, event: Event) -> None:
        ok = None if event.ok is None else int(event.ok)
        conn = self.store.conn
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO failover_event(at, kind, ok, detail) VALUES (?, ?, ?, ?)",
                (event.at.isoformat(), event.kind, ok, event.detail),
            )
            conn.execute(
                "DELETE FROM failover_event WHERE id <= (SELECT MAX(id) FROM failover_event) - ?",
                (KEEP_EVENTS,),
            )

    def events(self, limit: int) -> list[Event]:
        """The newest `limit` events, oldest first."""
        rows = self.store.conn.execute(
            "SELECT at, kind, ok, detail FROM failover_event ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [Event(_time(at), kind, None if ok is None else bool(ok), d)
                for at, kind, ok, d in reversed(rows)]  # fmt: skip

    def save_verify(self, row: VerifyRow) -> None:
        self.store.conn.execute(
            "INSERT OR REPLACE INTO failover_verify VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.zone, row.server, row.expected, row.served, row.outcome, row.seconds,
             row.at.isoformat()),
        )  # fmt: skip

    def verifications(self, zone: str) -> list[VerifyRow]:
        rows = self.store.conn.execute(
            "SELECT zone, server, expected, served, outcome, seconds, at FROM failover_verify "
            "WHERE zone = ? ORDER BY server",
            (zone,),
        ).fetchall()
        return [VerifyRow(z, s, e, v, o, sec, _time(at)) for z, s, e, v, o, sec, at in rows]


def open_state(path: Path, readonly: bool = False, existing: bool = False) -> State:
    """Open the shared store at `path` and bring failover's tables up to date.

    `readonly` (status) writes nothing, and `existing` (release, which writes) creates
    nothing: a mistyped --state must not leave an empty store behind that then reads as
    "main is up". With either, raises NoStateError when the file, or failover's tables in
    it, do not exist yet; StoreError (exit 3) when the database is unusable or too new.
    """
    path = Path(path).expanduser()
    must_exist = readonly or existing
    if must_exist and not path.exists():
        raise _no_state(path)
    store = open_store(path, readonly, create=not must_exist)
    try:
        if must_exist and not _has_tables(store):
            raise _no_state(path)
        return State(store)
    except BaseException:
        store.close()
        raise


def _no_state(path: Path) -> NoStateError:
    return NoStateError(
        f"no failover state at {path} yet: nothing has run with this state database; check "
        "the path (--state, $MAILMIRROR_STATE), or run `failover run` first"
    )


def _has_tables(store: Store) -> bool:
    """Whether failover ever ran on this store (mailmirror alone never makes its tables)."""
    return store.conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'failover_health'"
    ).fetchone() is not None


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _zone_row(row: tuple) -> ZoneRow:
    zone, file, serial, ip, ip6, sha, changed_at, reason, pending = row
    return ZoneRow(zone, file, serial, ip, ip6, sha, _time(changed_at), reason, bool(pending))
