"""The safety stops, the quarantine commands and the state database's failure modes through
the installed `mailmirror` command (docs/spec.md S6, S9-S12, Q1-Q3, D1-D3): one line on
stderr, exit 3 for a stop, nothing deleted, and the documented way forward works."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from tests.e2e.conftest import Cli, Run, User, read_messages
from tests.e2e.test_cli_errors import maildir, tree_listing

ID_FILE = "mailmirror-id"


def msg(n: int, tag: str = "a") -> tuple[str, bytes]:
    key = f"17000{n:05d}.M{n}P1.{tag}"
    return (f"cur/{key}:2,S",
            f"From: Alice <a@e2e.test>\nSubject: note {tag}{n}\nMessage-ID: <{tag}{n}@e2e.test>"
            f"\n\nbody {n}\n".encode())


def tree(root: Path, user: User, count: int, tag: str = "a") -> Path:
    return maildir(root, user, dict(msg(n, tag) for n in range(count)))


def sync(cli: Cli, a: Path, b: Path, *extra: str) -> Run:
    return cli.run("sync", str(a), str(b), "--state", str(cli.scratch / "state.db"), "--json",
                   *extra)


def test_unmounted_disk_stops_and_creates_no_id(cli: Cli, scratch: Path, user: User) -> None:
    """S11 through the command: the mount point is an empty directory without the id."""
    a, b = tree(scratch / "A", user, 12), scratch / "B"
    assert sync(cli, a, b).rc == 0
    shutil.rmtree(b)
    b.mkdir()
    user.own(b)
    before = tree_listing(a)

    line = sync(cli, a, b).assert_clean_error(3)

    assert str(b) in line and "mailmirror-id" in line and "--accept-new-replica" in line, line
    assert not (b / ID_FILE).exists()
    assert tree_listing(a) == before
    again = sync(cli, a, b, "--accept-new-replica")
    assert again.rc == 0 and again.json["counts"] == {"copy a->b": 12}, again.stderr


def test_mass_delete_stops_until_allowed(cli: Cli, scratch: Path, user: User) -> None:
    """S10 through the command, with --max-delete and the profile's max_delete."""
    a, b = tree(scratch / "A", user, 30), scratch / "B"
    assert sync(cli, a, b).rc == 0
    for n in range(25):
        (b / msg(n)[0]).unlink()
    (b / msg(0, "keep")[0]).write_bytes(msg(0, "keep")[1])  # b's INBOX is not emptied

    line = sync(cli, a, b).assert_clean_error(3)

    assert "would delete 25 of the 30" in line and "--allow-mass-delete" in line, line
    assert len(list((a / "cur").iterdir())) == 30
    config = scratch / "config.toml"
    config.write_text(f'[profile.p]\na = "{a}"\nb = "{b}"\nmax_delete = 90\n')
    user.own(config)
    assert cli.run("config", "check", "--config", str(config)).rc == 0
    assert sync(cli, a, b, "--max-delete", "80").rc == 3
    run = cli.run("sync", "p", "--config", str(config), "--state",
                  str(scratch / "state.db"), "--json")
    assert run.rc == 0, run.stderr
    assert run.json["counts"] == {"delete a": 25, "copy b->a": 1}


def test_quarantine_days_past_a_century_is_a_usage_error(cli: Cli, scratch: Path,
                                                         user: User) -> None:
    """Q2's retention has bounds: a negative one would empty the quarantine, a huge one
    overflowed the day arithmetic (a traceback); each is one line, exit 2, nothing synced."""
    a, b = tree(scratch / "A", user, 3), scratch / "B"
    for days in ("-1", "100000"):
        line = sync(cli, a, b, "--quarantine-days", days).assert_clean_error(2)
        assert "--quarantine-days" in line and "36500" in line, line
    assert not b.exists()


def test_quarantine_list_and_restore(cli: Cli, scratch: Path, user: User) -> None:
    """Q1-Q3 through the commands: list shows what a sync deleted; restore brings it back and
    the next sync copies it to the other side instead of deleting it again."""
    a, b = tree(scratch / "A", user, 3), scratch / "B"
    assert sync(cli, a, b).rc == 0
    (a / msg(1)[0]).unlink()
    assert sync(cli, a, b).json["counts"] == {"delete b": 1}

    listed = cli.run("quarantine", "list", str(b), "--json")
    assert listed.rc == 0, listed.stderr
    (item,) = json.loads(listed.stdout)["messages"]
    assert (item["key"], item["folder"], item["subject"]) == ("1700000001.M1P1.a", "INBOX",
                                                              "note a1")
    text = cli.run("quarantine", "list", str(b))
    assert "1700000001.M1P1.a" in text.stdout and "note a1" in text.stdout
    assert cli.run("quarantine", "restore", str(b), "nope").assert_clean_error(2)
    for wrong, says in ((["--separator", "x"], "--separator must be one of"),
                        (["--layout", "nonsense"], "--layout must be one of")):
        for command in (["list", str(b)], ["restore", str(b), item["key"]]):
            line = cli.run("quarantine", *command, *wrong).assert_clean_error(2)
            assert says in line, line
    line = cli.run("quarantine", "list", str(scratch / "typo")).assert_clean_error(2)
    assert "typo is not a maildir here" in line, line

    restored = cli.run("quarantine", "restore", str(b), item["key"])

    assert restored.rc == 0 and restored.stdout.startswith("restored INBOX/cur/"), restored
    assert json.loads(cli.run("quarantine", "list", str(b), "--json").stdout)["messages"] == []
    assert sync(cli, a, b).json["counts"] == {"copy b->a": 1}
    ids = sorted(m.message_id for m in read_messages(a))
    assert ids == sorted(m.message_id for m in read_messages(b)) == [
        "<a0@e2e.test>", "<a1@e2e.test>", "<a2@e2e.test>"]


def test_lost_state_database_is_a_safe_first_sync(cli: Cli, scratch: Path, user: User) -> None:
    """D1: union, nothing deleted, nothing already identical copied again."""
    a, b = tree(scratch / "A", user, 20), scratch / "B"
    assert sync(cli, a, b).rc == 0
    (a / msg(3)[0]).unlink()  # deleted on A after the last sync...
    (scratch / "state.db").unlink()  # ...and the memory of that sync is lost
    for side in ("-wal", "-shm"):
        Path(str(scratch / "state.db") + side).unlink(missing_ok=True)
    (b / msg(0, "new")[0]).write_bytes(msg(0, "new")[1])

    run = sync(cli, a, b)

    assert run.rc == 0, run.stderr
    assert run.json["counts"] == {"copy b->a": 2}, run.json  # the deleted one comes back
    assert run.json["bytes"] == len(msg(3)[1]) + len(msg(0, "new")[1])
    assert any("first sync" in n for n in run.json["notices"])
    assert len(read_messages(a)) == len(read_messages(b)) == 21


def test_state_database_from_a_newer_version_is_refused(cli: Cli, scratch: Path,
                                                        user: User) -> None:
    """D3: a schema newer than this version understands: refused, never migrated down."""
    a, b = tree(scratch / "A", user, 2), scratch / "B"
    assert sync(cli, a, b).rc == 0
    state = scratch / "state.db"
    with sqlite3.connect(state) as conn:
        (checked,) = conn.execute("SELECT value FROM store_meta WHERE name = 'checked_at'"
                                  ).fetchone()
        assert float(checked) > 1.7e9  # an ordinary run records its check
        conn.execute("UPDATE schema SET version = 99 WHERE component = 'sync'")
        # a day since the last check: this run checks again, and must not record it
        conn.execute("UPDATE store_meta SET value = '0' WHERE name = 'checked_at'")
    conn.close()
    (a / msg(0)[0]).unlink()
    before = (tree_listing(a), tree_listing(b))

    line = sync(cli, a, b).assert_clean_error(3)

    assert str(state) in line and "newer" in line and "upgrade mailmirror" in line, line
    assert (tree_listing(a), tree_listing(b)) == before
    with sqlite3.connect(state) as conn:
        assert conn.execute("SELECT version FROM schema WHERE component='sync'").fetchone() \
            == (99,)
        assert conn.execute("SELECT value FROM store_meta WHERE name = 'checked_at'"
                            ).fetchone() == ("0",), "a too-new database was written to"
    conn.close()


def test_a_tilde_in_state_reaches_one_store_and_one_lock(cli: Cli, scratch: Path,
                                                         user: User) -> None:
    """systemd units and quoted crontab lines pass '~' unexpanded: the store found it, but
    the pair lock went to ./~/ of each working directory, so two runs of one pair could
    overlap."""
    a, b = tree(scratch / "A", user, 2), scratch / "B"
    run = cli.run("sync", str(a), str(b), "--state", "~/st/s.db", "--json")
    assert run.rc == 0, run.stderr
    home = scratch / "home"
    assert (home / "st" / "s.db").exists() and list((home / "st" / "locks").iterdir())
    assert not Path("~").exists() and not (scratch / "~").exists()
