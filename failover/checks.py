"""Health checks of the main server: HTTP(S) GET, TCP connect, SMTP and IMAP banners.

Each check returns a CheckResult and never raises for a network failure: a failure is an
observation. Changes nothing; the decision what to do with the results is hysteresis.py's.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

from failover.config import Check

_BANNERS = {"smtp": "220", "imap": "* OK"}


@dataclass(frozen=True)
class CheckResult:
    label: str
    ok: bool
    detail: str
    seconds: float


def run_checks(checks: Sequence[Check], combine: str) -> tuple[bool, list[CheckResult]]:
    """Run every check; main is healthy when all (or, with combine="any", one) passed."""
    results = [run_check(check) for check in checks]
    passed = [r.ok for r in results]
    return (any(passed) if combine == "any" else all(passed)), results


def run_check(check: Check) -> CheckResult:
    """Run one check within its timeout and describe the result in a few words."""
    start = time.monotonic()
    try:
        if check.type == "http":
            ok, detail = _http(check)
        else:
            ok, detail = _socket(check)
    except (OSError, ValueError) as exc:
        ok, detail = False, _describe(exc, check.timeout)
    return CheckResult(check.label, ok, detail, time.monotonic() - start)


def _http(check: Check) -> tuple[bool, str]:
    import httpx

    try:
        response = httpx.get(
            check.url, timeout=check.timeout, verify=check.verify_tls, follow_redirects=True
        )
    except httpx.TimeoutException:
        return False, f"no answer within {check.timeout:g} s"
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return False, _describe(exc, check.timeout)
    if not 200 <= response.status_code < 300:
        return False, f"HTTP {response.status_code}"
    if check.expect is not None and check.expect not in response.text:
        return False, f"HTTP {response.status_code} but the page lacks {check.expect!r}"
    return True, f"HTTP {response.status_code}"


def _socket(check: Check) -> tuple[bool, str]:
    with socket.create_connection((check.host, check.port), timeout=check.timeout) as raw:
        if check.type == "tcp":
            return True, "connected"
        conn = raw
        if check.tls:
            context = ssl.create_default_context()
            conn = context.wrap_socket(raw, server_hostname=check.host)
        banner = _read_line(conn)
        if check.type == "smtp":
            conn.sendall(b"QUIT\r\n")
        elif check.type == "imap":
            conn.sendall(b"a LOGOUT\r\n")
    wanted = _BANNERS[check.type]
    if banner.startswith(wanted):
        return True, f"banner {banner[:40]!r}"
    return False, f"banner {banner[:40]!r} does not start with {wanted!r}"


def _read_line(conn: socket.socket) -> str:
    data = b""
    while b"\n" not in data and len(data) < 4096:
        chunk = conn.recv(1024)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n")[0].decode("utf-8", "replace").strip()


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text.splitlines()[0]
