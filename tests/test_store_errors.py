"""An SQLite error on the state store says what to do: 'move it aside' only when the file is
damaged, since moving a good base aside makes the next sync a first one (deletions not yet
synced come back)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mailmirror.store import open_store, store_error


def test_a_read_only_store_is_not_called_damaged(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    open_store(path).close()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("INSERT INTO store_meta VALUES ('x', 'y')")
    except sqlite3.Error as exc:
        line = str(store_error(exc, path))
    assert "cannot be written" in line and "move it aside" not in line, line


def test_a_full_disk_or_a_busy_store_is_not_called_damaged() -> None:
    for name, said in (("SQLITE_FULL", "disk is full"), ("SQLITE_BUSY", "is busy"),
                       ("SQLITE_IOERR_WRITE", "input/output error")):
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorname = name
        line = str(store_error(exc))
        assert said in line and "move it aside" not in line, line


def test_a_damaged_store_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"not a database at all" * 100)
    try:
        sqlite3.connect(path).execute("SELECT * FROM schema")
    except sqlite3.Error as exc:
        line = str(store_error(exc, path))
    assert "is damaged" in line and "move it aside" in line, line


def test_a_state_path_that_is_a_directory_or_under_a_file_says_so(tmp_path: Path) -> None:
    import pytest

    from mailmirror.errors import StoreError

    (tmp_path / "dir").mkdir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="is a directory: --state names the database file"):
        open_store(tmp_path / "dir")
    with pytest.raises(StoreError, match="afile: a file is in the way; use --state PATH"):
        open_store(tmp_path / "afile" / "x.db")
    with pytest.raises(StoreError, match="no state database at .* yet"):
        open_store(tmp_path / "new" / "s.db", create=False)
    assert not (tmp_path / "new").exists()
