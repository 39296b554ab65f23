"""srvsock ports: the handler API, back-pressure, limits, timeouts, failing handlers, garbage.

Real ports on 127.0.0.1:0 and real clients (Python's ssl, raw TCP sockets, curl).
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import time

import pytest

from janustls.ports.connection import MAX_LINE, READ_BUFFER_HIGH
from tests.support import HANDED, client_context, definitions, handed, install_handlers, secure_port, start, talk


@pytest.fixture(scope="module")
def server(pki, reactor, tmp_path_factory):
    procs = tmp_path_factory.mktemp("procs_srvsock")
    install_handlers(procs, h="srvsock")
    names = ("api", "deferred", "chained", "plain", "closer", "bulk", "moody", "raiser", "liner", "mixed", "exact")
    ini = definitions(
        procs,
        *(secure_port(pki, name.upper(), client_cert="request", handler=f"h:{name}") for name in names),
        secure_port(pki, "LIMITED", client_cert="request", handler="h:hold", max_connections=2),
        secure_port(pki, "IDLE", client_cert="request", handler="h:hold", idle_timeout=0.5),
        secure_port(pki, "SLOW", client_cert="request", handler="h:hold", handshake_timeout=0.3),
        secure_port(pki, "WHOAMI", handler="h:http"),
    )
    s = start(ini, procs)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _empty_handover():
    while not HANDED.empty():
        HANDED.get_nowait()
    yield


def connect(port: int, pki, cert: str | None = "alice", version: str | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return client_context(pki, cert, tls=version).wrap_socket(raw, server_hostname="localhost")


def read_to_eof(s: socket.socket, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


# -- the handler API -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_readline_read_write_and_end_of_stream(server, pki, version):
    """readline() returns one line with its newline, read(n) at most n bytes, then the end of stream."""
    with connect(server.port("API"), pki, version=version) as s:
        f = s.makefile("rb")
        s.sendall(b"hello\n")
        assert f.readline() == b"line:hello\n"
        s.sendall(b"abcdefgh\n")
        assert f.readline() == b"read:abcde\n"
        assert f.readline() == b"rest:fgh\n"
        s.sendall(b"partial")
        f.close()
    # At the end of the stream: the unterminated rest, then b"" from readline and read.
    assert handed() == (b"partial", b"", b"")


def test_handler_awaiting_every_kind_of_thing(server, pki):
    """The handler runner resumes on reads, other Deferreds, failures and nested coroutines."""
    with connect(server.port("MIXED"), pki) as s:
        s.sendall(b"first\n")
        time.sleep(0.05)
        s.sendall(b"abcd" + b"x" * (MAX_LINE + 10))
        assert read_to_eof(s) == b"first\nlater\nfired\nfailed 'caught'\nabcd\ntoo long\n"


def test_readexactly(server, pki):
    with connect(server.port("EXACT"), pki) as s:
        for piece in (b"ab", b"cd", b"efgh"):
            s.sendall(piece)
            time.sleep(0.02)
        s.sendall(b"tail")
        assert read_to_eof(s) == b"abcdef|ghtail|"


def test_handler_returning_deferred(server, pki):
    """A handler may be a plain function returning a Deferred; the port closes when it fires."""
    assert talk(server.port("DEFERRED"), client_context(pki, "alice")) == b"deferred\n"


def test_handler_deferred_from_readline(server, pki):
    """A Deferred chained on sock.readline() works like a coroutine."""
    assert talk(server.port("CHAINED"), client_context(pki, "alice"), b"shout\n") == b"SHOUT\n"


def test_plain_function_handler(server, pki):
    """A plain function that returns None: its writes arrive, then the connection closes."""
    assert talk(server.port("PLAIN"), client_context(pki, None)) == b"plain\n"


def test_close_from_handler(server, pki):
    """sock.close() ends the connection even while the handler's Deferred is pending."""
    assert talk(server.port("CLOSER"), client_context(pki, "alice")) == b"bye\n"


def test_data_above_read_high_water_mark(server, pki):
    """1 MiB each way through a handler that lets more than READ_BUFFER_HIGH pile up before reading."""
    size = 1024 * 1024
    data = os.urandom(size)
    with connect(server.port("BULK"), pki) as s:
        s.sendall(f"{size}\n".encode() + data)
        f = s.makefile("rb")
        digest = f.readline()
        back = f.read(size)
    buffered = handed()
    assert buffered > READ_BUFFER_HIGH  # the case under test happened: reading was paused
    assert digest == hashlib.sha256(data).hexdigest().encode() + b"\n"
    assert back == data


# -- failing handlers, garbage ------------------------------------------------------------------


def test_handler_that_raises_is_logged_and_port_keeps_serving(server, pki, events):
    """An exception in a handler closes only its connection and is logged with the port and the error."""
    port = server.port("MOODY")
    mark = events.mark()
    with connect(port, pki) as s:
        local = s.getsockname()[1]
        s.sendall(b"boom\n")
        assert read_to_eof(s) == b""
    e = events.wait_for(mark, "janustls.handler.error", "MOODY")
    assert "boom requested" in e["error"]
    assert e["handler"] == "h:moody"
    assert e["peer"] == f"127.0.0.1:{local}"  # the same form as every other event's peer
    assert talk(port, client_context(pki, "alice"), b"fine\n") == b"fine\n"


def test_handler_raising_at_once(server, pki, events):
    """A handler that raises before returning anything: logged, closed, next client served the same."""
    port = server.port("RAISER")
    for _ in range(2):
        mark = events.mark()
        assert talk(port, client_context(pki, "alice")) == b""
        e = events.wait_for(mark, "janustls.handler.error", "RAISER")
        assert "handler broke at once" in e["error"]


def test_line_too_long(server, pki, events):
    """readline() gives up past MAX_LINE bytes without a newline: the handler fails, the port goes on."""
    port = server.port("LINER")
    mark = events.mark()
    with connect(port, pki) as s:
        s.sendall(b"x" * (MAX_LINE + 4096))
        assert read_to_eof(s) == b""
    e = events.wait_for(mark, "janustls.handler.error", "LINER")
    assert "no end of line" in e["error"]
    assert talk(port, client_context(pki, "alice"), b"short\n") == b"short\n"


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", b"\x00\x01\x02 not tls at all \xff" * 20],
    ids=["plaintext-http", "garbage"],
)
def test_garbage_on_tls_port_closed_and_logged(server, pki, events, garbage):
    """Bytes that are not TLS end in a closed connection and a handshake.failed event, not a hang."""
    port = server.port("PLAIN")
    mark = events.mark()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        local = raw.getsockname()[1]
        raw.sendall(garbage)
        started = time.monotonic()
        answer = read_to_eof(raw)
        assert time.monotonic() - started < 3
    assert b"HTTP" not in answer and b"plain" not in answer
    e = events.wait_for(mark, "janustls.handshake.failed", "PLAIN")
    assert e["peer"] == f"127.0.0.1:{local}"
    assert e["detail"]
    # The port still serves TLS clients.
    assert talk(port, client_context(pki, None)) == b"plain\n"


# -- limits and timeouts ---------------------------------------------------------------------------


def test_max_connections(server, pki, events):
    """The N+1th connection is closed at once and logged; once one closes, a new one gets in."""
    port = server.port("LIMITED")
    first, second = connect(port, pki), connect(port, pki)
    try:
        assert first.recv(3) == b"ok\n" and second.recv(3) == b"ok\n"
        mark = events.mark()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            local = raw.getsockname()[1]
            started = time.monotonic()
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                with client_context(pki, "alice").wrap_socket(raw, server_hostname="localhost") as third:
                    if not third.recv(3):
                        raise ConnectionError("closed")
            assert time.monotonic() - started < 1  # at once, not after a timeout
        e = events.wait_for(mark, "janustls.conn.limit", "LIMITED")
        assert e["limit"] == 2
        assert e["peer"] == f"127.0.0.1:{local}"
        mark = events.mark()
        first.close()
        events.wait_for(mark, "janustls.conn.closed", "LIMITED")
        with connect(port, pki) as fourth:
            assert fourth.recv(3) == b"ok\n"
            fourth.sendall(b"x\n")
            assert fourth.recv(2) == b"x\n"
    finally:
        first.close()
        second.close()


def test_idle_timeout_closes_silent_connection(server, pki, events):
    """A connection with no traffic for idle_timeout seconds is closed and logged; traffic keeps one open."""
    port = server.port("IDLE")
    mark = events.mark()
    with connect(port, pki) as busy, connect(port, pki) as silent:
        assert busy.recv(3) == b"ok\n" and silent.recv(3) == b"ok\n"
        started = time.monotonic()
        for i in range(5):  # 1 s of traffic, one line every 0.2 s
            busy.sendall(b"%d\n" % i)
            assert busy.recv(2) == b"%d\n" % i
            time.sleep(0.2)
        assert read_to_eof(silent) == b""
        elapsed = time.monotonic() - started
        assert 0.3 < elapsed < 3, elapsed
        busy.sendall(b"still\n")
        assert busy.recv(6) == b"still\n"
    e = events.wait_for(mark, "janustls.conn.idle_timeout", "IDLE")
    assert e["seconds"] == 0.5
    assert len(events.since(mark, "janustls.conn.idle_timeout", "IDLE")) == 1


def test_handshake_timeout(server, pki, events):
    """A TCP client that never starts its handshake is closed after handshake_timeout, and logged."""
    port = server.port("SLOW")
    mark = events.mark()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        local = raw.getsockname()[1]
        started = time.monotonic()
        assert read_to_eof(raw) == b""
        elapsed = time.monotonic() - started
    assert 0.2 < elapsed < 3, elapsed
    e = events.wait_for(mark, "janustls.handshake.timeout", "SLOW")
    assert e["peer"] == f"127.0.0.1:{local}"
    assert e["seconds"] == 0.3
    assert not events.since(mark, "janustls.handshake.failed", "SLOW")
    # A client that does its handshake in time is served.
    with connect(port, pki) as s:
        assert s.recv(3) == b"ok\n"


# -- curl --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tls_args,version", [([], None), (["--tlsv1.2", "--tls-max", "1.2"], "TLSv1.2"), (["--tlsv1.3"], "TLSv1.3")]
)
def test_curl_with_client_certificate(server, pki, tls_args, version):
    """curl with a client certificate against a srvsock port answering HTTP: the CN comes back."""
    port = server.port("WHOAMI")
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(pki.files["root.ca"]),
         "--cert", str(pki.cert("alice")), "--key", str(pki.key("alice")), *tls_args,
         f"https://localhost:{port}/"],
        capture_output=True, timeout=15,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[:2] == ["hello alice", "levels 3"]
    if version:
        assert lines[2] == version


def test_curl_without_certificate_refused(server, pki, events):
    """curl without a certificate on a require port: an error for curl, a no_certificate event for us."""
    port = server.port("WHOAMI")
    mark = events.mark()
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(pki.files["root.ca"]), f"https://localhost:{port}/"],
        capture_output=True,
        timeout=15,
    )
    assert r.returncode != 0
    assert b"hello" not in r.stdout
    assert events.wait_for(mark, "janustls.refused", "WHOAMI")["reason"] == "no_certificate"
