"""The SQLite state store shared by mailmirror and failover.

It owns opening the database (WAL, busy timeout), refusing a corrupt or too-new file, and
applying each component's schema migrations. Components ("sync", "failover", ...) own their
tables and pass their own migration lists; the store knows nothing of their meaning.
A lost database is never treated as permission to delete: callers see an empty store only
when the file did not exist.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from mailmirror.errors import StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema (
    component TEXT PRIMARY KEY,
    version   INTEGER NOT NULL
)
"""
_META = "CREATE TABLE IF NOT EXISTS store_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
CHECK_EVERY_SECONDS = 86400  # a full integrity check reads the whole file: once a day
FULL_BYTES = 1 << 20  # free space under which an I/O error on the store is the disk being full


class Store:
    """An open state database. Use as a context manager or call close()."""

    def __init__(self, path: Path, conn: sqlite3.Connection, created: bool,
                 checked_at: float | None = None, readonly: bool = False) -> None:
        self.path = path
        self.conn = conn
        self.created = created
        self.readonly = readonly
        self._checked_at = checked_at  # a check to record once a component's schema is known

    def migrate(self, component: str, migrations: Sequence[str]) -> None:
        """Bring `component`'s tables to len(migrations); each entry is one SQL script.

        Raises StoreError when the database was written by a newer version of the component.
        A read-only store (a dry run) that needs a migration gets it on a copy in memory: the
        run reads the new schema, the file keeps the old one.
        """
        have = self._version(component)
        if have > len(migrations):
            raise StoreError(
                f"state database {self.path} has {component} schema v{have}, newer than this "
                f"version understands (v{len(migrations)}): upgrade mailmirror or use --state"
            )
        if have == len(migrations):
            self._record_check()
            return
        try:
            if self.readonly and not self.created:
                self._copy_to_memory()
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                # two runs that start together on a new file both saw v0: the second to get
                # the write lock finds the tables made and must not create them again
                have = self._version(component)
                for script in migrations[have:]:
                    for statement in _statements(script):
                        self.conn.execute(statement)
                self.conn.execute(
                    "INSERT INTO schema(component, version) VALUES(?, ?) "
                    "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                    (component, len(migrations)),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: migration failed: {exc}") from exc
        self._record_check()

    def _copy_to_memory(self) -> None:
        memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.conn.backup(memory)
        memory.execute("PRAGMA foreign_keys=ON")
        memory.execute(_SCHEMA)
        memory.execute(_META)
        self.conn.close()
        self.conn = memory

    def _record_check(self) -> None:
        """Write the time of today's check, only once a component found the schema one it
        knows: a database from a newer version is refused without a byte written (spec D3)."""
        if self._checked_at is not None:
            self.conn.execute("INSERT OR REPLACE INTO store_meta VALUES ('checked_at', ?)",
                              (str(self._checked_at),))
            self._checked_at = None

    def _version(self, component: str) -> int:
        if not _has_table(self.conn, "schema"):  # a file opened read-only that is not ours
            return 0
        row = self.conn.execute(
            "SELECT version FROM schema WHERE component = ?", (component,)
        ).fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (name,)).fetchone() is not None


def _check_now_and_then(conn: sqlite3.Connection, created: bool, readonly: bool
                        ) -> float | None:
    """PRAGMA quick_check once a day: damage found later by a query raises sqlite3 errors,
    which callers report like this one (never read as an empty store). The time to record
    as the last check (by Store.migrate), or None."""
    now = time.time()
    if not created:
        row = (conn.execute("SELECT value FROM store_meta WHERE name = 'checked_at'").fetchone()
               if _has_table(conn, "store_meta") else None)
        if row and now - float(row[0]) < CHECK_EVERY_SECONDS:
            return None
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(check)
    return None if readonly else now


def open_store(path: Path, readonly: bool = False, create: bool = True) -> Store:
    """Open (creating if absent, unless `create` is False) the state database at `path`.

    `readonly` (dry runs, status) writes nothing to the file, not even the time of the last
    check, WAL mode or the store's own tables (--state may name a file that is not ours);
    where there is no database yet, it works on an empty one in memory and creates nothing.

    Raises StoreError with a one-line fix when the file is not a usable SQLite database,
    is unwritable, its parent cannot be created, or (`create` False) it does not exist.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise StoreError(f"state database {path} is a directory: --state names the database "
                         f"file, e.g. {path / 'state.sqlite3'}")
    created = not path.exists()
    if created and not create:
        raise StoreError(f"no state database at {path} yet: nothing has been synced with it "
                         "(check --state)")
    if not (created and readonly):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where the directory would be
            raise StoreError(f"cannot create the state directory {path.parent}: a file is in "
                             "the way; use --state PATH") from None
        except OSError as exc:
            raise StoreError(f"cannot create the state directory {path.parent}: "
                             f"{exc.strerror}; use --state PATH") from exc
    target = ":memory:" if created and readonly else path
    try:
        conn = sqlite3.connect(target, timeout=30, isolation_level=None,
                               check_same_thread=False)
        writes = not readonly or created  # a new read-only store lives in memory
        if writes:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        if writes:
            conn.execute(_SCHEMA)
            conn.execute(_META)
        checked_at = _check_now_and_then(conn, created, readonly)
    except sqlite3.Error as exc:
        raise store_error(exc, path) from exc
    return Store(path, conn, created, checked_at, readonly)


def _full(path: Path | None) -> bool:
    """Whether the file system of the database has no room left for this user."""
    if path is None:
        return False
    try:
        info = os.statvfs(path.parent)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < FULL_BYTES


def store_error(exc: sqlite3.Error, path: Path | None = None) -> StoreError:
    """The one line for an SQLite error on the state database.

    "Move it aside" only when it is damaged: a full disk, a read-only file or a busy
    database is not, and moving it aside would throw a good base away (the next sync is
    then a first one, and deletions not yet synced come back).
    """
    name = getattr(exc, "sqlite_errorname", None) or ""
    where = f"state database {path}" if path else "state database"
    if name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR") and _full(path):
        # a full disk also shows as an I/O error: the WAL's -shm file cannot grow
        return StoreError(f"{where}: the disk is full ({exc}): free some space and run "
                          "again; the database itself is fine")
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        return StoreError(f"{where} cannot be written ({exc}): fix the permissions of the "
                          "file and its directory (run as their owner), or use --state PATH")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreError(f"{where} is busy ({exc}): another process holds it; run again")
    if name.startswith("SQLITE_IOERR"):
        return StoreError(f"{where}: input/output error ({exc}): check the disk, then run again")
    return StoreError(f"{where} is damaged ({exc}); it was left untouched: move it aside and "
                      "the next run starts afresh (a sync merges both sides, deleting nothing; "
                      "failover reads the live zones), or use --state PATH")
