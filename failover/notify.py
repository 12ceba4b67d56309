"""Tell DNS servers about a rewritten zone: the reload command, and RFC 1996 NOTIFY.

Failures are reported as Action values, never raised, and never undo the rewrite: the zone
file on disk is already the truth and the next run retries whatever is still pending.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from failover.config import Endpoint

NOTIFY_ATTEMPTS = 3
RELOAD_TIMEOUT = 30.0


@dataclass(frozen=True)
class Action:
    what: str  # "reload" or "notify HOST:PORT"
    ok: bool
    detail: str


def reload_zone(argv: Sequence[str], zone: str, file: Path) -> Action:
    """Run the configured reload command for one zone; exit 0 counts as success.

    NSD's `nsd-control reload` says ok even when it then drops a broken zone, which is why
    the engine verifies serials afterwards instead of trusting this result.
    """
    command = [arg.format(zone=zone, file=file) for arg in argv]
    what = "reload"
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=RELOAD_TIMEOUT, check=False
        )
    except FileNotFoundError:
        fix = "install it or fix [failover] reload in the config"
        return Action(what, False, f"reload command {command[0]!r} not found: {fix}")
    except OSError as exc:  # not executable, no #! line, ...
        fix = "fix its permissions or [failover] reload in the config"
        return Action(what, False, f"reload command {command[0]!r} cannot run ({exc.strerror}): "
                                   f"{fix}")
    except subprocess.TimeoutExpired:
        return Action(what, False, f"{command[0]} did not finish within {RELOAD_TIMEOUT:g} s")
    output = " ".join((done.stdout + " " + done.stderr).split())
    if done.returncode != 0:
        hint = " (is NSD running?)" if "nsd-control" in command[0] else ""
        return Action(what, False, f"{command[0]} exit {done.returncode}: {output}{hint}")
    return Action(what, True, output or "ok")


def send_notify(zone: str, target: Endpoint, timeout: float) -> Action:
    """Send an RFC 1996 NOTIFY for `zone`, retrying; success is a NOERROR NOTIFY response."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.opcode
    import dns.query
    import dns.rcode
    import dns.rdatatype

    what = f"notify {target}"
    detail = ""
    for attempt in range(1, NOTIFY_ATTEMPTS + 1):
        message = dns.message.make_query(zone + ".", dns.rdatatype.SOA)
        # Flags first: assigning flags after set_opcode would reset the opcode to QUERY.
        message.flags = dns.flags.AA
        message.set_opcode(dns.opcode.NOTIFY)
        try:
            response = dns.query.udp(message, target.host, port=target.port, timeout=timeout)
        except dns.exception.Timeout:
            detail = f"no answer after {attempt} tries of {timeout:g} s"
            continue
        except (OSError, dns.exception.DNSException) as exc:
            detail = str(exc) or type(exc).__name__
            time.sleep(min(timeout, 0.2))
            continue
        rcode = dns.rcode.to_text(response.rcode())
        if response.opcode() == dns.opcode.NOTIFY and response.rcode() == dns.rcode.NOERROR:
            return Action(what, True, "acknowledged")
        return Action(what, False, f"answered {rcode}: allow-notify this host on {target}")
    return Action(what, False, f"unreachable: {detail}")
