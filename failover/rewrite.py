"""Rewrite the live zone files from their templates: decide, render, validate, install.

Owns the zones directory: one output per template, same file name, written atomically
(temp file in the same directory, fsync, rename) with the previous version kept as NAME.prev.
A zone that would not change is never touched. Does not reload NSD or talk to the network.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from failover import zonecheck
from failover.errors import DirectoryError, TemplateError
from failover.serial import date_floor, next_serial, serial_max
from failover.state import ZoneRow
from failover.template import Values, render, zone_name

BACKUPS = ("~", ".bak", ".orig", ".rej", ".swp", ".dpkg-old", ".dpkg-dist", ".dpkg-new",
           ".ucf-old", ".ucf-dist")  # names that are not templates: editor and package copies
CHECK_TIMEOUT = 60  # seconds for nsd-checkzone (a large zone takes a few)
_NSD_ERROR = re.compile(r"error: :(\d+): (.+)")


@dataclass(frozen=True)
class Template:
    path: Path
    zone: str
    text: str
    sha: str
    problem: str | None = None  # why this template cannot be used (its zone is skipped)


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
    """Every regular, non-hidden file in `directory` but editor and package backups, as a
    template.

    A template that cannot be read, or two that serve one zone (their state would be mixed
    up), carry a `problem`: that zone is skipped, the others proceed. Raises DirectoryError
    when the directory is missing, unreadable, not a directory, or holds no template.
    """
    try:
        paths = sorted(directory.iterdir())
    except FileNotFoundError:
        raise DirectoryError(
            f"templates directory {directory} does not exist: create it or fix "
            "[failover] templates in the config"
        ) from None
    except NotADirectoryError:
        raise DirectoryError(
            f"templates {_not_a_directory(directory)}: point [failover] templates at the "
            "directory that holds the zone templates"
        ) from None
    except OSError as exc:
        raise DirectoryError(
            f"cannot read the templates directory {directory} ({exc.strerror}): run failover "
            "as a user that may read it, or fix [failover] templates in the config"
        ) from None
    templates = []
    for path in paths:
        if path.name.startswith(".") or path.name.endswith(BACKUPS) or not path.is_file():
            continue
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = f"cannot read template {path}: {exc}: fix it; the other zones proceed"
            templates.append(Template(path, zone_name(path.name, ""), "", "", why))
            continue
        sha = hashlib.sha256(raw).hexdigest()
        templates.append(Template(path, zone_name(path.name, text), text, sha))
    by_zone: dict[str, list[Template]] = {}
    for template in templates:
        by_zone.setdefault(template.zone, []).append(template)
    for zone, serving in by_zone.items():
        if len(serving) > 1:
            why = (f"templates {' and '.join(str(t.path) for t in serving)} all serve zone "
                   f"{zone}: remove all but one")
            templates = [replace(t, problem=why) if t.zone == zone else t for t in templates]
    if not templates:
        raise DirectoryError(
            f"templates directory {directory} holds no zone template: put one zone file "
            "with @serial number@ and @IP@ markers there"
        )
    return templates


def check_zones_dir(directory: Path) -> None:
    """Raise DirectoryError unless `directory` is a directory we may write (checked before any
    write)."""
    try:
        mode = directory.stat().st_mode
    except FileNotFoundError:
        raise DirectoryError(
            f"zones_dir {directory} does not exist: create it (it is NSD's zonesdir) or fix "
            "[failover] zones_dir in the config"
        ) from None
    except OSError as exc:
        raise DirectoryError(
            f"zones_dir {directory} cannot be reached ({exc.strerror}): run as the owner of "
            "the directories above it, or fix [failover] zones_dir in the config"
        ) from None
    if not stat.S_ISDIR(mode):
        raise DirectoryError(
            f"zones_dir {_not_a_directory(directory)}: point [failover] zones_dir at NSD's "
            "zonesdir, the directory its zone files are in"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DirectoryError(f"zones_dir {directory} is not writable: run as its owner")


def change_reason(
    row: ZoneRow | None,
    values: Values,
    sha: str,
    live_exists: bool,
    live_serial: int | None,
    force: bool,
) -> str | None:
    """Why a zone must be rewritten, or None when minimal mode leaves it alone.

    A live serial other than the recorded one means the file is not the one the row
    describes: a run stopped between installing it and saving the row (so the IP in it is
    not known), or a hand edit.
    """
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
    if live_serial != row.serial:
        return f"live serial {live_serial} is not the recorded {row.serial}"
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
    live_text = _live_text(live)
    live_serial = zonecheck.read_serial(live_text) if live_text is not None else None
    current = serial_max(row.serial if row else None, live_serial)
    values = Values(current or 0, ip, ip6)
    reason = change_reason(row, values, template.sha, live_text is not None, live_serial, force)
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
    nsd_check(text, template.zone)
    install(live, text)
    new_row = _row(template, serial, values, now, reason, pending=True)
    return Outcome(template.zone, live.name, "written", serial, current, reason, new_row)


def points_at(templates: list[Template], zones_dir: Path,
              ips: dict[str, tuple[str, str | None]]) -> str | None:
    """The server (a key of `ips`) whose addresses some live zone file holds exactly as its
    template renders them, or None when no live file matches a template."""
    for template in templates:
        text = _live_text(zones_dir / template.path.name)
        if template.problem is not None or text is None:
            continue
        serial = zonecheck.read_serial(text)
        if serial is None:
            continue
        for server, (ip, ip6) in ips.items():
            try:
                if render(template.text, Values(serial, ip, ip6)) == text:
                    return server
            except TemplateError:
                break
    return None


def nsd_check(text: str, zone: str) -> None:
    """NSD's own check of the new text, where NSD is installed: a zone dnspython loads but NSD
    refuses (data out of the zone, two CNAMEs at a name) would replace the live zone, and NSD
    would drop it at the reload (SERVFAIL) while its reload still says ok. Raises
    TemplateError with NSD's reason and the line."""
    tool = shutil.which("nsd-checkzone")
    if tool is None:
        return
    with tempfile.NamedTemporaryFile(suffix=".zone") as candidate:
        candidate.write(text.encode())
        candidate.flush()
        done = subprocess.run([tool, zone, candidate.name], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT, check=False)
    if done.returncode == 0:
        return
    said = (done.stderr + done.stdout).replace(candidate.name, "")
    found = _NSD_ERROR.search(said)
    if found is None:
        raise TemplateError(f"nsd-checkzone refuses it: {' '.join(said.split())[:300]}")
    raise TemplateError(f"{found.group(2)} (nsd-checkzone)", int(found.group(1)))


def failed(template: Template, message: str) -> Outcome:
    """The outcome of a zone that could not be rewritten; `message` is the user's one line."""
    return Outcome(template.zone, template.path.name, "failed", None, None, message)


def install(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, keeping the old file as `path`.prev.

    The new file gets the old one's permission bits (0644 when new), owner and group:
    mkstemp's 0600, or root's group when cron runs this as root, would hide the zone from an
    NSD that runs as another user (it then serves SERVFAIL, though its reload says ok).
    """
    old = path.stat() if path.exists() else None
    mode = old.st_mode & 0o777 if old else 0o644
    if old:
        _replace_with(path.with_name(path.name + ".prev"), lambda tmp: shutil.copy2(path, tmp),
                      mode, old)
    _replace_with(path, lambda tmp: Path(tmp).write_bytes(text.encode()), mode, old)


def _replace_with(path: Path, fill: Callable[[str], object], mode: int,
                  owner: os.stat_result | None) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        fill(tmp)
        os.chmod(tmp, mode)
        if owner is not None and (owner.st_uid, owner.st_gid) != _ids(tmp):
            try:
                os.chown(tmp, owner.st_uid, owner.st_gid)
            except PermissionError:
                pass  # not root: the file is ours, as the old one was (or root's to fix)
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


def _not_a_directory(path: Path) -> str:
    return f"{path} is a file, not a directory" if path.is_file() else f"{path} is not a directory"


def _live_text(path: Path) -> str | None:
    """A live zone file's text, or None when there is none. Bytes, decoded: reading as text
    would turn CRLF line ends into LF, and such a file would never match its template."""
    return path.read_bytes().decode("utf-8", "replace") if path.exists() else None


def _ids(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid


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
