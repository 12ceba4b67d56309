"""The `[failover]` section of the shared TOML config: validation and the typed Config value.

validate() lists every problem at once (each names its key) and is public so that
`mailmirror config check` can call it; load() turns problems into one ConfigError line.
Reads the config file and nothing else; never touches zones or the network.
"""

from __future__ import annotations

import ipaddress
import string
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from math import isfinite
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from failover.errors import ConfigError

RELOAD_FIELDS = {"zone", "file"}
CHECK_TYPES = ("http", "tcp", "smtp", "imap")
_TOP_KEYS = {
    "main_ip",
    "backup_ip",
    "main_ip6",
    "backup_ip6",
    "templates",
    "zones_dir",
    "reload",
    "nsd_config",
    "notify",
    "verify",
    "fail_after",
    "recover_after",
    "min_backup_seconds",
    "combine",
    "verify_timeout",
    "notify_timeout",
    "check",
}
_CHECK_KEYS = {
    "http": {"type", "url", "timeout", "expect", "verify_tls"},
    "tcp": {"type", "host", "port", "timeout"},
    "smtp": {"type", "host", "port", "timeout", "tls"},
    "imap": {"type", "host", "port", "timeout", "tls"},
}
_DEFAULT_PORTS = {
    ("smtp", False): 25,
    ("smtp", True): 465,
    ("imap", False): 143,
    ("imap", True): 993,
}


@dataclass(frozen=True)
class Endpoint:
    """A DNS server address: an IP literal and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Check:
    """One health check of the main server; fields unused by a type keep their defaults."""

    type: str
    timeout: float = 10.0
    url: str = ""
    expect: str | None = None
    verify_tls: bool = True
    host: str = ""
    port: int = 0
    tls: bool = False

    @property
    def label(self) -> str:
        return self.url if self.type == "http" else f"{self.type} {self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    main_ip: str
    backup_ip: str
    main_ip6: str | None
    backup_ip6: str | None
    templates: Path
    zones_dir: Path
    reload: tuple[str, ...]
    notify: tuple[Endpoint, ...]
    verify: tuple[Endpoint, ...]
    fail_after: int
    recover_after: int
    min_backup_seconds: float
    combine: str
    verify_timeout: float
    notify_timeout: float
    checks: tuple[Check, ...]

    def ip_for(self, server: str) -> tuple[str, str | None]:
        """The (IPv4, IPv6) pair that @IP@ and @IP6@ become while DNS points at `server`."""
        if server == "main":
            return self.main_ip, self.main_ip6
        return self.backup_ip, self.backup_ip6


def load(path: Path) -> Config:
    """Read and validate the config file; every problem is reported in one ConfigError."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found: create it with a [failover] section "
            "(see docs/failover.md) or pass --config FILE"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    problems = validate(document)
    if problems:
        raise ConfigError(f"config file {path}: " + "; ".join(problems))
    return _build(document["failover"])


def validate(document: dict[str, Any]) -> list[str]:
    """Every problem in the `[failover]` section of a parsed TOML document, each naming its key.

    An empty list means load() will accept the document.
    """
    section = document.get("failover")
    if section is None:
        return ["failover: section missing: add a [failover] table"]
    if not isinstance(section, dict):
        return ["failover: must be a table"]
    problems = [f"failover.{key}: unknown key" for key in sorted(set(section) - _TOP_KEYS)]
    for key in ("main_ip", "backup_ip"):
        _need(section, key, problems, _ip(ipaddress.IPv4Address, "an IPv4 address"))
    for key in ("main_ip6", "backup_ip6"):
        if key in section:
            _need(section, key, problems, _ip(ipaddress.IPv6Address, "an IPv6 address"))
    if ("main_ip6" in section) != ("backup_ip6" in section):
        problems.append("failover.main_ip6/backup_ip6: set both or neither")
    for key in ("templates", "zones_dir"):
        _need(section, key, problems, _text)
    if _is_text(section.get("templates")) and _is_text(section.get("zones_dir")):
        if _path(section["templates"]) == _path(section["zones_dir"]):
            problems.append("failover.zones_dir: must differ from failover.templates")
    _optional(section, "reload", problems, _reload)
    _optional(section, "nsd_config", problems, _text)
    for key in ("notify", "verify"):
        _optional(section, key, problems, _endpoints)
    for key in ("fail_after", "recover_after"):
        _optional(section, key, problems, _count)
    for key in ("min_backup_seconds",):
        _optional(section, key, problems, _number(0.0, "a number of seconds >= 0"))
    for key in ("verify_timeout", "notify_timeout"):
        _optional(section, key, problems, _number(None, "a number of seconds > 0"))
    _optional(
        section,
        "combine",
        problems,
        lambda v: None if v in ("all", "any") else 'must be "all" or "any"',
    )
    problems += _check_problems(section.get("check"))
    return problems


def _check_problems(checks: Any) -> list[str]:
    if checks is None:
        return ["failover.check: missing: add at least one [[failover.check]] table"]
    if not isinstance(checks, list) or not checks:
        return ["failover.check: must be one or more [[failover.check]] tables"]
    problems: list[str] = []
    for index, check in enumerate(checks):
        where = f"failover.check[{index}]"
        if not isinstance(check, dict):
            problems.append(f"{where}: must be a table")
            continue
        kind = check.get("type")
        if kind not in CHECK_TYPES:
            problems.append(f"{where}.type: must be one of {', '.join(CHECK_TYPES)}")
            continue
        problems += [
            f"{where}.{k}: unknown key for type {kind}"
            for k in sorted(set(check) - _CHECK_KEYS[kind])
        ]
        _optional(check, "timeout", problems, _number(None, "a number of seconds > 0"), where)
        if kind == "http":
            _need(check, "url", problems, _url, where)
            _optional(check, "expect", problems, _text, where)
            _optional(check, "verify_tls", problems, _flag, where)
        else:
            _need(check, "host", problems, _text, where)
            _optional(check, "port", problems, _port, where)
            _optional(check, "tls", problems, _flag, where)
            if kind == "tcp" and "port" not in check:
                problems.append(f"{where}.port: missing")
    return problems


Rule = Callable[[Any], str | None]


def _need(table: dict, key: str, problems: list[str], rule: Rule, where: str = "failover") -> None:
    if key not in table:
        problems.append(f"{where}.{key}: missing")
    else:
        _optional(table, key, problems, rule, where)


def _optional(
    table: dict, key: str, problems: list[str], rule: Rule, where: str = "failover"
) -> None:
    if key in table:
        problem = rule(table[key])
        if problem:
            problems.append(f"{where}.{key}: {problem}")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _text(value: Any) -> str | None:
    return None if _is_text(value) else "must be a non-empty string"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _count(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return None if ok else "must be a whole number >= 1"


def _port(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
    return None if ok else "must be a port number 1-65535"


def _number(minimum: float | None, wanted: str) -> Rule:
    def rule(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not isfinite(value):
            return f"must be {wanted}"
        bad = value < minimum if minimum is not None else value <= 0
        return f"must be {wanted}" if bad else None

    return rule


def _ip(kind: type, wanted: str) -> Rule:
    def rule(value: Any) -> str | None:
        # a string, as a zone file spells it: ipaddress takes integers too, and a scoped
        # address (fe80::1%eth0) means nothing in DNS
        try:
            if not isinstance(value, str) or "%" in value:
                raise ValueError
            kind(value)
        except ValueError:
            return f"must be {wanted}, not {value!r}"
        return None

    return rule


def _url(value: Any) -> str | None:
    wanted = "must be an http:// or https:// URL"
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        return wanted
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        return f"{wanted}: {exc}"
    return None if parts.hostname else f"{wanted} with a host name"


def _reload(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return 'must be a list of strings (argv), e.g. ["nsd-control", "reload", "{zone}"]'
    if value and not value[0].strip():  # else it fails only at the first rewrite, as a path ''
        return ('its first item, the program to run, is empty: name one, e.g. "nsd-control", '
                "or give [] for no reload command")
    for arg in value:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(arg) if f is not None}
        except ValueError:
            return f"unbalanced braces in {arg!r}"
        if fields - RELOAD_FIELDS:
            return f"unknown placeholder in {arg!r}: use {{zone}} or {{file}}"
    return None


def _endpoints(value: Any) -> str | None:
    if not isinstance(value, list):
        return 'must be a list of "ip:port" strings'
    for item in value:
        try:
            parse_endpoint(item)
        except ValueError as exc:
            return str(exc)
    return None


def parse_endpoint(text: Any) -> Endpoint:
    """Parse "ip", "ip:port" or "[ipv6]:port" (port 53 when absent); raises ValueError."""
    if not isinstance(text, str):
        raise ValueError(f'{text!r} is not an "ip:port" string')
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f'{text!r} is not "ip:port" with an IP address') from None
    if not 0 < number < 65536:
        raise ValueError(f"{text!r} has a port outside 1-65535")
    return Endpoint(host, number)


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _build(section: dict[str, Any]) -> Config:
    if "reload" in section:
        reload = tuple(section["reload"])
    elif "nsd_config" in section:
        reload = ("nsd-control", "-c", str(_path(section["nsd_config"])), "reload", "{zone}")
    else:
        reload = ("nsd-control", "reload", "{zone}")
    return Config(
        main_ip=section["main_ip"],
        backup_ip=section["backup_ip"],
        main_ip6=section.get("main_ip6"),
        backup_ip6=section.get("backup_ip6"),
        templates=_path(section["templates"]),
        zones_dir=_path(section["zones_dir"]),
        reload=reload,
        notify=tuple(parse_endpoint(e) for e in section.get("notify", [])),
        verify=tuple(parse_endpoint(e) for e in section.get("verify", [])),
        fail_after=section.get("fail_after", 2),
        recover_after=section.get("recover_after", 1),
        min_backup_seconds=float(section.get("min_backup_seconds", 0)),
        combine=section.get("combine", "all"),
        verify_timeout=float(section.get("verify_timeout", 10)),
        notify_timeout=float(section.get("notify_timeout", 2)),
        checks=tuple(_build_check(c) for c in section["check"]),
    )


def _build_check(table: dict[str, Any]) -> Check:
    kind = table["type"]
    tls = table.get("tls", False)
    return Check(
        type=kind,
        timeout=float(table.get("timeout", 10)),
        url=table.get("url", ""),
        expect=table.get("expect"),
        verify_tls=table.get("verify_tls", True),
        host=table.get("host", ""),
        port=table.get("port", _DEFAULT_PORTS.get((kind, tls), 0)),
        tls=tls,
    )
