"""Bad input to the installed `mailmirror` command: one clear line on stderr, no traceback,
the documented exit code (2 usage/config, 3 fatal, 1 items skipped), and nothing lost."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import missing
from tests.e2e.conftest import Cli, User
from tests.e2e.conftest import tree_listing as _tree_listing

ID_FILE = "mailmirror-id"


def tree_listing(root: Path) -> dict:
    """The tree minus the replica id file, which opening a replica may create (harmless)."""
    return {k: v for k, v in _tree_listing(root).items() if k != ID_FILE}


def maildir(root: Path, user: User, messages: dict[str, bytes] | None = None) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for relname, data in (messages or {}).items():
        (root / relname).write_bytes(data)
    user.own(root)
    return root


MSG = b"From: a@e2e.test\nSubject: keep me\nMessage-ID: <keep@e2e.test>\n\nbody\n"


def sync(cli: Cli, a: Path, b: Path, *extra: str) -> object:
    return cli.run("sync", str(a), str(b), "--state", str(cli.scratch / "state.db"), *extra,
                   fork=False)


def test_path_is_a_file(cli: Cli, scratch: Path, user: User) -> None:
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    b = scratch / "B"
    b.write_bytes(b"not a maildir\n")
    user.own(b)
    before = tree_listing(a)

    line = sync(cli, a, b).assert_clean_error(3)

    assert str(b) in line
    assert b.read_bytes() == b"not a maildir\n"
    assert tree_listing(a) == before


def test_directory_with_cur_but_no_new(cli: Cli, scratch: Path, user: User) -> None:
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    b = scratch / "B"
    (b / "cur").mkdir(parents=True)
    (b / "cur" / "2.M2P2.h:2,").write_bytes(MSG.replace(b"keep@", b"keep2@"))
    user.own(b)
    before = (tree_listing(a), tree_listing(b))

    line = sync(cli, a, b).assert_clean_error(3)

    assert "new" in line and str(b) in line, line
    assert (tree_listing(a), tree_listing(b)) == before, "a half maildir was changed"


def test_parent_directory_missing(cli: Cli, scratch: Path, user: User) -> None:
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    b = scratch / "nowhere" / "B"
    before = tree_listing(a)

    line = sync(cli, a, b).assert_clean_error(3)

    assert str(b.parent) in line
    assert not b.parent.exists()
    assert tree_listing(a) == before


def test_corrupt_state_database_is_refused_and_kept(cli: Cli, scratch: Path, user: User) -> None:
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    b = maildir(scratch / "B", user)
    state = scratch / "state.db"
    garbage = b"this is not an SQLite database\n" + bytes(range(256)) * 16
    state.write_bytes(garbage)
    user.own(state)
    before = (tree_listing(a), tree_listing(b))

    line = cli.run("sync", str(a), str(b), "--state", str(state), fork=False) \
        .assert_clean_error(3)

    assert str(state) in line, line
    assert state.read_bytes() == garbage, "the corrupt database was changed"
    assert not any(Path(str(state) + s).exists() for s in ("-wal", "-journal")), \
        "side files of the corrupt database were created"
    leftovers = sorted(p.name for p in scratch.iterdir() if p.name.startswith("state.db"))
    assert leftovers == ["state.db"], leftovers
    assert (tree_listing(a), tree_listing(b)) == before
    assert list((b / "cur").iterdir()) == [] and list((b / "new").iterdir()) == []


def test_state_database_corrupt_after_good_runs(cli: Cli, scratch: Path, user: User) -> None:
    """A database that was fine and got damaged (truncated) must not become 'first sync'."""
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    b = maildir(scratch / "B", user)
    state = scratch / "state.db"
    assert sync(cli, a, b).rc == 0
    data = state.read_bytes()
    damaged = data[:100] + b"\xff" * 400 + data[500:]
    state.write_bytes(damaged)
    before = (tree_listing(a), tree_listing(b))

    sync(cli, a, b).assert_clean_error(3)

    assert state.read_bytes() == damaged
    assert (tree_listing(a), tree_listing(b)) == before


def test_unwritable_target_skips_and_loses_nothing(cli: Cli, scratch: Path, user: User) -> None:
    # mailmirror runs as the unprivileged user (setpriv when we are root), so modes apply
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    b = maildir(scratch / "B", user)
    os.chmod(b / "cur", 0o500)
    try:
        run = sync(cli, a, b)
        line = run.assert_clean_error(1)
        assert "1.M1P1.h" in line or "cur" in line, line
        assert (a / "cur" / "1.M1P1.h:2,S").read_bytes() == MSG
        assert list((b / "cur").iterdir()) == []
        assert list((b / "tmp").iterdir()) == [], "a temp file was left behind"
    finally:
        os.chmod(b / "cur", 0o700)
    # once writable, the next run delivers it
    again = sync(cli, a, b)
    assert again.rc == 0, again.stderr
    assert (b / "cur" / "1.M1P1.h:2,S").read_bytes() == MSG
    assert (a / "cur" / "1.M1P1.h:2,S").read_bytes() == MSG


def test_unwritable_root_is_fatal(cli: Cli, scratch: Path, user: User) -> None:
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    b = maildir(scratch / "B", user)
    os.chmod(b, 0o500)
    try:
        line = sync(cli, a, b).assert_clean_error(3)
        assert str(b) in line
    finally:
        os.chmod(b, 0o700)
    assert (a / "cur" / "1.M1P1.h:2,S").read_bytes() == MSG


def test_profile_without_config_is_a_usage_error(cli: Cli, scratch: Path) -> None:
    run = cli.run("sync", "laptop", "--state", str(scratch / "state.db"), fork=False)
    line = run.assert_clean_error(2)
    assert "laptop" in line or "config" in line, line


def test_same_maildir_twice_is_a_usage_error(cli: Cli, scratch: Path, user: User) -> None:
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    before = tree_listing(a)
    sync(cli, a, a).assert_clean_error(2)
    assert tree_listing(a) == before


def test_keep_connection_out_of_range_is_a_usage_error(cli: Cli, scratch: Path,
                                                        user: User) -> None:
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    b = maildir(scratch / "B", user)
    before = tree_listing(a), tree_listing(b)
    for value in ("-1", "often", "nan"):
        line = sync(cli, a, b, "--keep-connection", value).assert_clean_error(2)
        assert f"--keep-connection must be auto or 0 to 86400 seconds, not {value}" in line, line
    assert (tree_listing(a), tree_listing(b)) == before


def test_watch_needs_an_interval_and_a_poll_of_more_than_zero(cli: Cli, scratch: Path,
                                                               user: User) -> None:
    """0 (or less) once started a watch that synced without pause, a core busy for ever;
    inf (or 1e10) one that crashed after its first sync, when it set its next deadline."""
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    for option, value in (("--interval", "0"), ("--poll", "-1"), ("--interval", "nan"),
                          ("--interval", "inf"), ("--poll", "1e10")):
        run = cli.run("watch", str(a), str(scratch / "B"), "--state", str(scratch / "s.db"),
                      option, value)
        line = run.assert_clean_error(2)
        assert option in line and "more than 0 seconds" in line, line
    assert not (scratch / "B").exists()


def test_a_hostile_file_name_reaches_the_terminal_escaped(cli: Cli, scratch: Path,
                                                         user: User) -> None:
    """A message name holding a terminal escape or a newline is skipped; its line says so
    in printable text, one line each, instead of turning the terminal red or forging a line."""
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG,
                                      "cur/esc\x1b[31mred:2,S": MSG, "cur/bad\nname:2,S": MSG})
    run = sync(cli, a, scratch / "B")
    assert run.rc == 1, (run.rc, run.stderr)
    assert "\x1b" not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("mailmirror: skipped: ") for line in lines)
    assert any("esc\\x1b[31mred" in line for line in lines), lines


def test_ssh_files_that_cannot_be_used_are_named(cli: Cli, scratch: Path, user: User) -> None:
    """Not a traceback (a public key given as --identity), nor the host's name where the
    file's belongs (a missing one). Nothing is reached: port 1 on loopback."""
    import subprocess

    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    key = scratch / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    os.chmod(key.with_suffix(".pub"), 0o644)
    for option, path, says in (
            ("--identity", f"{key}.pub", "cannot use the key (Invalid private key): give "
             "--identity (or IdentityFile) the private key file, not the .pub"),
            ("--identity", "/nonexistent/id", "cannot read /nonexistent/id (No such file or "
             "directory): check --identity, --ssh-config and --known-hosts"),
            ("--ssh-config", "/nonexistent/cfg", "cannot read /nonexistent/cfg")):
        run = cli.run("sync", str(a), "ssh://127.0.0.1:1/x", "--state",
                      str(scratch / "s.db"), option, path)
        line = run.assert_clean_error(3)
        assert line.startswith("mailmirror: 127.0.0.1: ") and says in line, line


def test_one_users_broken_maildir_leaves_the_others_synced(cli: Cli, scratch: Path,
                                                           user: User) -> None:
    """A profile over every user of a server: bob's maildir is a file. alice and carol are
    synced all the same; bob's pair is one line and a failed run in the JSON; exit 3."""
    for name in ("alice", "carol"):
        maildir(scratch / "u" / name, user, {"cur/1.M1P1.h:2,S": MSG})
    (scratch / "u" / "bob").write_bytes(b"not a maildir\n")
    (scratch / "v").mkdir()
    cli.user.own(scratch / "u", scratch / "v")
    config = scratch / "c.toml"
    config.write_text(f'[profile.all]\na = "{scratch}/u/{{user}}"\nb = "{scratch}/v/{{user}}"\n'
                      'users = ["alice", "bob", "carol"]\n')
    run = cli.run("sync", "all", "--config", str(config), "--state", str(scratch / "s.db"),
                  "--json")
    assert run.rc == 3 and "Traceback" not in run.stderr, (run.rc, run.stderr)
    assert run.stderr.count("\n") == 1 and "bob" in run.stderr, run.stderr
    outcomes = [r["outcome"] for r in run.json["runs"]]
    assert outcomes == ["ok", "failed", "ok"], run.json
    assert sorted(os.listdir(scratch / "v")) == ["alice", "carol"]


def test_debug_shows_the_traceback_and_keeps_the_exit_code(cli: Cli, scratch: Path,
                                                          user: User) -> None:
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    for extra, code in ((["--lock-timeout", "nan"], 2), (["--lock-timeout", "-1"], 2),
                        (["--debug"], 3)):
        target = scratch / "nowhere" / "B" if code == 3 else scratch / "B"
        run = cli.run("sync", str(a), str(target), "--state", str(scratch / "s.db"), *extra)
        assert run.rc == code, (extra, run.rc, run.stderr)
        assert ("Traceback" in run.stderr) is ("--debug" in extra), run.stderr
    assert not (scratch / "B").exists()


def test_read_only_commands_create_no_state(cli: Cli, scratch: Path, user: User) -> None:
    """A dry run "changes nothing": not even a state directory, database or lock file; and
    status on a mistyped --state says there is none instead of making one."""
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    b = maildir(scratch / "B", user)
    state = scratch / "new" / "s.db"
    dry = cli.run("sync", str(a), str(b), "--state", str(state), "--dry-run", "--json")
    assert dry.rc == 0 and dry.json["counts"] == {"copy a->b": 1}, (dry.rc, dry.stderr)
    line = cli.run("status", "--state", str(state)).assert_clean_error(3)
    assert f"no state database at {state} yet" in line, line
    assert not (scratch / "new").exists()


def test_init_writes_through_a_link_and_names_what_it_cannot_write(cli: Cli, scratch: Path,
                                                                   user: User) -> None:
    real, link = scratch / "real.toml", scratch / "link.toml"
    real.write_text("# mine\n")
    link.symlink_to(real)
    (scratch / "adir").mkdir()
    cli.user.own(scratch)
    assert cli.run("init", "--role", "desktop", "--output", str(link), "--force").rc == 0
    assert link.is_symlink() and "[profile." in real.read_text()
    line = cli.run("init", "--role", "desktop", "--output", str(scratch / "adir"),
                   "--force").assert_clean_error(2)
    assert "adir is a directory" in line, line
    assert sorted(p.name for p in scratch.iterdir() if p.name.startswith(".")) == []


def test_unreadable_files_are_one_line_naming_them(cli: Cli, scratch: Path, user: User) -> None:
    """Not click's usage error for --config, nor a bare 'Permission denied'."""
    if os.geteuid() != 0:
        missing("root (files only root made are closed to the test user)")
    config = scratch / "c.toml"
    config.write_text('[profile.p]\na = "x"\nb = "y"\n')
    config.chmod(0o600)
    line = cli.run("config", "check", "--config", str(config)).assert_clean_error(2)
    assert line == f"mailmirror: cannot read config file {config}: Permission denied", line
    closed = scratch / "closed"
    closed.mkdir(mode=0o700)
    a = maildir(scratch / "A", user, {"cur/1.M1P1.h:2,S": MSG})
    line = sync(cli, a, closed / "B").assert_clean_error(3)
    assert f"{closed}/B: permission denied: run as the user that owns it" in line, line
