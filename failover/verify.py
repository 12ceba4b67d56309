"""Verify, do not trust: ask each DNS server which SOA serial it serves for a zone.

Polls every listed server until it serves the expected serial or the timeout passes; a
server still serving a newer serial then is reported as such (loudly, by the engine). A newer
serial is not final at once: a primary serves its old zone until its reload completes.
Polling stays near 20 queries/s per server, far below NSD's default rate limit. Records nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from failover.config import Endpoint
from failover.serial import serial_gt

POLL_INTERVAL = 0.05
QUERY_TIMEOUT = 0.5


@dataclass(frozen=True)
class Served:
    """One server's answer. outcome: ok | newer | stale | unreachable | error.

    seconds: time from the start of verification to the answer that decided the outcome.
    """

    server: str
    outcome: str
    serial: int | None
    seconds: float
    detail: str


def query_serial(zone: str, server: Endpoint, timeout: float) -> tuple[int | None, str]:
    """(serial, "") when `server` answers authoritatively for `zone`, else (None, why not)."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    query = dns.message.make_query(zone + ".", dns.rdatatype.SOA)
    query.flags = 0  # no recursion wanted: we ask the authority itself
    try:
        response, _ = dns.query.udp_with_fallback(query, server.host, timeout, server.port)
    except dns.exception.Timeout:
        return None, "no answer"
    except (OSError, dns.exception.DNSException) as exc:
        return None, str(exc) or type(exc).__name__
    if response.rcode() != dns.rcode.NOERROR:
        return None, f"answers {dns.rcode.to_text(response.rcode())} for the zone"
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return rrset[0].serial, ""
    return None, "answers without an SOA record"


def verify(
    zone: str,
    servers: Sequence[Endpoint],
    expected: int,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> list[Served]:
    """Poll `servers` until each serves `expected` (or newer), or `timeout` seconds pass."""
    start = clock()
    results: dict[Endpoint, Served] = {}
    last: dict[Endpoint, tuple[int | None, str]] = {}
    while True:
        for server in servers:
            if server in results:
                continue
            remaining = timeout - (clock() - start)
            serial, why = query_serial(zone, server, max(0.05, min(QUERY_TIMEOUT, remaining)))
            last[server] = (serial, why)
            if serial == expected:
                results[server] = Served(str(server), "ok", serial, clock() - start, "")
        if len(results) == len(servers) or clock() - start >= timeout:
            break
        time.sleep(POLL_INTERVAL)
    for server in servers:
        if server not in results:
            results[server] = _timed_out(server, last.get(server, (None, "")), expected, timeout)
    return [results[server] for server in servers]


def _timed_out(
    server: Endpoint, last: tuple[int | None, str], expected: int, timeout: float
) -> Served:
    serial, why = last
    if serial is not None:
        outcome = "newer" if serial_gt(serial, expected) else "stale"
        return Served(str(server), outcome, serial, timeout, f"serves {serial} after {timeout:g} s")
    outcome = "unreachable" if why in ("no answer", "") or "refused" in why.lower() else "error"
    return Served(str(server), outcome, None, timeout, why or "no answer")
