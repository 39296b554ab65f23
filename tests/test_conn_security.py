"""Connections that must end or stop: stalled readers, pipelining without reading, idle and
trickling clients, on srvsock and web ports.

The memory tests run the server as its own process (twistd) and read its resident size
from /proc; the others run ports in the test's reactor.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import Twistd, client_context, definitions, free_port, install_handlers, port_section, start

#: The most a stalled client may grow the server by (resident set), in MiB: the bounded
#: buffers of one connection (the socket's unsent output up to the high-water mark, the
#: read buffer, TLS records) are well under 4 MiB; the rest is allocator slack.
RSS_BOUND_MIB = 24


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def child(pki, tmp_path):
    """A twistd process with an echo srvsock port and a web port serving a 64 KiB page."""
    procs = install_handlers(tmp_path / "procs", h="echo")
    (procs / "pages").mkdir()
    (procs / "pages" / "big.txt").write_bytes(b"x" * 65536)
    echo, web = free_port(), free_port()
    ini = procs / "ports.ini"
    ini.write_text(
        definitions(
            procs,
            port_section(pki, "ECHO", listen=f"tcp:{echo}:interface=127.0.0.1", client_cert="none", handler="h:serve"),
            port_section(pki, "WEB", type="webserv", listen=f"tcp:{web}:interface=127.0.0.1", client_cert="none"),
            "[web:WEB]\nON /big = page pages/big.txt\n",
        )
    )
    t = Twistd(["-n", "--pidfile", str(tmp_path / "t.pid"), "--logfile", "-", "janustls", "--port-def", str(ini),
                "--log-format", "json"], tmp_path)  # fmt: skip
    try:
        t.wait_for("janustls.port.listening")
        t.wait_for("janustls.port.listening")
        yield t, echo, web
    finally:
        t.stop()


def tls(port: int, pki: Any, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    return client_context(pki, None, tls="1.3").wrap_socket(raw, server_hostname="localhost")


def push(s: ssl.SSLSocket, data: bytes, total: int, seconds: float) -> int:
    """Send `data` repeatedly, up to `total` bytes or until the server stops taking them."""
    sent = 0
    s.settimeout(2.0)
    deadline = time.monotonic() + seconds
    try:
        while sent < total and time.monotonic() < deadline:
            s.sendall(data)
            sent += len(data)
    except (TimeoutError, ssl.SSLError, OSError):
        pass
    return sent


def echo_round_trip(port: int, pki: Any) -> None:
    with tls(port, pki) as s:
        s.sendall(b"ping\n")
        assert s.recv(5) == b"ping\n"


def test_stalled_reader_on_echo_keeps_server_memory_bounded(child, pki):
    t, echo, _ = child
    pid = t.proc.pid
    echo_round_trip(echo, pki)
    before = rss_mib(pid)
    stalled = tls(echo, pki)
    result: list[int] = []
    sender = threading.Thread(target=lambda: result.append(push(stalled, b"y" * 65536, 96 * 2**20, 25)))
    sender.start()
    try:
        time.sleep(1.0)
        # Other clients are served meanwhile.
        echo_round_trip(echo, pki)
        sender.join(40)
        grown = rss_mib(pid) - before
        echo_round_trip(echo, pki)
    finally:
        stalled.close()
    assert grown < RSS_BOUND_MIB, f"server grew by {grown:.1f} MiB after the client sent {result[0] / 2**20:.1f} MiB"


def test_pipelining_without_reading_keeps_server_memory_bounded(child, pki):
    t, _, web = child
    pid = t.proc.pid
    with tls(web, pki) as s:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200" in s.recv(100)
    before = rss_mib(pid)
    stalled = tls(web, pki)
    result: list[int] = []
    request = b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n" * 64
    sender = threading.Thread(target=lambda: result.append(push(stalled, request, 4 * 2**20, 25)))
    sender.start()
    try:
        sender.join(40)
        grown = rss_mib(pid) - before
        echo_round_trip(child[1], pki)
    finally:
        stalled.close()
    asked = result[0] // (len(request) // 64)
    assert grown < RSS_BOUND_MIB, f"server grew by {grown:.1f} MiB after {asked} pipelined requests"


# -- closes that happen ------------------------------------------------------------------------------

IDLE = 1.0
#: The close grace period (janustls.ports.base.CLOSE_GRACE) plus a generous margin.
GRACE_AND_MARGIN = 5.0 + 4.0


@pytest.fixture
def web(pki, reactor, tmp_path):
    procs = tmp_path / "procs"
    (procs / "pages").mkdir(parents=True)
    (procs / "pages" / "big.txt").write_bytes(b"z" * 2**20)
    (procs / "pages" / "small.txt").write_bytes(b"small\n")
    s = start(
        definitions(
            procs,
            port_section(pki, "IDLEWEB", type="webserv", client_cert="none", idle_timeout=IDLE),
            "[web:IDLEWEB]\nON /big = page pages/big.txt\nON /small = page pages/small.txt\n",
        ),
        procs,
    )
    yield s.port("IDLEWEB")
    s.stop()


def closed_within(s: ssl.SSLSocket, seconds: float) -> float:
    """Read (and drop) until the server ends the connection; seconds it took. Fails past `seconds`."""
    started = time.monotonic()
    s.settimeout(max(0.5, seconds))
    while True:
        try:
            data = s.recv(65536)
        except (ConnectionError, ssl.SSLError, OSError) as e:
            if isinstance(e, socket.timeout):
                raise AssertionError(f"still open after {time.monotonic() - started:.1f}s")
            break
        if not data:
            break
        if time.monotonic() - started > seconds:
            raise AssertionError(f"still sending after {seconds}s")
    return time.monotonic() - started


def test_idle_timeout_closes_a_web_connection(web, pki, events):
    mark = events.mark()
    with tls(web, pki) as s:
        s.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b"small" not in answer:
            answer += s.recv(4096)
        took = closed_within(s, IDLE + GRACE_AND_MARGIN)
    events.wait_for(mark, "janustls.conn.idle_timeout", "IDLEWEB")
    assert took < IDLE + GRACE_AND_MARGIN


def test_idle_timeout_closes_a_web_connection_that_does_not_read(web, pki, events):
    """The response does not fit the socket buffers and the client never reads: the server
    still ends the connection, by force after the grace period."""
    mark = events.mark()
    with tls(web, pki) as s:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        events.wait_for(mark, "janustls.conn.idle_timeout", "IDLEWEB", timeout=IDLE + GRACE_AND_MARGIN)
        closed = events.wait_for(mark, "janustls.conn.closed", "IDLEWEB", timeout=IDLE + GRACE_AND_MARGIN)
        assert closed is not None
        assert time.monotonic() - started < IDLE + GRACE_AND_MARGIN
        closed_within(s, 10)  # what was buffered, then the end


def test_trickling_client_does_not_outlive_idle_timeout(web, pki, events):
    """A byte of a request line every 0.2 s is no progress: closed after idle_timeout."""
    mark = events.mark()
    with tls(web, pki) as s:
        started = time.monotonic()
        s.settimeout(0.2)
        closed = False
        for byte in b"GET /small HTTP/1.1\r\nX-Slow: " + b"a" * 200:
            try:
                s.sendall(bytes([byte]))
                if s.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except (ConnectionError, ssl.SSLError, OSError):
                closed = True
                break
            if time.monotonic() - started > IDLE + GRACE_AND_MARGIN:
                break
        assert closed, "a trickling client kept its connection past idle_timeout"
    events.wait_for(mark, "janustls.conn.idle_timeout", "IDLEWEB")


def test_write_buffer_high_is_a_checked_port_key(pki, tmp_path):
    from janustls.core.config import parse_definitions
    from janustls.errors import ConfigErrors

    def text(value: str) -> str:
        return definitions(
            tmp_path, port_section(pki, "W", client_cert="none", handler="h:serve", write_buffer_high=value)
        )

    install_handlers(tmp_path, h="echo")
    assert parse_definitions(text("65536"), source="t.ini", base=tmp_path).ports[0].write_buffer_high == 65536
    with pytest.raises(ConfigErrors, match="write_buffer_high"):
        parse_definitions(text("100"), source="t.ini", base=tmp_path)
