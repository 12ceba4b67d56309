"""Zone templates: find the markers and substitute them; pure text in, text out.

Markers are `@serial number@`, `@IP@` and `@IP6@`, written either inline where the value goes,
or in the comment after `;` to mark the value already on that line (the template then stays a
valid zone file). This module imports no DNS library and does no I/O; zonecheck.py validates.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from failover.errors import TemplateError

SERIAL = "@serial number@"
IP = "@IP@"
IP6 = "@IP6@"
MARKERS = (SERIAL, IP, IP6)

# Anything shaped like a marker: letters first, no dots, so "@ IN A" and e-mail addresses
# (admin@example.org) are not markers.
_MARKER_SHAPE = re.compile(r"@[A-Za-z][A-Za-z0-9_ ]*@")
_TOKEN = re.compile(r"\S+")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.:])")
_IPV6 = re.compile(r"(?<![\w.])[0-9A-Fa-f]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?![\w:])")
_ORIGIN = re.compile(r"^\$ORIGIN\s+(\S+)", re.IGNORECASE)


@dataclass(frozen=True)
class Values:
    """What the markers become for one rendering."""

    serial: int
    ip: str
    ip6: str | None = None


def zone_name(file_name: str, text: str) -> str:
    """The zone a template serves, without the trailing dot.

    A `$ORIGIN` before the first record wins, because it is what the zone file itself says;
    otherwise the file name without a trailing ".zone". A `$ORIGIN` further down (for the
    records of a subdomain, as `_tcp`) names no zone.
    """
    for line in text.splitlines():
        found = _ORIGIN.match(line)
        if found:
            return found.group(1).rstrip(".").lower() or "."
        code = line.split(";", 1)[0].strip()
        if code and not code.startswith("$"):
            break  # the first record
    name = file_name.removesuffix(".zone")
    return name.rstrip(".").lower()


def render(text: str, values: Values) -> str:
    """Substitute every marker in `text`; line count and line endings are preserved.

    Raises TemplateError (with the line) for an unknown marker, a comment marker with no
    single value on its line to replace, or @IP6@ without IPv6 addresses configured.
    Comment-only lines are left alone: they hold no record, so a marker there is prose.
    """
    lines = text.splitlines(keepends=True)
    return "".join(_render_line(line, number, values) for number, line in enumerate(lines, 1))


def _render_line(line: str, number: int, values: Values) -> str:
    body = line.rstrip("\r\n")
    ending = line[len(body) :]
    code, comment = _split_comment(body)
    if not code.strip():
        return line
    _reject_unknown(_outside_quotes(code) + comment, number)
    for marker in MARKERS:
        if marker in code or marker in comment:
            value = _value(marker, values, number)
            code = code.replace(marker, value)
            if marker in comment:
                code = _replace_marked(code, marker, value, number)
    return code + comment + ending


def _value(marker: str, values: Values, number: int) -> str:
    if marker == SERIAL:
        return str(values.serial)
    if marker == IP:
        return values.ip
    if values.ip6 is None:
        raise TemplateError(f"{IP6} used but main_ip6/backup_ip6 are not configured", number)
    return values.ip6


def _replace_marked(code: str, marker: str, value: str, number: int) -> str:
    """Replace the one value on a line whose comment carries `marker`."""
    if marker == SERIAL:
        spans = _serial_spans(code)
        what = "serial number"
    elif marker == IP:
        spans = [m.span() for m in _IPV4.finditer(code)]
        what = "IPv4 address"
    else:
        spans = [m.span() for m in _IPV6.finditer(code) if _is_ipv6(m.group())]
        what = "IPv6 address"
    if len(spans) != 1:
        found = "no" if not spans else f"{len(spans)}"
        raise TemplateError(
            f"the comment marker {marker} needs exactly one {what} before the ';' on its line, "
            f"found {found}",
            number,
        )
    start, end = spans[0]
    return code[:start] + value + code[end:]


def _serial_spans(code: str) -> list[tuple[int, int]]:
    """The serial on a line: the first number after SOA if the line has one, else its number."""
    tokens = list(_TOKEN.finditer(code))
    after = 0
    for index, token in enumerate(tokens):
        if token.group().upper() == "SOA":
            after = index + 1
            break
    numbers = []
    for token in tokens[after:]:
        word = token.group()
        digits = word.strip("()")  # "(2024010101": NSD reads the paren apart from the number
        if digits.isdigit():
            start = token.start() + word.index(digits)
            numbers.append((start, start + len(digits)))
    if after:
        return numbers[:1]
    return numbers


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _split_comment(body: str) -> tuple[str, str]:
    """Split at the first ';' outside a quoted string: (code, comment including the ';')."""
    quoted = False
    escaped = False
    for index, char in enumerate(body):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            return body[:index], body[index:]
    return body, ""


def _outside_quotes(code: str) -> str:
    """`code` with quoted strings blanked: TXT data may contain anything, even @x@."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', code)


def _reject_unknown(text: str, number: int) -> None:
    for found in _MARKER_SHAPE.finditer(text):
        if found.group() not in MARKERS:
            known = ", ".join(MARKERS)
            raise TemplateError(f"unknown marker {found.group()} (known: {known})", number)
