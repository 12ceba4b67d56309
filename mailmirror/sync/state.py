"""The sync component's tables in the shared state store: pairs, base rows, folder stamps, runs.

A pair is keyed by its two replica ids in sorted order ("low" and "high"), never by host name or
path, so a host name that now points at another server selects another pair. Base rows hold the
common entry plus each side's file name. Callers map their sides A/B onto low/high.
"""

from __future__ import annotations

import functools
import itertools
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from mailmirror import crashpoint
from mailmirror.maildir.names import to_raw
from mailmirror.replica.base import Replica, Stamp
from mailmirror.store import Store
from mailmirror.sync.model import Entry

COMPONENT = "sync"
MIGRATIONS = [
    """
    CREATE TABLE sync_pair (
        pair_id INTEGER PRIMARY KEY,
        id_low  TEXT NOT NULL,
        id_high TEXT NOT NULL,
        label_low  TEXT,
        label_high TEXT,
        UNIQUE (id_low, id_high)
    );
    CREATE TABLE sync_base (
        pair_id INTEGER NOT NULL,
        key     TEXT NOT NULL,
        folder  TEXT NOT NULL,
        subdir  TEXT NOT NULL,
        flags   TEXT NOT NULL,
        size    INTEGER,
        name_low  TEXT NOT NULL,  -- relname on each replica: "cur/NAME" or "new/NAME"
        name_high TEXT NOT NULL,
        PRIMARY KEY (pair_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX sync_base_folder ON sync_base (pair_id, folder);
    CREATE TABLE sync_folder (
        pair_id INTEGER NOT NULL,
        folder  TEXT NOT NULL,
        side    TEXT NOT NULL,
        cur_ns  INTEGER,
        new_ns  INTEGER,
        trusted INTEGER NOT NULL,
        PRIMARY KEY (pair_id, folder, side)
    ) WITHOUT ROWID;
    CREATE TABLE sync_run (
        run_id  INTEGER PRIMARY KEY,
        pair_id INTEGER NOT NULL,
        started REAL NOT NULL,
        ended   REAL,
        outcome TEXT NOT NULL,
        summary TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX sync_run_pair ON sync_run (pair_id, run_id)
    """,
    # v2: base rows clustered by folder, so a changed folder's names are one range scan
    # (v1 looked every row up through an index: 0.85 s for 100,000 messages)
    """
    CREATE TABLE sync_base2 (
        pair_id INTEGER NOT NULL,
        folder  TEXT NOT NULL,
        key     TEXT NOT NULL,
        subdir  TEXT NOT NULL,
        flags   TEXT NOT NULL,
        size    INTEGER,
        name_low  TEXT NOT NULL,
        name_high TEXT NOT NULL,
        PRIMARY KEY (pair_id, folder, key)
    ) WITHOUT ROWID;
    INSERT INTO sync_base2 (pair_id, folder, key, subdir, flags, size, name_low, name_high)
        SELECT pair_id, folder, key, subdir, flags, size, name_low, name_high FROM sync_base;
    DROP TABLE sync_base;
    ALTER TABLE sync_base2 RENAME TO sync_base;
    CREATE UNIQUE INDEX sync_base_key ON sync_base (pair_id, key)
    """,
    # v3: the rows whose two names differ (separators or ,U= fields), usually none: whether a
    # folder has any is then one index probe, not a comparison on each of its rows (a third
    # of what reading a folder's names cost)
    """
    CREATE INDEX sync_base_differ ON sync_base (pair_id, folder) WHERE name_low <> name_high
    """,
]

FLAG_SEP = " "
# base rows per INSERT statement, largest first (800 parameters at most); few sizes, so the
# connection's statement cache holds three prepared statements, not one per remainder
ROWS_PER_INSERT = (100, 10, 1)


@functools.lru_cache(maxsize=4096)
def encode_flags(flags: frozenset[str]) -> str:
    """Cached, as decode_flags is: a store holds few distinct flag sets, and a first sync
    records one per message."""
    return FLAG_SEP.join(sorted(flags))


@functools.cache
def _upsert_sql(rows: int) -> str:
    # REPLACE also drops the row of a key that moved folder (the unique key index)
    return ("INSERT OR REPLACE INTO sync_base (pair_id, key, folder, subdir, flags, size, "
            "name_low, name_high) VALUES " + ",".join(["(?,?,?,?,?,?,?,?)"] * rows))


@functools.lru_cache(maxsize=4096)
def decode_flags(text: str) -> frozenset[str]:
    """Cached: a store holds few distinct flag sets, so rows share one frozenset each."""
    return frozenset(text.split(FLAG_SEP)) if text else frozenset()


@dataclass(frozen=True, slots=True)
class BaseRow:
    entry: Entry
    names: tuple[str, str]  # relname ("cur/NAME") on the low and on the high replica


@dataclass(frozen=True, slots=True)
class FolderRow:
    stamp: Stamp | None
    trusted: bool


@dataclass(frozen=True, slots=True)
class PairInfo:
    pair_id: int
    id_low: str
    id_high: str
    label_low: str | None
    label_high: str | None
    created: bool


class SyncState:
    """Typed access to the sync tables of one store."""

    def __init__(self, store: Store) -> None:
        store.migrate(COMPONENT, MIGRATIONS)
        self.store = store
        self.conn: sqlite3.Connection = store.conn
        # a BLOB cast gives the text as stored: raw names (UTF-8) only in a UTF-8 database,
        # which is what mailmirror creates; another tool may have made a UTF-16 one
        (encoding,) = self.conn.execute("PRAGMA encoding").fetchone()
        self._utf8 = encoding == "UTF-8"

    def pair(self, id_low: str, id_high: str, label_low: str, label_high: str,
             create: bool = True) -> PairInfo:
        """The pair's row; with create=False (dry runs) a missing pair reads as new, id -1."""
        row = self.conn.execute(
            "SELECT pair_id, label_low, label_high FROM sync_pair WHERE id_low=? AND id_high=?",
            (id_low, id_high),
        ).fetchone()
        if row:
            if create:
                self.conn.execute(
                    "UPDATE sync_pair SET label_low=?, label_high=? WHERE pair_id=?",
                    (label_low, label_high, row[0]),
                )
            return PairInfo(row[0], id_low, id_high, row[1], row[2], False)
        if not create:
            return PairInfo(-1, id_low, id_high, None, None, True)
        cur = self.conn.execute(
            "INSERT INTO sync_pair(id_low, id_high, label_low, label_high) VALUES(?,?,?,?)",
            (id_low, id_high, label_low, label_high),
        )
        return PairInfo(cur.lastrowid or 0, id_low, id_high, None, None, True)

    def pairs_with(self, replica_id: str) -> list[PairInfo]:
        rows = self.conn.execute(
            "SELECT pair_id, id_low, id_high, label_low, label_high FROM sync_pair "
            "WHERE id_low=? OR id_high=?", (replica_id, replica_id)).fetchall()
        return [PairInfo(*r, False) for r in rows]

    def ids_seen_at(self, label: str) -> set[str]:
        """The replica ids that `label` (a path or address) reached in earlier syncs."""
        rows = self.conn.execute(
            "SELECT id_low FROM sync_pair WHERE label_low=? "
            "UNION SELECT id_high FROM sync_pair WHERE label_high=?", (label, label))
        return {rid for (rid,) in rows}

    def base_count(self, pair_id: int) -> int:
        """How many messages the pair held in common after its last sync."""
        return self.conn.execute(
            "SELECT COUNT(*) FROM sync_base WHERE pair_id=?", (pair_id,)).fetchone()[0]

    def moved_labels(self, a: Replica, b: Replica) -> list[str]:
        """One line per side whose address now reaches another replica than it used to.

        After a DNS failover, "mailhost" may now be the backup server: the pair is keyed by
        replica ids, so the right base is used anyway; this only tells the user.
        """
        lines = []
        for here, there in ((a, b), (b, a)):
            low, high = sorted((here, there), key=lambda r: r.id)
            row = self.conn.execute(
                "SELECT label_low, label_high FROM sync_pair WHERE id_low=? AND id_high=?",
                (low.id, high.id)).fetchone()
            if row and tuple(row) == (low.label, high.label):
                continue  # already seen under these names: told once, not every run
            for pair in self.pairs_with(here.id):
                other_id, other_label = ((pair.id_high, pair.label_high)
                                         if pair.id_low == here.id
                                         else (pair.id_low, pair.label_low))
                if other_label == there.label and other_id != there.id:
                    lines.append(f"{there.label} now reaches replica {there.id[:8]} (it was "
                                 f"{other_id[:8]} before, e.g. after a DNS failover): using "
                                 "the base of that pair, or a safe first sync")
        return lines

    def folders(self, pair_id: int) -> dict[tuple[str, str], FolderRow]:
        rows = self.conn.execute(
            "SELECT folder, side, cur_ns, new_ns, trusted FROM sync_folder WHERE pair_id=?",
            (pair_id,),
        )
        return {
            (folder, side): FolderRow(
                Stamp(cur, new) if cur is not None else None, bool(trusted))
            for folder, side, cur, new, trusted in rows
        }

    def base_names(self, pair_id: int, folder: str,
                   wants: dict[int, str | None]) -> dict[int, set[bytes]]:
        """The raw relnames (names.to_raw) the base holds in `folder` on each side asked (0
        low, 1 high): all of them, or only those in the subdir given ("cur" or "new").

        Joined inside SQLite and split in C (names never hold a newline), as bytes: no Python
        object per row but the set's, and SQLite works without the GIL, so scan() runs this
        beside its listing. A message has one name on both sides unless their separators or
        ,U= fields differ, so when both sides are asked alike and no name in the folder
        differs, one walk over its rows and one set serve both (shared: callers must not
        change it).
        """
        if len(wants) == 2 and wants[0] == wants[1]:
            names = self._names(pair_id, folder, 0, wants[0])
            (differ,) = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM sync_base INDEXED BY sync_base_differ "
                "WHERE pair_id=? AND folder=? AND name_low <> name_high)",
                (pair_id, folder)).fetchone()
            return {0: names, 1: self._names(pair_id, folder, 1, wants[1]) if differ else names}
        return {side: self._names(pair_id, folder, side, only) for side, only in wants.items()}

    def _names(self, pair_id: int, folder: str, side: int, subdir: str | None) -> set[bytes]:
        column = ("name_low", "name_high")[side]
        only = f" AND substr({column}, 1, 4) = ?" if subdir else ""
        joined = f"group_concat({column}, char(10))"
        (names,) = self.conn.execute(
            f"SELECT {f'CAST({joined} AS BLOB)' if self._utf8 else joined} FROM sync_base "
            f"WHERE pair_id=? AND folder=?{only}",
            (pair_id, folder, *([f"{subdir}/"] if subdir else []))).fetchone()
        if not names:
            return set()
        if self._utf8:
            return set(names.split(b"\n"))
        return set(map(to_raw, names.split("\n")))

    def base_for(self, pair_id: int, keys: Sequence[str]) -> Iterator[tuple[str, BaseRow]]:
        """Full base rows of these keys (those that have one)."""
        if not keys or not self.has_base(pair_id):
            return
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            # without the hint SQLite walks the pair's whole primary key once per chunk
            # (37 ms per 500 keys at 100,000 messages, against 5 ms through the key index)
            rows = self.conn.execute(
                "SELECT key, folder, subdir, flags, size, name_low, name_high FROM sync_base "
                f"INDEXED BY sync_base_key WHERE pair_id=? AND key IN ({marks})",
                (pair_id, *chunk))
            for key, folder, subdir, flags, size, low, high in rows:
                yield key, BaseRow(Entry(folder, subdir, decode_flags(flags), size), (low, high))

    def has_base(self, pair_id: int) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM sync_base WHERE pair_id=? LIMIT 1", (pair_id,)).fetchone() is not None

    def write_base(self, pair_id: int, rows: Iterable[tuple[str, BaseRow | None]]) -> None:
        """Record base rows (None deletes) in one transaction: after the actions they describe."""
        upserts, deletes = [], []
        for key, row in rows:
            if row is None:
                deletes.append((pair_id, key))
            else:
                e = row.entry
                upserts.append((pair_id, key, e.folder, e.subdir, encode_flags(e.flags), e.size,
                                row.names[0], row.names[1]))
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("DELETE FROM sync_base WHERE pair_id=? AND key=?", deletes)
            # many rows per statement: executemany steps once per row and gives the GIL up at
            # each step, to the copy thread that competes with it during a first copy
            at = 0
            for size in ROWS_PER_INSERT:
                while len(upserts) - at >= size:
                    self.conn.execute(_upsert_sql(size),
                                      list(itertools.chain(*upserts[at:at + size])))
                    at += size
        crashpoint.after("record base")

    def write_folders(self, pair_id: int, rows: dict[tuple[str, str], FolderRow | None]) -> None:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            for (folder, side), row in rows.items():
                if row is None:
                    self.conn.execute(
                        "DELETE FROM sync_folder WHERE pair_id=? AND folder=? AND side=?",
                        (pair_id, folder, side))
                else:
                    stamp = row.stamp
                    self.conn.execute(
                        "INSERT OR REPLACE INTO sync_folder VALUES (?,?,?,?,?,?)",
                        (pair_id, folder, side, stamp and stamp.cur, stamp and stamp.new,
                         int(row.trusted)))
        crashpoint.after("record folders")

    def synced_within(self, id_a: str, id_b: str, seconds: float) -> bool:
        """Whether the pair's last run started less than `seconds` ago (a clock set back
        since reads as not)."""
        row = self.conn.execute(
            "SELECT r.started FROM sync_pair p JOIN sync_run r ON r.pair_id = p.pair_id "
            "WHERE p.id_low=? AND p.id_high=? ORDER BY r.run_id DESC LIMIT 1",
            (min(id_a, id_b), max(id_a, id_b))).fetchone()
        return row is not None and 0 <= time.time() - row[0] < seconds

    def start_run(self, pair_id: int) -> int:
        cur = self.conn.execute(
            "INSERT INTO sync_run(pair_id, started, outcome) VALUES (?, ?, 'running')",
            (pair_id, time.time()))
        return cur.lastrowid or 0

    def end_run(self, run_id: int, outcome: str, summary: dict) -> None:
        self.conn.execute(
            "UPDATE sync_run SET ended=?, outcome=?, summary=? WHERE run_id=?",
            (time.time(), outcome, json.dumps(summary), run_id))

    def runs(self) -> list[dict]:
        """The last run of every pair, for `mailmirror status`."""
        rows = self.conn.execute(
            "SELECT p.pair_id, p.id_low, p.id_high, p.label_low, p.label_high, "
            "r.started, r.ended, r.outcome, r.summary, "
            "(SELECT COUNT(*) FROM sync_base b WHERE b.pair_id = p.pair_id) "
            "FROM sync_pair p LEFT JOIN sync_run r ON r.run_id = "
            "(SELECT MAX(run_id) FROM sync_run WHERE pair_id = p.pair_id) ORDER BY p.pair_id")
        out = []
        for pid, low, high, llow, lhigh, started, ended, outcome, summary, messages in rows:
            out.append({
                "pair": pid, "replicas": [low, high], "labels": [llow, lhigh],
                "last_started": started, "last_ended": ended, "outcome": outcome or "never",
                "summary": json.loads(summary) if summary else {}, "messages": messages,
            })
        return out
