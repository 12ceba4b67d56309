"""Rewrite the live zone files from their templates: decide, render, validate, install.

Owns the zones directory: one output per template, same file name, written atomically
(temp file in the same directory, fsync, rename) with the previous version kept as NAME.prev.
A zone that would not change is never touched. Does not reload NSD or talk to the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from failover import zonecheck
from failover.errors import DirectoryError
from failover.serial import date_floor, next_serial, serial_max
from failover.state import ZoneRow
from failover.template import Values, render, zone_name


@dataclass(frozen=True)
class Template:
    path: Path
    zone: str
    text: str
    sha: str


@dataclass(frozen=True)
class Outcome:
    """What happened to one zone. status: unchanged | adopted | written | failed.

    adopted: the state store had no row but the live file already matched (state was lost);
    the row is recorded and the file left alone.
    """

    zone: str
    file: str
    status: str
    serial: int | None
    previous: int | None
    reason: str
    row: ZoneRow | None = None


def load_templates(directory: Path) -> list[Template]:
    """Every regular, non-hidden file in `directory`, as a template.

    Raises DirectoryError when the directory is missing, holds no template, or two templates
    serve the same zone (their state would be mixed up).
    """
    if not directory.is_dir():
        raise DirectoryError(
            f"templates directory {directory} does not exist: create it or fix "
            "[failover] templates in the config"
        )
    templates = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DirectoryError(f"cannot read template {path}: {exc}") from None
        sha = hashlib.sha256(raw).hexdigest()
        templates.append(Template(path, zone_name(path.name, text), text, sha))
    seen: dict[str, Path] = {}
    for template in templates:
        other = seen.setdefault(template.zone, template.path)
        if other != template.path:
            raise DirectoryError(
                f"templates {other} and {template.path} both serve zone {template.zone}: remove one"
            )
    if not templates:
        raise DirectoryError(
            f"templates directory {directory} holds no zone template: put one zone file "
            "with @serial number@ and @IP@ markers there"
        )
    return templates


def check_zones_dir(directory: Path) -> None:
    """Raise DirectoryError unless `directory` exists and is writable (checked before any write)."""
    if not directory.is_dir():
        raise DirectoryError(
            f"zones_dir {directory} does not exist: create it (it is NSD's zonesdir) or fix "
            "[failover] zones_dir in the config"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DirectoryError(f"zones_dir {directory} is not writable: run as its owner")


def change_reason(
    row: ZoneRow | None, values: Values, sha: str, live_exists: bool, force: bool
) -> str | None:
    """Why a zone must be rewritten, or None when minimal mode leaves it alone."""
    if force:
        return "forced"
    if not live_exists:
        return "live zone file missing"
    if row is None:
        return "first write"
    if (row.ip, row.ip6) != (values.ip, values.ip6):
        return f"IP {row.ip} -> {values.ip}"
    if row.template_sha != sha:
        return "template edited"
    return None


def rewrite(
    template: Template,
    row: ZoneRow | None,
    ip: str,
    ip6: str | None,
    zones_dir: Path,
    now: datetime,
    force: bool,
) -> Outcome:
    """Bring one live zone up to date with its template and the chosen IP.

    The new serial is newer than both the stored one and the one in the live file, so a lost
    state store never makes it go backwards; its date part is `now`'s UTC date. The live file
    is replaced only by text that validated. Raises TemplateError (live zone untouched) or
    OSError from the install.
    """
    live = zones_dir / template.path.name
    live_text = live.read_text(encoding="utf-8", errors="replace") if live.exists() else None
    live_serial = zonecheck.read_serial(live_text) if live_text is not None else None
    current = serial_max(row.serial if row else None, live_serial)
    values = Values(current or 0, ip, ip6)
    reason = change_reason(row, values, template.sha, live_text is not None, force)
    if reason == "first write" and live_serial is not None:
        if render(template.text, Values(live_serial, ip, ip6)) == live_text:
            new_row = _row(template, live_serial, values, now, "adopted the live file")
            why = "live file already up to date"
            return Outcome(template.zone, live.name, "adopted", live_serial, None, why, new_row)
    if reason is None:
        return Outcome(template.zone, live.name, "unchanged", current, current, "", row)
    serial = next_serial(current, date_floor(now.date()))
    values = Values(serial, ip, ip6)
    text = render(template.text, values)
    zonecheck.validate(text, template.zone, serial)
    install(live, text)
    new_row = _row(template, serial, values, now, reason, pending=True)
    return Outcome(template.zone, live.name, "written", serial, current, reason, new_row)


def failed(template: Template, message: str) -> Outcome:
    """The outcome of a zone that could not be rewritten; `message` is the user's one line."""
    return Outcome(template.zone, template.path.name, "failed", None, None, message)


def install(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, keeping the old file as `path`.prev.

    The new file gets the old one's permission bits (0644 when new): mkstemp's 0600 would
    hide the zone from an NSD that runs as another user.
    """
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    if path.exists():
        _replace_with(path.with_name(path.name + ".prev"), lambda tmp: shutil.copy2(path, tmp))
    _replace_with(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), mode)


def _replace_with(path: Path, fill: Callable[[str], object], mode: int | None = None) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        fill(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _row(
    template: Template, serial: int, values: Values, now: datetime, reason: str, pending=False
) -> ZoneRow:
    return ZoneRow(
        template.zone,
        template.path.name,
        serial,
        values.ip,
        values.ip6,
        template.sha,
        now,
        reason,
        pending,
    )
