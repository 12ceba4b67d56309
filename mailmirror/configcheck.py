"""`mailmirror config check`: every problem of the shared config file, each with its line.

Validation is not done here: sync profiles go through mailmirror.config.profile_problems and
the [failover] section through failover.config.validate, the same code that loads them for
real, so a key added there is checked here without a second list. This module only finds the
line each problem is about; tomllib reports lines for syntax errors only.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailmirror.config import profile_problems
from mailmirror.errors import ConfigError

KeyPath = tuple[str | int, ...]

_SYNTAX_AT = re.compile(r"\(at line (\d+), column \d+\)")
_FAILOVER_KEY = re.compile(r"^(failover(?:\.[A-Za-z0-9_-]+|\[\d+\])*)")
_UNKNOWN_KEY = re.compile(r"unknown key '([^']*)'")


@dataclass(frozen=True)
class Problem:
    """One problem: the 1-based line it is about, and the message naming key and fix."""

    line: int
    message: str


def check_file(path: Path) -> list[Problem]:
    """Every problem of the config file at `path`; [] when it is clean.

    Raises ConfigError when the file cannot be read at all.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found: write one with "
                          "`mailmirror init --role ROLE` or pass --config FILE") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return check_text(text)


def check_text(text: str) -> list[Problem]:
    """Every problem of a config document, sorted by line."""
    lines = text.splitlines()
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _SYNTAX_AT.search(str(exc))
        line = int(found.group(1)) if found else max(len(lines), 1)
        return [Problem(line, f"not valid TOML: {exc}")]
    where = key_lines(lines)
    problems = [Problem(_line_of(where, path), message)
                for path, message in document_problems(document)]
    return sorted(problems, key=lambda p: p.line)


def document_problems(document: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """(key path, message) for every problem; the path is the key the message is about."""
    from failover.config import validate

    found: list[tuple[KeyPath, str]] = []
    for key in sorted(set(document) - {"profile", "failover"}):
        found.append(((key,), f"{key}: unknown section: the config knows [profile.NAME] "
                              "and [failover]"))
    profiles = document.get("profile")
    if profiles is not None and not isinstance(profiles, dict):
        found.append((("profile",), "profile: must be tables, written [profile.NAME]"))
    elif profiles:
        for name, table in profiles.items():
            for message in profile_problems(name, table):
                found.append((_profile_key(name, table, message), message))
    if "failover" in document:
        for message in validate(document):
            found.append((_failover_key(message), message))
    if not profiles and "failover" not in document:
        found.append(((), "nothing to check: add a [profile.NAME] or a [failover] section "
                          "(`mailmirror init --role ROLE` writes a starter)"))
    return found


def _profile_key(name: str, table: Any, message: str) -> KeyPath:
    unknown = _UNKNOWN_KEY.search(message)
    if unknown:
        return ("profile", name, unknown.group(1))
    words = message.split(": ", 1)[-1].split()
    first = words[0] if words else ""
    if isinstance(table, dict) and first in table:
        return ("profile", name, first)
    return ("profile", name)


def _failover_key(message: str) -> KeyPath:
    matched = _FAILOVER_KEY.match(message)
    if not matched:
        return ("failover",)
    path: list[str | int] = []
    for part in re.findall(r"[A-Za-z0-9_-]+|\[\d+\]", matched.group(1)):
        path.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(path)


def _line_of(where: dict[KeyPath, int], path: KeyPath) -> int:
    """The line of `path`, or of its nearest enclosing table when the key is absent."""
    while path and path not in where:
        path = path[:-1]
    return where.get(path, 1)


def key_lines(lines: list[str]) -> dict[KeyPath, int]:
    """The 1-based line where each key path (tables, array-of-tables items, keys) is defined.

    Sound without a TOML parser of our own: a prefix of a valid document parses exactly when
    it ends between statements, and the paths that appear when a statement is added are the
    ones that statement defines. Quadratic in lines, which is nothing for a config file.
    """
    where: dict[KeyPath, int] = {}
    before: set[KeyPath] = set()
    start = 0
    for end in range(1, len(lines) + 1):
        try:
            parsed = tomllib.loads("\n".join(lines[:end]))
        except tomllib.TOMLDecodeError:
            continue  # this line ends inside a multi-line value
        now = set(_paths(parsed))
        first = next((i for i in range(start, end) if _is_statement(lines[i])), start)
        for path in now - before:
            where[path] = first + 1
        before, start = now, end
    return where


def _is_statement(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _paths(value: Any, prefix: KeyPath = ()) -> list[KeyPath]:
    out: list[KeyPath] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.append((*prefix, key))
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, item in enumerate(value):
            out.append((*prefix, index))
            out += _paths(item, (*prefix, index))
    return out
