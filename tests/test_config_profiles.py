"""Profile shapes that once passed `config check`, or crashed `sync` with a traceback: each is
now one ConfigError line naming the problem (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailmirror.config import load_profile, profile_problems
from mailmirror.errors import ConfigError


def test_a_profile_key_that_is_not_a_table_is_one_line(tmp_path: Path) -> None:
    for text in ("profile = 5\n", 'profile = "abc"\n'):
        path = tmp_path / "config.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"profile must be tables \(\[profile.NAME\]\)"):
            load_profile(path, "abc")


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[profile.x]\nlocal = "/m/caf\xe9"\nremotes = ["h:M"]\n')
    with pytest.raises(ConfigError, match="config file .*config.toml"):
        load_profile(path, "x")


def test_with_several_users_each_side_must_name_the_users_own_maildir() -> None:
    """Without {user} on one side, every user's mail met in that one maildir and spread to
    every other user's."""
    table = {"users": ["alice", "bob"], "local": "/home/{user}/Maildir",
             "remotes": ["backup:/srv/shared"]}
    assert any("'backup:/srv/shared' must hold {user}" in p
               for p in profile_problems("servers", table))
    assert profile_problems("servers", {**table, "remotes": ["backup:/home/{user}/M"]}) == []
    assert profile_problems("one", {**table, "users": ["alice"]}) == []  # one user: no mixing


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0, 7200])
def test_a_timeout_must_be_a_finite_number_of_seconds(timeout: float) -> None:
    table = {"local": "/m", "remotes": ["h:M"], "timeout": timeout}
    assert any("timeout must be a number of seconds" in p
               for p in profile_problems("x", table)), timeout


@pytest.mark.parametrize(("value", "read"), [("auto", "auto"), (0, 0.0), (600, 600.0),
                                             (86400, 86400.0), (-1, None), (86401, None),
                                             ("often", None), ("600", None), (True, None),
                                             (float("nan"), None)])
def test_keep_connection_is_auto_or_seconds(tmp_path: Path, value: object,
                                            read: object) -> None:
    table = {"a": "/m/a", "b": "/m/b", "keep_connection": value}
    problems = profile_problems("p", table)
    assert bool(problems) is (read is None), problems
    if read is not None:
        toml = f"[profile.p]\na = \"/m/a\"\nb = \"/m/b\"\nkeep_connection = {value!r}\n"
        path = tmp_path / "c.toml"
        path.write_text(toml.replace("'", '"'))
        assert load_profile(path, "p").keep_connection == read


def test_addresses_and_users_are_checked_as_a_sync_would_read_them() -> None:
    """`config check` says what `sync` would stop on."""
    problems = profile_problems("p", {"local": "/m/{user}", "users": [],
                                      "remotes": ["ssh://host:99999/m", "alice@:M", "h:M"]})
    assert problems == ["[profile.p]: 'ssh://host:99999/m' has an invalid port",
                        "[profile.p]: 'alice@:M' has no host: write [user@]host:path, or "
                        "./alice@:M for a local path",
                        "[profile.p]: users must be a list of user names"]
