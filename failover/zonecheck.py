"""Validate rendered zone text with dnspython, and read the serial of a live zone file.

Parsing only: no files, no network. A failure becomes a TemplateError carrying the line of
the record dnspython rejected, so the user sees the template's file:line.
"""

from __future__ import annotations

import io
import re

import dns.exception
import dns.rdataclass
import dns.rdatatype
import dns.zone

from failover.errors import TemplateError

_PREFIX = re.compile(r"^<string>:\d+:\s*")
_GENERATE = re.compile(r"^\$GENERATE\b", re.IGNORECASE | re.MULTILINE)
# dnspython's message for a value it cannot parse (e.g. 203.0.113.999) says nothing useful.
_VAGUE = "Text input is malformed."


class _LineTracker(io.StringIO):
    """Text input that remembers the last line a non-blank character was read from.

    dnspython reports the tokenizer's line, which is one past the record when the error is
    noticed after the newline; the last line with content is where the bad record is.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.line = 1
        self.content_line = 1

    def read(self, size: int | None = -1) -> str:
        chunk = super().read(size)
        for char in chunk:
            if char == "\n":
                self.line += 1
            elif not char.isspace():
                self.content_line = self.line
        return chunk


def validate(text: str, zone: str, serial: int) -> None:
    """Raise TemplateError unless `text` is a loadable zone for `zone` whose SOA has `serial`.

    Checks what NSD would otherwise discover only after a reload (and then drop the zone):
    syntax, valid addresses, an SOA and NS records at the origin, and the serial actually set.
    """
    if _GENERATE.search(text):
        raise TemplateError("$GENERATE is not something NSD reads: write the records out")
    source = _LineTracker(text)
    try:
        parsed = dns.zone.from_text(
            source, origin=zone + ".", relativize=False, allow_include=False
        )
    except dns.zone.NoSOA:
        raise TemplateError(f"no SOA record at the zone origin {zone}.: add one") from None
    except dns.zone.NoNS:
        raise TemplateError(f"no NS record at the zone origin {zone}.: add one") from None
    except dns.exception.DNSException as exc:
        raise _located(exc, text, source.content_line) from None
    _check_names(parsed)
    soa = parsed.get_rdataset(zone + ".", dns.rdatatype.SOA)
    assert soa is not None  # from_text checked the origin
    if soa[0].serial != serial:
        raise TemplateError(
            f"the SOA serial is {soa[0].serial}, not the new {serial}: put @serial number@ "
            "in place of the serial, or in the comment after it"
        )


def _check_names(parsed: dns.zone.Zone) -> None:
    """What dnspython loads but NSD refuses, dropping the whole zone at its reload. (Data out
    of the zone, or a second CNAME, dnspython drops silently: nsd-checkzone catches those,
    see rewrite.nsd_check.)"""
    dnames = [name for name, node in parsed.nodes.items()
              if node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.DNAME) is not None]
    for name in parsed.nodes:
        below = next((d for d in dnames if name != d and name.is_subdomain(d)), None)
        if below is not None:
            raise TemplateError(f"{name} is below the DNAME at {below}: NSD refuses the zone")


def _located(exc: Exception, text: str, line: int) -> TemplateError:
    message = _PREFIX.sub("", str(exc)) or "syntax error"
    if message == _VAGUE:
        message = "invalid value"
    lines = text.splitlines()
    record = lines[line - 1].split(";")[0].strip() if 0 < line <= len(lines) else ""
    shown = f' in "{record}"' if record else ""
    return TemplateError(f"{message}{shown}", line)


def read_serial(text: str) -> int | None:
    """The SOA serial written in a zone file's text, or None when no SOA can be found.

    Deliberately lenient (comments stripped, third field after SOA): it must work on a live
    file that someone broke by hand, so the next serial still never goes backwards.
    """
    stripped = re.sub(r";[^\n]*", " ", text)
    tokens = [t for t in stripped.split() if t not in ("(", ")")]
    for index, token in enumerate(tokens):
        if token.upper() == "SOA" and index + 3 < len(tokens):
            value = tokens[index + 3].strip("()")
            return int(value) if value.isdigit() else None
    return None
