"""The lean HTTP/1.1 response path of web ports: fixed responses (page, redirect, status pages,
exception pages) and `call` results leave as one write with their headers (Server, Date,
Content-Type, Content-Length, what the handler set), HEAD carries no body, Connection: close
and HTTP/1.0 close, pipelined requests of mixed kinds are answered in order, and each small
response is one TLS record.  Raw requests over real TLS."""

from __future__ import annotations

import time
from typing import Any

import pytest

from janustls.core.config import load_definitions
from tests.support import Server, client_context, in_reactor, tls_connect
from tests.test_web_records import APPLICATION_DATA, RecordClient

VIEWS = """
def who(request):
    return "cn=" + (request.cert_info("CN") or "")

def nothing(request):
    return None

def custom(request):
    request.setResponseCode(201)
    request.setHeader(b"x-custom", b"yes")
    request.setHeader("X-Text", "text")
    request.addCookie(b"k", b"v", path=b"/")
    return b"made"

def echo_headers(request):
    return "|".join([request.getHeader("x-one") or "", request.getHeader(b"x-two").decode(), request.getHeader("absent") or "none",
                     b",".join(request.requestHeaders.getRawHeaders(b"x-one") or []).decode(), request.received_cookies.get(b"c", b"").decode()])

def stream(request):
    request.write(b"part1,")
    request.write(b"part2")
    request.finish()
    from twisted.web.server import NOT_DONE_YET
    return NOT_DONE_YET

def boom(request):
    raise ValueError("boom")

def partial(request):
    request.write(b"first,")
    return b"second"
"""
PAGE = b"a page of text\n"


@pytest.fixture(scope="module")
def web(pki: Any, reactor: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    procs = tmp_path_factory.mktemp("procs")
    (procs / "views.py").write_text(VIEWS)
    (procs / "page.txt").write_bytes(PAGE)
    ini = procs / "ports.ini"
    ini.write_text(f"""
[janustls]
procs = .
[port:WEB]
type = webserv
listen = tcp:0:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
client_cert = require
addca = {pki.files["root.ca"]}
keepalive_timeout = 300
[web:WEB]
ON /call = call views:who
ON /none = call views:nothing
ON /custom = call views:custom
ON /echo = call views:echo_headers
ON /stream = call views:stream
ON /boom = call views:boom
ON /partial = call views:partial
ON /page.txt = page page.txt
ON /go = redirect /page.txt
ON /secret = call views:who allow='cn:nobody-has-this'
""")
    s = Server(load_definitions(ini))
    yield s
    s.stop()


def read_response(s: Any, buf: bytearray, head_request: bool = False) -> tuple[bytes, dict[bytes, list[bytes]], bytes]:
    """One response (Content-Length framed): (status line, headers by lower-case name, body)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed before a whole head: {bytes(buf)!r}"
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    status, *lines = bytes(buf[:end]).split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    assert b"transfer-encoding" not in headers, (status, headers)
    length = 0 if head_request else int(headers.get(b"content-length", [b"0"])[0])
    del buf[: end + 4]
    while len(buf) < length:
        chunk = s.recv(65536)
        assert chunk, "closed before the whole body"
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    return status, headers, body


def closed(s: Any) -> bool:
    try:
        return s.recv(1) == b""
    except OSError:
        return True


def request(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode()


EXPECTED = {
    "/call": (b"HTTP/1.1 200 OK", b"text/html; charset=utf-8", b"cn=alice"),
    "/none": (b"HTTP/1.1 200 OK", None, b""),
    "/page.txt": (b"HTTP/1.1 200 OK", b"text/plain; charset=utf-8", PAGE),
    "/go": (b"HTTP/1.1 302 Found", b"text/html; charset=utf-8", None),
    "/nothing": (b"HTTP/1.1 404 Not Found", b"text/html; charset=utf-8", None),
    "/secret": (b"HTTP/1.1 403 Forbidden", b"text/html; charset=utf-8", None),
    "/boom": (b"HTTP/1.1 500 Internal Server Error", b"text/html; charset=utf-8", None),
}


@pytest.mark.parametrize("path", list(EXPECTED))
def test_response_headers_on_the_lean_path(web: Server, pki: Any, path: str) -> None:
    status, ctype, body = EXPECTED[path]
    with tls_connect(web.port("WEB"), client_context(pki, "alice", tls="1.3")) as s:
        buf = bytearray()
        for _ in range(2):  # the first and a keep-alive one
            s.sendall(request(path))
            got_status, headers, got_body = read_response(s, buf)
            assert got_status == status, (got_status, headers, got_body)
            assert headers[b"content-length"] == [b"%d" % len(got_body)]
            assert headers.get(b"content-type", [None]) == [ctype]
            assert len(headers[b"server"]) == 1 and len(headers[b"date"]) == 1 and headers[b"date"][0].endswith(b"GMT")
            if body is not None:
                assert got_body == body
        if path == "/go":
            assert headers[b"location"] == [b"/page.txt"]


def test_handler_set_status_headers_and_cookie(web: Server, pki: Any) -> None:
    with tls_connect(web.port("WEB"), client_context(pki, "alice", tls="1.3")) as s:
        s.sendall(request("/custom"))
        status, headers, body = read_response(s, bytearray())
    assert status == b"HTTP/1.1 201 Created" and body == b"made"
    assert headers[b"x-custom"] == [b"yes"] and headers[b"x-text"] == [b"text"]
    assert headers[b"set-cookie"] == [b"k=v; Path=/"]
    assert headers[b"content-type"] == [b"text/html"]  # twisted.web's default for bytes, as before


def test_request_headers_and_cookies_read_by_a_handler(web: Server, pki: Any, events: Any) -> None:
    with tls_connect(web.port("WEB"), client_context(pki, "alice", tls="1.3")) as s:
        s.sendall(request("/echo", extra="X-One: first\r\nx-two: second\r\nCookie: a=1; c=3\r\nX-ONE: last\r\n"))
        _, _, body = read_response(s, bytearray())
    assert body == b"last|second|none|first,last|3", [e.get("error") for e in events.events if "error" in str(e)][-1:]


def test_streamed_call_response_still_framed(web: Server, pki: Any) -> None:
    with tls_connect(web.port("WEB"), client_context(pki, "alice", tls="1.3")) as s:
        s.sendall(request("/stream") + request("/call"))
        data = b""
        while b"cn=alice" not in data:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"part1," in data and b"part2" in data
    assert data.count(b"HTTP/1.1 200 OK") == 2


@pytest.mark.parametrize("path", ["/page.txt", "/call", "/nothing", "/go"])
def test_head_answers_headers_without_body(web: Server, pki: Any, path: str) -> None:
    with tls_connect(web.port("WEB"), client_context(pki, "alice", tls="1.3")) as s:
        buf = bytearray()
        s.sendall(request(path, "GET"))
        _, get_headers, get_body = read_response(s, buf)
        s.sendall(request(path, "HEAD") + request("/call"))
        status, headers, body = read_response(s, buf, head_request=True)
        assert status == EXPECTED[path][0] and body == b""
        assert headers[b"content-length"] == [b"%d" % len(get_body)]
        assert headers.get(b"content-type") == get_headers.get(b"content-type")
        # nothing of a body was sent: the next response follows at once
        status, _, body = read_response(s, buf)
        assert status == b"HTTP/1.1 200 OK" and body == b"cn=alice"


def test_pipelined_mixed_responses_in_order(web: Server, pki: Any) -> None:
    order = ["/call", "/page.txt", "/go", "/nothing", "/none", "/secret", "/boom", "/call"]
    with tls_connect(web.port("WEB"), client_context(pki, "alice", tls="1.3")) as s:
        s.sendall(b"".join(request(p) for p in order))
        buf = bytearray()
        for path in order:
            status, _, body = read_response(s, buf)
            assert status == EXPECTED[path][0], (path, status)
            if EXPECTED[path][2] is not None:
                assert body == EXPECTED[path][2]
        assert not buf


@pytest.mark.parametrize("path", ["/call", "/page.txt", "/nothing"])
def test_connection_close_is_honoured(web: Server, pki: Any, path: str) -> None:
    with tls_connect(web.port("WEB"), client_context(pki, "alice", tls="1.3")) as s:
        s.sendall(request(path, extra="Connection: close\r\n") + request("/call"))
        status, headers, _ = read_response(s, bytearray())
        assert status == EXPECTED[path][0]
        assert headers[b"connection"] == [b"close"]
        assert closed(s)


def test_http10_answered_as_http10_and_closed(web: Server, pki: Any) -> None:
    with tls_connect(web.port("WEB"), client_context(pki, "alice", tls="1.3")) as s:
        s.sendall(b"GET /call HTTP/1.0\r\n\r\n")
        status, _, body = read_response(s, bytearray())
        assert status == b"HTTP/1.0 200 OK" and body == b"cn=alice"
        assert closed(s)


@pytest.mark.parametrize("path", ["/go", "/nothing", "/secret", "/none", "/boom"])
def test_fixed_response_is_one_record(web: Server, pki: Any, path: str) -> None:
    client = RecordClient(web.port("WEB"), client_context(pki, "alice", tls="1.3"))
    try:
        client.send(request("/call"))
        client.read_response()  # the session tickets arrive around the first answer
        client.send(request(path))
        before = len(client.records)
        response = client.read_response()
        records = client.records[before:]
        assert response.startswith(EXPECTED[path][0]), response
        assert records and all(kind == APPLICATION_DATA for kind, _ in records)
        assert len(records) == 1, f"{len(records)} records for one small response: {records}"
    finally:
        client.close()


def _site(web: Server) -> Any:
    factory = web.service.listening_port("WEB").factory
    return getattr(factory, "wrappedFactory", factory).site


def test_timed_channels_share_one_deadline_sweep_and_leave_it_when_closed(web: Server, pki: Any) -> None:
    """keepalive_timeout on every open connection is one port-wide sweep, not a timer each; a
    channel leaves it when its connection closes (or while a request is answered)."""
    socks = [tls_connect(web.port("WEB"), client_context(pki, "alice", tls="1.3")) for _ in range(5)]
    try:
        for s in socks:
            s.sendall(request("/call"))
            read_response(s, bytearray())
        deadlines = in_reactor(lambda: _site(web).deadlines)
        pending = in_reactor(lambda: len(deadlines.pending))
        assert pending >= 5
    finally:
        for s in socks:
            s.close()
    for _ in range(50):
        if in_reactor(lambda: len(deadlines.pending)) == 0:
            break
        time.sleep(0.05)
    assert in_reactor(lambda: len(deadlines.pending)) == 0


def test_handler_that_wrote_then_returned_gets_both_parts(web: Server, pki: Any) -> None:
    with tls_connect(web.port("WEB"), client_context(pki, "alice", tls="1.3")) as s:
        s.sendall(request("/partial", extra="Connection: close\r\n"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head
    assert body == b"6\r\nfirst,\r\n6\r\nsecond\r\n0\r\n\r\n"


@pytest.mark.parametrize("path", ["/call", "/none", "/page.txt", "/go", "/nothing", "/secret", "/boom", "/custom"])
def test_a_channel_without_the_one_write_path_answers_the_same(
    web: Server, pki: Any, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JanusRequest carried by a channel that does not speak HTTP/1.1 bytes itself (as an
    HTTP/2 channel would not) answers through twisted.web's writeHeaders and write: the same
    status, headers and body."""
    from janustls.ports.web.channel import JanusChannel

    def answer() -> tuple[bytes, dict[bytes, list[bytes]], bytes]:
        with tls_connect(web.port("WEB"), client_context(pki, "alice", tls="1.3")) as s:
            buf = bytearray()
            s.sendall(request(path))
            first = read_response(s, buf)
            s.sendall(request(path, "HEAD"))
            status, _, body = read_response(s, buf, head_request=True)
            assert status == first[0] and body == b""
            return first

    lean = answer()
    monkeypatch.setattr(JanusChannel, "http11_channel", False)
    other = answer()
    assert other[0] == lean[0] and other[2] == lean[2]
    for name in (b"content-type", b"content-length", b"location", b"set-cookie", b"x-custom", b"server"):
        assert other[1].get(name) == lean[1].get(name), name
    assert len(other[1][b"date"]) == 1
