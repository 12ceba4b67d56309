"""Health checks against small local servers: HTTP, TCP, SMTP and IMAP banners."""

import socket
import threading
from collections.abc import Iterator

import pytest
from failover_rig import free_endpoint

from failover.checks import run_check, run_checks
from failover.config import Check


class BannerServer:
    """Accepts connections and greets each with `banner` (None: accept and stay silent)."""

    def __init__(self, banner: bytes | None) -> None:
        self.banner = banner
        self.host, self.port = free_endpoint()
        self.sock = socket.create_server((self.host, self.port))
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.banner is None:
                    while conn.recv(100):  # hold the connection until the client gives up
                        pass
                    continue
                conn.sendall(self.banner)
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(100))
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def banner_server(request) -> Iterator[BannerServer]:
    server = BannerServer(request.param)
    yield server
    server.close()


def http(url: str, **options) -> Check:
    return Check(type="http", url=url, timeout=options.pop("timeout", 2), **options)


def test_http_up_and_expected_text(main_server):
    assert run_check(http(main_server.url)).ok
    result = run_check(http(main_server.url, expect="main is up"))
    assert (result.ok, result.detail, result.label) == (True, "HTTP 200", main_server.url)
    missing = run_check(http(main_server.url, expect="maintenance"))
    assert (missing.ok, missing.detail) == (False, "HTTP 200 but the page lacks 'maintenance'")


def test_http_down_is_a_refused_connection(main_server):
    main_server.stop()
    result = run_check(http(main_server.url))
    assert not result.ok and "refused" in result.detail.lower()


@pytest.mark.parametrize(
    "banner_server", [b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"], indirect=True
)
def test_http_error_status_is_a_failure(banner_server):
    result = run_check(http(f"http://{banner_server.host}:{banner_server.port}/"))
    assert (result.ok, result.detail) == (False, "HTTP 503")


@pytest.mark.parametrize("banner_server", [None], indirect=True)
def test_a_silent_server_times_out(banner_server):
    result = run_check(http(f"http://{banner_server.host}:{banner_server.port}/", timeout=0.3))
    assert (result.ok, result.detail) == (False, "no answer within 0.3 s")
    assert result.seconds < 2
    smtp = Check(type="smtp", host=banner_server.host, port=banner_server.port, timeout=0.3)
    assert run_check(smtp).detail == "no answer within 0.3 s"


def test_https_certificates_are_verified_by_default(main_server):
    url = main_server.url.replace("http://", "https://")
    result = run_check(http(url))
    assert not result.ok  # the plain-HTTP server cannot complete a TLS handshake


@pytest.mark.parametrize("banner_server", [b"220 mail.example.org ESMTP\r\n"], indirect=True)
def test_smtp_banner(banner_server):
    check = Check(type="smtp", host=banner_server.host, port=banner_server.port, timeout=2)
    result = run_check(check)
    assert result.ok and result.detail == "banner '220 mail.example.org ESMTP'"
    assert result.label == f"smtp {banner_server.host}:{banner_server.port}"


@pytest.mark.parametrize("banner_server", [b"* OK [CAPABILITY IMAP4rev1] ready\r\n"], indirect=True)
def test_imap_banner_and_a_wrong_banner(banner_server):
    imap = Check(type="imap", host=banner_server.host, port=banner_server.port, timeout=2)
    assert run_check(imap).ok
    smtp = Check(type="smtp", host=banner_server.host, port=banner_server.port, timeout=2)
    result = run_check(smtp)
    assert not result.ok and result.detail.endswith("does not start with '220'")


def test_tcp_connect(main_server):
    check = Check(type="tcp", host=main_server.host, port=main_server.port, timeout=1)
    assert run_check(check).detail == "connected"
    main_server.stop()
    assert not run_check(check).ok


def test_combine_all_or_any(main_server):
    host, port = free_endpoint()
    checks = [http(main_server.url), Check(type="tcp", host=host, port=port, timeout=0.5)]
    assert run_checks(checks, "all")[0] is False
    healthy, results = run_checks(checks, "any")
    assert healthy and [r.ok for r in results] == [True, False]
