"""The TOML configuration shared with failover: sync profiles live under [profile.NAME].

Loading validates everything and reports every problem at once, each naming its key, so a
user fixes the file in one pass. failover reads its own [failover] section.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from mailmirror.errors import ConfigError, UsageError
from mailmirror.maildir.folders import LAYOUTS, MAILDIRPP
from mailmirror.maildir.names import SEPARATORS
from mailmirror.maildir.quarantine import MAX_KEEP_DAYS
from mailmirror.transport.address import parse_address
from mailmirror.transport.options import KEEP_AUTO, MAX_KEEP_SECONDS, parse_keep

MAX_TIMEOUT = 3600  # a profile's timeout, in seconds (nan and inf would break every wait)
PROFILE_KEYS = {"a", "b", "local", "remotes", "users", "layout", "separator", "prefer",
                "remote_command", "ssh_config", "identity", "known_hosts", "timeout",
                "max_delete", "quarantine_days", "keep_connection"}


@dataclass(frozen=True)
class Profile:
    """A named sync job: pairs of (local-or-remote A, candidate Bs tried in order).

    With `users`, every address and the remote command are expanded per user ("{user}").
    """

    name: str
    pairs: tuple[tuple[str, tuple[str, ...], str | None], ...]  # (a, candidates, command)
    layout: str = MAILDIRPP
    separator: str = ":"
    prefer: str = "a"
    timeout: float = 10.0
    ssh_config: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    max_delete: float | None = None  # percent; None: the command line's or the default
    quarantine_days: int | None = None
    keep_connection: float | str | None = None  # seconds or "auto"; None: not set


def read_config(path: Path) -> dict:
    """Parse the file; a missing or malformed file is one ConfigError line naming it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found: create it (see docs/configuration.md) "
                          "or pass --config FILE") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def profile_problems(name: str, table: object) -> list[str]:
    """Every problem of one [profile.NAME] table, each naming the key."""
    where = f"[profile.{name}]"
    if not isinstance(table, dict):
        return [f"{where} must be a table"]
    problems = [f"{where}: unknown key {k!r}" for k in sorted(set(table) - PROFILE_KEYS)]
    if "a" in table or "b" in table:
        for key in ("a", "b"):
            if not _is_text(table.get(key)):
                problems.append(f"{where}: {key} must be a maildir path or address")
        if "local" in table or "remotes" in table:
            problems.append(f"{where}: give either a and b, or local and remotes")
    else:
        if not _is_text(table.get("local")):
            problems.append(f"{where}: local must be a maildir path (or give a and b)")
        remotes = table.get("remotes")
        if not isinstance(remotes, list) or not remotes or not all(map(_is_text, remotes)):
            problems.append(f"{where}: remotes must be a list of addresses, tried in order")
    sides = [table.get(k) for k in ("a", "b", "local")] + list(
        table.get("remotes") if isinstance(table.get("remotes"), list) else [])
    for address in filter(_is_text, sides):
        try:
            parse_address(address.replace("{user}", "user"))
        except UsageError as exc:
            problems.append(f"{where}: {exc}")
    users = table.get("users")
    if users is not None and (not isinstance(users, list) or not users
                              or not all(map(_is_text, users))):
        problems.append(f"{where}: users must be a list of user names")
    elif users is not None and len(users) > 1:
        # one maildir for every user on one side would mix their mail through it
        for address in filter(_is_text, sides):
            if "{user}" not in address:
                problems.append(f"{where}: with users, {address!r} must hold {{user}} (each "
                                "user's own maildir), or every user's mail would meet there")
    for key in ("remote_command", "ssh_config", "identity", "known_hosts"):
        if key in table and not _is_text(table[key]):
            problems.append(f"{where}: {key} must be a string")
    timeout = table.get("timeout", 10)
    if (not isinstance(timeout, int | float) or isinstance(timeout, bool)
            or not 0 < timeout <= MAX_TIMEOUT):
        problems.append(f"{where}: timeout must be a number of seconds, more than 0 and at "
                        f"most {MAX_TIMEOUT}")
    if table.get("layout", MAILDIRPP) not in LAYOUTS:
        problems.append(f"{where}: layout must be one of {', '.join(LAYOUTS)}")
    if table.get("separator", ":") not in SEPARATORS:
        problems.append(f"{where}: separator must be one of {' '.join(SEPARATORS)}")
    if table.get("prefer", "a") not in ("a", "b"):
        problems.append(f"{where}: prefer must be \"a\" or \"b\"")
    max_delete = table.get("max_delete", 50)
    if (not isinstance(max_delete, int | float) or isinstance(max_delete, bool)
            or not 0 <= max_delete <= 100):
        problems.append(f"{where}: max_delete must be a percentage from 0 to 100")
    keep = table.get("keep_connection", KEEP_AUTO)
    if parse_keep(keep) is None or isinstance(keep, str) and keep != KEEP_AUTO:
        problems.append(f"{where}: keep_connection must be \"{KEEP_AUTO}\" or 0 to "
                        f"{MAX_KEEP_SECONDS} seconds")
    days = table.get("quarantine_days", 30)
    if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= MAX_KEEP_DAYS:
        problems.append(f"{where}: quarantine_days must be a whole number of days, 0 to "
                        f"{MAX_KEEP_DAYS}")
    return problems


def load_profile(path: Path, name: str) -> Profile:
    """The named profile, or ConfigError listing every problem found in it."""
    config = read_config(path)
    profiles = config.get("profile", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: profile must be tables ([profile.NAME]), not "
                          f"{type(profiles).__name__}")
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"no profile {name!r} in {path} (profiles: {known}); "
                          "or give two maildir paths")
    table = profiles[name]
    problems = profile_problems(name, table)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    a = table.get("a", table.get("local"))
    candidates = [table["b"]] if "b" in table else list(table["remotes"])
    command = table.get("remote_command")
    pairs = []
    for user in table.get("users") or [None]:
        def expand(text: str, user: str | None = user) -> str:
            return text.replace("{user}", user) if user else text

        pairs.append((expand(a), tuple(expand(c) for c in candidates),
                      expand(command) if command else None))
    return Profile(name, tuple(pairs), table.get("layout", MAILDIRPP),
                   table.get("separator", ":"), table.get("prefer", "a"),
                   float(table.get("timeout", 10)), table.get("ssh_config"),
                   table.get("identity"), table.get("known_hosts"),
                   table.get("max_delete"), table.get("quarantine_days"),
                   parse_keep(table["keep_connection"]) if "keep_connection" in table
                   else None)
