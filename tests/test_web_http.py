"""The HTTP/1.1 layer of web ports (llhttp through httptools): request smuggling and malformed
requests answered 400 (431 for an oversized header section) at once and closed, the next
connection served; pipelining in order; what RFC 9112 lets a server tolerate.  Raw requests
over real TLS."""

from __future__ import annotations

import time
from typing import Any

import pytest

from janustls.core.config import load_definitions
from tests.support import Server, client_context, tls_connect

VIEWS = """
def show(request):
    return "path=" + request.path.decode("latin-1")

def size(request):
    return "size=%d" % len(request.content.read())
"""


@pytest.fixture(scope="module")
def web(pki: Any, reactor: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    procs = tmp_path_factory.mktemp("procs")
    (procs / "views.py").write_text(VIEWS)
    ini = procs / "ports.ini"
    ini.write_text(f"""
[janustls]
procs = .
[port:WEB]
type = webserv
listen = tcp:0:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
client_cert = none
header_timeout = 30
body_timeout = 30
keepalive_timeout = 30
max_header_bytes = 8192
[web:WEB]
ON /app/* = call views:show
ON POST /upload = call views:size
""")
    s = Server(load_definitions(ini))
    yield s
    s.stop()


def exchange(port: int, pki: Any, data: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes: (everything read, seconds it took)."""
    start = time.monotonic()
    with tls_connect(port, client_context(pki, tls="1.3"), timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out, time.monotonic() - start


def served(web: Server, pki: Any) -> None:
    out, _ = exchange(web.port("WEB"), pki, b"GET /app/next HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"path=/app/next"), out


H = b"POST /upload HTTP/1.1\r\nHost: localhost\r\n"
G = b"GET /app/x HTTP/1.1\r\nHost: localhost\r\n"

MALFORMED = {
    "content-length and transfer-encoding": H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding and content-length": H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "two content-lengths": H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "two equal content-lengths": H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "content-length with a sign": H + b"Content-Length: +5\r\n\r\nhello",
    "negative content-length": H + b"Content-Length: -1\r\n\r\n",
    "content-length list": H + b"Content-Length: 5, 5\r\n\r\nhello",
    "transfer-encoding not ending in chunked": H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "transfer-encoding gzip": H + b"Transfer-Encoding: gzip\r\n\r\nhello",
    "transfer-encoding twice": H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk extension with a control": H + b"Transfer-Encoding: chunked\r\n\r\n5;\x00\r\nhello\r\n0\r\n\r\n",
    "obs-fold": G + b"X-A: b\r\n c\r\n\r\n",
    "space before the colon": G + b"X-A : b\r\n\r\n",
    "space in a header name": G + b"X A: b\r\n\r\n",
    "control in a header name": G + b"X\x01A: b\r\n\r\n",
    "NUL in a header value": G + b"X-A: b\x00c\r\n\r\n",
    "bare CR in a header value": G + b"X-A: b\rc\r\n\r\n",
    "header without a colon": G + b"X-A b\r\n\r\n",
    "HTTP/0.9": b"GET /app/x\r\n\r\n",
    "HTTP/2.0 request line": b"GET /app/x HTTP/2.0\r\nHost: localhost\r\n\r\n",
    "garbage": b"\x16\x03\x01\x00\xa5hello\r\n\r\n",
    "bare LF request line": b"GET /app/x HTTP/1.0\n\n",
    "bare LF header": b"GET /app/x HTTP/1.1\r\nHost: localhost\n\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_answered_400_at_once_and_closed(web: Server, pki: Any, events: Any, name: str) -> None:
    mark = events.mark()
    out, took = exchange(web.port("WEB"), pki, MALFORMED[name])
    assert out.startswith(b"HTTP/1.1 400 "), (name, out[:200])
    assert b"connection: close" in out.lower()
    assert out.count(b"HTTP/1.1 ") == 1, out  # nothing of the request was served
    assert took < 5.0  # answered at once, not left waiting for the 30 s timeouts
    events.wait_for(mark, "janustls.web.bad_request", "WEB")
    served(web, pki)


def test_oversized_header_section_answered_431_and_closed(web: Server, pki: Any, events: Any) -> None:
    mark = events.mark()
    out, took = exchange(
        web.port("WEB"), pki, G + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(100)) + b"\r\n"
    )
    assert out.startswith(b"HTTP/1.1 431 ") and b"connection: close" in out.lower() and took < 5.0
    events.wait_for(mark, "janustls.web.headers_too_large", "WEB")
    out, took = exchange(web.port("WEB"), pki, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ") and took < 5.0
    served(web, pki)


def test_header_section_just_under_the_limit_served(web: Server, pki: Any) -> None:
    out, _ = exchange(web.port("WEB"), pki, G + b"X-Fill: " + b"v" * 7000 + b"\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"path=/app/x")


def test_pipelined_requests_answered_in_order(web: Server, pki: Any) -> None:
    requests = b"".join(b"GET /app/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i for i in range(20))
    out, _ = exchange(
        web.port("WEB"),
        pki,
        requests + b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in out.split(b"HTTP/1.1 200 OK\r\n")[1:]]
    assert [b.split(b"HTTP")[0] for b in bodies] == [b"path=/app/%d" % i for i in range(20)] + [b"size=3"]


def test_malformed_request_after_good_ones_answers_them_first(web: Server, pki: Any) -> None:
    out, _ = exchange(web.port("WEB"), pki, G + b"\r\n" + G + b"\r\n" + MALFORMED["obs-fold"])
    assert out.count(b"HTTP/1.1 200 OK") == 2 and out.count(b"path=/app/x") == 2
    assert out.rindex(b"HTTP/1.1 400 ") > out.rindex(b"path=/app/x")


def test_split_request_and_chunked_body_reassembled(web: Server, pki: Any) -> None:
    with tls_connect(web.port("WEB"), client_context(pki, tls="1.3")) as s:
        for piece in (
            b"PO",
            b"ST /upload HTTP/1.1\r\nHo",
            b"st: localhost\r\nTransfer-Encoding: chunked\r\n",
            b"\r\n3\r\nab",
            b"c\r\n2\r\nde\r\n0\r\n\r\n",
        ):
            s.sendall(piece)
            time.sleep(0.05)
        s.settimeout(5)
        out = b""
        while not out.endswith(b"size=5"):
            chunk = s.recv(65536)
            assert chunk, out
            out += chunk
    assert out.startswith(b"HTTP/1.1 200")


def test_expect_100_continue(web: Server, pki: Any) -> None:
    with tls_connect(web.port("WEB"), client_context(pki, tls="1.3")) as s:
        s.sendall(H + b"Content-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        s.settimeout(5)
        assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"data")
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"size=4")


def test_http10_is_answered_and_closed(web: Server, pki: Any) -> None:
    out, took = exchange(web.port("WEB"), pki, b"GET /app/x HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.0 200") and out.endswith(b"path=/app/x") and took < 5.0


def test_upgrade_on_a_plain_rule_answered_as_http_and_closed(web: Server, pki: Any) -> None:
    out, took = exchange(
        web.port("WEB"), pki, G + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /app/smuggled HTTP/1.1\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 200") and b"smuggled" not in out and took < 5.0
