"""Test machinery for failover: NSD servers on loopback, a fake main server, DNS probes.

A module with a unique name (not conftest) so tests can import it unambiguously; the
fixtures that use it live in conftest.py. NSD runs as `nobody` when the tests run as root,
as shared/notes/nsd.md describes. With CI=true a missing nsd fails the tests, else skips.
"""

from __future__ import annotations

import grp
import http.server
import os
import pwd
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from tests.conftest import require as require_binary

ZONE = "example.test"
TEMPLATE = """$ORIGIN example.test.
$TTL 60
@   IN SOA ns1.example.test. hostmaster.example.test. (
        2024010101 ; @serial number@
        300        ; refresh 5 min
        60         ; retry 1 min
        7257600    ; expire 12 weeks
        60 )       ; negative-caching TTL
    IN NS  ns1.example.test.
    IN NS  ns2.example.test.
ns1 IN A   127.0.0.2
ns2 IN A   127.0.0.3
@   IN A   192.0.2.10 ; @IP@
www IN A   192.0.2.10 ; @IP@
"""
MAIN_IP = "192.0.2.10"
BACKUP_IP = "198.51.100.20"
REPO = Path(__file__).resolve().parents[2]
AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


def unprivileged(argv: list[str]) -> list[str]:
    """`argv` run as nobody when the tests run as root, for whom file modes do not apply."""
    return [*AS_NOBODY, *argv] if os.geteuid() == 0 else argv


def give_to_nobody(*paths: Path) -> None:
    """Give `paths` and everything below them to nobody (a no-op unless we are root)."""
    if os.geteuid() != 0:
        return
    for top in paths:
        for path in [top, *top.rglob("*")]:
            os.chown(path, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid,
                     follow_symlinks=False)


def run_failover(*args: str, stdout: int | None = subprocess.PIPE
                 ) -> subprocess.CompletedProcess[str]:
    """This checkout's `python -m failover ARGS` in a new process, as nobody when we are root."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
           "LANG": "C.UTF-8"}
    return subprocess.run(unprivileged([sys.executable, "-m", "failover", *args]), env=env,
                          cwd="/", stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)


def free_endpoint() -> tuple[str, int]:
    """A random loopback address and a port free there for both UDP and TCP."""
    for _ in range(50):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        if port > 1024:
            return host, port
    raise RuntimeError("no free loopback endpoint found")


def soa_serial(host: str, port: int, zone: str = ZONE, timeout: float = 0.5) -> int | None:
    """The SOA serial a server answers with, or None (no answer, SERVFAIL, ...)."""
    query = dns.message.make_query(zone + ".", dns.rdatatype.SOA)
    try:
        response = dns.query.udp(query, host, port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError):
        return None
    if response.rcode() != dns.rcode.NOERROR or not response.answer:
        return None
    return response.answer[0][0].serial


def a_record(host: str, port: int, name: str = ZONE) -> str | None:
    query = dns.message.make_query(name + ".", dns.rdatatype.A)
    try:
        response = dns.query.udp(query, host, port=port, timeout=0.5)
    except (dns.exception.DNSException, OSError):
        return None
    return response.answer[0][0].address if response.answer else None


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll `predicate` until it returns a truthy value; return it (or the last falsy one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@dataclass
class Nsd:
    """One NSD server in its own folder: config, control socket, log."""

    name: str
    root: Path
    host: str
    port: int
    zone_options: str
    zonesdir: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def conf(self) -> Path:
        return self.root / "nsd.conf"

    def write_conf(self) -> None:
        r = self.root
        self.conf.write_text(
            f"""server:
    ip-address: {self.host}@{self.port}
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{self.zonesdir}"
    database: ""
    pidfile: "{r}/nsd.pid"
    xfrdfile: "{r}/xfrd.state"
    zonelistfile: "{r}/zone.list"
    xfrdir: "{r}/tmp"
    logfile: "{r}/nsd.log"
    verbosity: 2
    server-count: 1
    hide-version: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: yes
    control-interface: "{r}/nsd.ctl"
zone:
    name: "{ZONE}"
    zonefile: "{ZONE}.zone"
{self.zone_options}"""
        )

    def start(self) -> None:
        nsd = require_binary("nsd")
        command = [nsd, "-d", "-c", str(self.conf)]
        command = unprivileged(command)
        log = open(self.root / "stdout.log", "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if not wait_for(self._answers, timeout=10):
            self.stop()
            raise RuntimeError(f"NSD {self.name} did not start:\n{self.log_tail()}")

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"NSD {self.name} exited:\n{self.log_tail()}")
        query = dns.message.make_query(ZONE + ".", dns.rdatatype.SOA)
        try:
            dns.query.udp(query, self.host, port=self.port, timeout=0.2)
        except (dns.exception.DNSException, OSError):
            return False
        return True

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def serial(self) -> int | None:
        return soa_serial(self.host, self.port)

    def address(self, name: str = ZONE) -> str | None:
        return a_record(self.host, self.port, name)

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for log in ("nsd.log", "stdout.log"):
            path = self.root / log
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Rig:
    """An NSD primary serving `zones`, and an NSD secondary fed by it."""

    root: Path
    templates: Path
    zones: Path
    primary: Nsd
    secondary: Nsd

    def reload_argv(self) -> list[str]:
        return [require_binary("nsd-control"), "-c", str(self.primary.conf), "reload", "{zone}"]


class _Page(http.server.BaseHTTPRequestHandler):
    body = b"<html>main is up</html>"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        """Keep test output clean."""


class MainServer:
    """The main server's web page on loopback; stop() makes connections be refused."""

    def __init__(self) -> None:
        self.host, self.port = free_endpoint()
        self.server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/index.html"

    def start(self) -> None:
        self.server = http.server.ThreadingHTTPServer((self.host, self.port), _Page)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, checks: list[dict], **failover) -> Path:
    """Write a config file with a [failover] section and its [[failover.check]] tables."""
    lines = ["[failover]"] + [f"{k} = {toml_value(v)}" for k, v in failover.items()]
    for check in checks:
        lines += ["", "[[failover.check]]"] + [f"{k} = {toml_value(v)}" for k, v in check.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
