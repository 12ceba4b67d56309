"""The TOML configuration shared with failover: sync profiles live under [profile.NAME].

Loading validates everything and reports every problem at once, each naming its key, so a
user fixes the file in one pass. failover reads its own [failover] section.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from mailmirror.errors import ConfigError
from mailmirror.maildir.folders import LAYOUTS, MAILDIRPP
from mailmirror.maildir.names import SEPARATORS

PROFILE_KEYS = {"a", "b", "layout", "separator", "prefer"}


@dataclass(frozen=True)
class Profile:
    name: str
    a: str
    b: str
    layout: str = MAILDIRPP
    separator: str = ":"
    prefer: str = "a"


def read_config(path: Path) -> dict:
    """Parse the file; a missing or malformed file is one ConfigError line naming it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found: create it (see docs/configuration.md) "
                          "or pass --config FILE") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def profile_problems(name: str, table: object) -> list[str]:
    """Every problem of one [profile.NAME] table, each naming the key."""
    where = f"[profile.{name}]"
    if not isinstance(table, dict):
        return [f"{where} must be a table"]
    problems = [f"{where}: unknown key {k!r}" for k in sorted(set(table) - PROFILE_KEYS)]
    for key in ("a", "b"):
        if not isinstance(table.get(key), str) or not table.get(key):
            problems.append(f"{where}: {key} must be a maildir path")
    if table.get("layout", MAILDIRPP) not in LAYOUTS:
        problems.append(f"{where}: layout must be one of {', '.join(LAYOUTS)}")
    if table.get("separator", ":") not in SEPARATORS:
        problems.append(f"{where}: separator must be one of {' '.join(SEPARATORS)}")
    if table.get("prefer", "a") not in ("a", "b"):
        problems.append(f"{where}: prefer must be \"a\" or \"b\"")
    return problems


def load_profile(path: Path, name: str) -> Profile:
    """The named profile, or ConfigError listing every problem found in it."""
    config = read_config(path)
    profiles = config.get("profile", {})
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"no profile {name!r} in {path} (profiles: {known}); "
                          "or give two maildir paths")
    table = profiles[name]
    problems = profile_problems(name, table)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return Profile(name, table["a"], table["b"], table.get("layout", MAILDIRPP),
                   table.get("separator", ":"), table.get("prefer", "a"))
