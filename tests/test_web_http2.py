"""HTTP/2 on webserv ports (`http2 = yes`): each action over h2 with client certificates in TLS
1.2 and 1.3 (the `h2` library over Python ssl sockets, and curl --http2), a rule needing a
certificate the connection has not sent answered with HTTP_1_1_REQUIRED (and curl's retry over
HTTP/1.1 asked for it), and HTTP/2's floods each closing one connection while others are served."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame

from tests.support import client_context, start
from tests.test_web import make_procs, port_ini

H2VIEWS = """
def whoami(request):
    return "CN=%s proto=%s tls=%s" % (request.cert_info("CN"), request.clientproto.decode(), request.tls_version)

def size(request):
    return "size=%d" % len(request.content.read())

def big(request):
    return "x" * 300000

def cookies(request):
    return "cookie=%s a=%s c=%s" % (request.getHeader("cookie"), request.getCookie(b"a"), request.getCookie(b"c"))

def can_ask(request):
    return "can=%s why=%s" % request.can_request_certificate()
"""

CURL = shutil.which("curl")
PROTO_PAGE = """

def proto(request):
    return "<!DOCTYPE html><html><body><p id=cn>CN=%s</p><p id=proto>proto=%s</p></body></html>" % (
        html.escape(request.cert_info("CN") or "none"), request.clientproto.decode())
"""
SLOW = "http2 = yes\nbody_timeout = 1\nkeepalive_timeout = 2"
LIMITS = "http2 = yes\nh2_max_streams = 8\nh2_max_resets = 20\nh2_max_pings = 10\nh2_max_settings = 10\nmax_header_bytes = 4096"


class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802  # http.server's name
        body = f"backend path={self.path} cn={self.headers.get('X-SSL-Client-CN') or self.headers.get('ssl-client-cn')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def backend() -> Any:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture(scope="module")
def web(pki: Any, reactor: Any, tmp_path_factory: pytest.TempPathFactory, backend: int) -> Any:
    procs = make_procs(tmp_path_factory.mktemp("h2procs"))
    (procs / "h2views.py").write_text(H2VIEWS)
    rules = f"""
ON /who = call h2views:whoami
ON /hello = page pages/hello.html
ON /static/* = page pages/*
ON /old = redirect /hello status=301
ON /app/* = wsgi wsgiapp:app
ON /fwd/* = forward http://127.0.0.1:{backend}/*
ON /bob = call h2views:whoami allow=cn:bob
ON POST /small = call h2views:size max_body=100
ON POST /up = call h2views:size
ON /big = call h2views:big
ON /ask = call h2views:can_ask
ON /cookies = call h2views:cookies
ON FORBIDDEN = page pages/forbidden.html status=403
"""
    text = f"""
[janustls]
procs = {procs}
{port_ini(pki, "REQ", "require", extra="http2 = yes")}
[web:REQ]
{rules}
{port_ini(pki, "OPT", "none", extra="http2 = yes")}
[web:OPT]
ON /open = call h2views:whoami
ON /secure/* = call h2views:whoami client_cert=require
ON /team/* = call h2views:whoami client_cert=request allow=cn:alice
ON SSLNOCERTERR = page pages/nocert.html status=403
ON FORBIDDEN = page pages/forbidden.html status=403
{port_ini(pki, "OPT13", "none", tls_min="1.3", extra="http2 = yes")}
[web:OPT13]
ON /secure/* = call h2views:whoami client_cert=require
ON SSLNOCERTERR = page pages/nocert.html status=403
{port_ini(pki, "CERTERR", "request", extra="http2 = yes")}
[web:CERTERR]
ON /who = call h2views:whoami
ON SSLCERTERR = call views:certerr status=495
{port_ini(pki, "SLOW", "require", extra=SLOW)}
[web:SLOW]
ON /who = call h2views:whoami
ON POST /up = call h2views:size
{port_ini(pki, "PLAIN", "require")}
[web:PLAIN]
ON /who = call h2views:whoami
{port_ini(pki, "LIMITS", "require", extra=LIMITS)}
[web:LIMITS]
ON /who = call h2views:whoami
"""
    s = start(text, procs)
    yield s
    s.stop()


# -- an HTTP/2 client: the h2 library over a Python ssl socket ---------------------------------


class H2Client:
    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.alpn = self.sock.selected_alpn_protocol()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.responses: dict[int, dict[str, Any]] = {}
        self.goaway: int | None = None
        self.closed = False

    def send(self, method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [
            (":method", method),
            (":path", path),
            (":scheme", "https"),
            (":authority", "localhost"),
            *(headers or []),
        ]
        if body:
            fields.append(("content-length", str(len(body))))
        self.conn.send_headers(sid, fields, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.responses[sid] = {"headers": {}, "body": b"", "done": False, "reset": None}
        return sid

    def pump(self, until: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline and not self.closed:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLError, OSError):
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            for ev in self.conn.receive_data(data):
                r = self.responses.get(getattr(ev, "stream_id", 0) or 0)
                if isinstance(ev, h2.events.ResponseReceived) and r is not None:
                    r["headers"] = {bytes(k).decode(): bytes(v).decode() for k, v in ev.headers}
                elif isinstance(ev, h2.events.DataReceived):
                    if r is not None:
                        r["body"] += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and r is not None:
                    r["done"] = True
                elif isinstance(ev, h2.events.StreamReset) and r is not None:
                    r["reset"] = int(ev.error_code)
                    r["done"] = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.goaway = int(ev.error_code)
            out = self.conn.data_to_send()
            if out:
                try:
                    self.sock.sendall(out)
                except OSError:
                    self.closed = True

    def request(self, method: str, path: str, body: bytes = b"", **kw: Any) -> dict[str, Any]:
        sid = self.send(method, path, body, **kw)
        self.pump(lambda: self.responses[sid]["done"])
        return self.responses[sid]

    def close(self) -> None:
        self.sock.close()


def h2_client(web: Any, pki: Any, port: str, cert: str | None = "alice", tls: str | None = None) -> H2Client:
    return H2Client(web.port(port), client_context(pki, cert, tls=tls))


# -- each action -------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_every_action_over_h2_with_a_client_certificate(web: Any, pki: Any, tls: str) -> None:
    c = h2_client(web, pki, "REQ", tls=tls)
    try:
        assert c.alpn == "h2"
        who = c.request("GET", "/who")
        assert who["headers"][":status"] == "200"
        assert who["body"].decode() == f"CN=alice proto=HTTP/2 tls=TLSv{tls}"
        page = c.request("GET", "/hello")
        assert page["headers"][":status"] == "200" and b"hello page" in page["body"]
        redirect = c.request("GET", "/old")
        assert redirect["headers"][":status"] == "301" and redirect["headers"]["location"].endswith("/hello")
        wsgi = c.request("GET", "/app/x/y")
        assert wsgi["headers"][":status"] == "200", wsgi
        assert b"CN=alice" in wsgi["body"] or b"alice" in wsgi["body"], wsgi["body"]
        fwd = c.request("GET", "/fwd/there")
        assert fwd["headers"][":status"] == "200", fwd
        assert fwd["body"].startswith(b"backend path=/there"), fwd["body"]
        forbidden = c.request("GET", "/bob")
        assert forbidden["headers"][":status"] == "403" and b"forbidden page" in forbidden["body"]
        missing = c.request("GET", "/nothing")
        assert missing["headers"][":status"] == "404"
        posted = c.request("POST", "/up", b"y" * 5000)
        assert posted["body"] == b"size=5000"
        asked = c.request("GET", "/ask")
        assert asked["body"] == b"can=True why=already asked" or b"can=False" in asked["body"], asked
        cookies = c.request("GET", "/cookies", headers=[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")])
        assert cookies["body"] == b"cookie=a=1; b=2; c=3 a=b'1' c=b'3'"
        for name in ("connection", "transfer-encoding", "keep-alive"):
            assert name not in who["headers"]
    finally:
        c.close()


def test_paths_identity_headers_and_framing_over_h2_are_held_to_the_http11_rules(web: Any, pki: Any) -> None:
    """HTTP/2 is a second way in: the same path normal form, forged identity headers removed,
    and what HTTP/2 forbids in a request (connection-specific fields, upper-case names, a body
    that disagrees with its content-length) never reaches a handler."""
    c = h2_client(web, pki, "REQ")
    try:
        assert c.request("GET", "/static/hello.html")["headers"][":status"] == "200"
        for path in ("/static/../h2views.py", "/static/%2e%2e/h2views.py", "/static/..%2fh2views.py",
                     "/static/%2E%2E%2Fh2views.py", "/static/..\\h2views.py", "/static//../../h2views.py"):  # fmt: skip
            r = c.request("GET", path)
            assert r["headers"][":status"] in ("400", "404"), (path, r)
            assert b"def whoami" not in r["body"], path
        forged = [("x-ssl-client-cn", "mallory"), ("x_ssl_client_cn", "mallory"), ("ssl-client-cn", "mallory")]
        fwd = c.request("GET", "/fwd/there", headers=forged)
        assert fwd["headers"][":status"] == "200", fwd
        assert b"cn=alice" in fwd["body"] and b"mallory" not in fwd["body"], fwd["body"]
    finally:
        c.close()
    evil: list[tuple[list[tuple[str, str]], bytes]] = [
        ([("transfer-encoding", "chunked")], b""),
        ([("connection", "keep-alive")], b""),
        ([("X-Upper", "1")], b""),
        ([("content-length", "10")], b"hello"),
    ]
    for fields, body in evil:
        c = h2_client(web, pki, "REQ")
        try:
            c.conn.config.validate_outbound_headers = False
            c.conn.config.normalize_outbound_headers = False
            sid = c.conn.get_next_available_stream_id()
            head = [(":method", "POST" if body else "GET"), (":path", "/up" if body else "/who"), (":scheme", "https"),
                    (":authority", "localhost"), *fields]  # fmt: skip
            c.conn.send_headers(sid, head, end_stream=not body)
            if body:
                c.conn.send_data(sid, body, end_stream=True)
            c.sock.sendall(c.conn.data_to_send())
            c.responses[sid] = {"headers": {}, "body": b"", "done": False, "reset": None}
            c.pump(lambda c=c, sid=sid: c.responses[sid]["done"] or c.goaway is not None)
            r = c.responses[sid]
            assert r["headers"].get(":status") != "200" and b"size=" not in r["body"], (fields, r, c.goaway)
            assert r["reset"] is not None or c.goaway is not None or c.closed, (fields, r)
        finally:
            c.close()
        good = h2_client(web, pki, "REQ")  # and the port goes on serving
        try:
            assert good.request("GET", "/who")["body"].startswith(b"CN=alice"), fields
        finally:
            good.close()


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_sslcerterr_rule_answers_a_refused_certificate_on_every_stream(web: Any, pki: Any, tls: str) -> None:
    c = h2_client(web, pki, "CERTERR", cert="expired", tls=tls)
    try:
        assert c.alpn == "h2"
        for _ in range(2):
            r = c.request("GET", "/who")
            assert r["headers"][":status"] == "495" and r["body"] == b"certerr: expired", r
    finally:
        c.close()


def test_body_timeout_answers_its_stream_and_keepalive_timeout_closes_an_idle_connection(
    web: Any, pki: Any, events: Any
) -> None:
    mark = events.mark()
    c = h2_client(web, pki, "SLOW")
    try:
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(":method", "POST"), (":path", "/up"), (":scheme", "https"), (":authority", "x")])
        c.conn.send_data(sid, b"part")
        c.sock.sendall(c.conn.data_to_send())
        c.responses[sid] = {"headers": {}, "body": b"", "done": False, "reset": None}
        started = time.monotonic()
        c.pump(lambda: c.responses[sid]["done"], timeout=10)
        assert c.responses[sid]["headers"][":status"] == "408"
        assert 0.8 < time.monotonic() - started < 5
        events.wait_for(mark, "janustls.web.body_timeout", port="SLOW")
        assert c.request("GET", "/who")["body"].startswith(b"CN=alice")  # the connection goes on
        started = time.monotonic()
        c.pump(lambda: c.goaway is not None, timeout=10)
        assert c.goaway == 0 and 1.5 < time.monotonic() - started < 6
        events.wait_for(mark, "janustls.web.keepalive_timeout", port="SLOW")
    finally:
        c.close()


def test_many_concurrent_streams_and_flow_control(web: Any, pki: Any) -> None:
    """20 streams at once, two of 300 kB responses past the 64 KiB default window: all complete."""
    c = h2_client(web, pki, "REQ")
    try:
        sids = [c.send("GET", "/big" if i % 10 == 0 else "/who") for i in range(20)]
        c.pump(lambda: all(c.responses[s]["done"] for s in sids), timeout=20)
        for i, s in enumerate(sids):
            r = c.responses[s]
            assert r["headers"][":status"] == "200"
            assert len(r["body"]) == (300000 if i % 10 == 0 else len(b"CN=alice proto=HTTP/2 tls=TLSv1.3"))
    finally:
        c.close()


def test_a_stream_the_client_does_not_read_holds_up_no_other(web: Any, pki: Any) -> None:
    """Per-stream flow control: /big fills its stream's window (the client opens only the
    connection's), /who on another stream is answered meanwhile; /big ends once its window opens."""
    c = h2_client(web, pki, "REQ")
    try:
        big = c.send("GET", "/big")
        got: list[int] = []

        def stalled() -> bool:
            for ev in c.conn.receive_data(c.sock.recv(65536)):
                if isinstance(ev, h2.events.DataReceived) and ev.stream_id == big:
                    got.append(len(ev.data))
                    c.conn.increment_flow_control_window(ev.flow_controlled_length)  # the connection's only
            c.sock.sendall(c.conn.data_to_send())
            return sum(got) >= 65535

        deadline = time.monotonic() + 10
        while not stalled() and time.monotonic() < deadline:
            pass
        assert sum(got) == 65535  # the stream's whole initial window, not a byte more
        who = c.request("GET", "/who")
        assert who["body"].startswith(b"CN=alice proto=HTTP/2")
        assert c.responses[big]["body"] == b""  # /big's DATA went to `got`, and no more came
        c.conn.acknowledge_received_data(sum(got), big)  # open /big's window
        c.sock.sendall(c.conn.data_to_send())
        c.responses[big]["body"] = b"x" * sum(got)
        c.pump(lambda: c.responses[big]["done"], timeout=10)
        assert len(c.responses[big]["body"]) == 300000
    finally:
        c.close()


def test_body_over_the_rules_max_body_is_413_on_its_stream_only(web: Any, pki: Any, events: Any) -> None:
    mark = events.mark()
    c = h2_client(web, pki, "REQ")
    try:
        big = c.request("POST", "/small", b"z" * 500)
        assert big["headers"][":status"] == "413"
        events.wait_for(mark, "janustls.web.body_too_large", port="REQ")
        assert c.request("POST", "/small", b"z" * 50)["body"] == b"size=50"  # the connection goes on
    finally:
        c.close()


def test_http2_is_off_unless_asked(web: Any, pki: Any) -> None:
    c = h2_client(web, pki, "PLAIN")
    try:
        assert c.alpn is None  # no ALPN answer: HTTP/1.1, as before
    finally:
        c.close()
    ctx = client_context(pki, "alice")
    ctx.set_alpn_protocols(["http/1.1"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", web.port("REQ"))), server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        s.sendall(b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"CN=alice proto=HTTP/1.1 tls=TLSv1.3")


# -- curl ----------------------------------------------------------------------------------------


def curl(pki: Any, url: str, *args: str, cert: str | None = "alice") -> subprocess.CompletedProcess[str]:
    cmd = [
        CURL or "curl",
        "-sS",
        "--http2",
        "--cacert",
        str(pki.files["root.ca"]),
        "-w",
        "\n%{http_version} %{http_code}",
        "--max-time",
        "20",
    ]
    if cert is not None:
        cmd += ["--cert", str(pki.cert(cert)), "--key", str(pki.key(cert))]
    return subprocess.run([*cmd, *args, url], capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(CURL is None, reason="needs curl")
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_curl_http2_with_a_client_certificate(web: Any, pki: Any, tls: str) -> None:
    out = curl(
        pki,
        f"https://localhost:{web.port('REQ')}/who",
        f"--tlsv{tls}",
        "--tls-max",
        tls,
        "--resolve",
        f"localhost:{web.port('REQ')}:127.0.0.1",
    )
    assert out.stdout == f"CN=alice proto=HTTP/2 tls=TLSv{tls}\n2 200", out.stderr


@pytest.mark.skipif(CURL is None, reason="needs curl")
def test_curl_uploads_a_body_past_every_window(web: Any, pki: Any, tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"u" * 3_000_000)  # past the stream's window (256 KiB) and the connection's (1 MiB)
    port = web.port("REQ")
    out = curl(
        pki, f"https://localhost:{port}/up", "--data-binary", f"@{body}", "--resolve", f"localhost:{port}:127.0.0.1"
    )
    assert out.stdout == "size=3000000\n2 200", out.stderr[-2000:]


@pytest.mark.skipif(CURL is None, reason="needs curl")
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_curl_gets_http_1_1_required_then_its_retry_is_asked_for_the_certificate(
    web: Any, pki: Any, events: Any, tls: str
) -> None:
    port = web.port("OPT")
    mark = events.mark()
    out = curl(pki, f"https://localhost:{port}/secure/x", "-v", f"--tlsv{tls}", "--tls-max", tls,
               "--resolve", f"localhost:{port}:127.0.0.1")  # fmt: skip
    assert out.stdout == f"CN=alice proto=HTTP/1.1 tls=TLSv{tls}\n1.1 200", out.stderr[-3000:]
    assert "HTTP_1_1_REQUIRED" in out.stderr or "HTTP/1.1" in out.stderr
    required = events.wait_for(mark, "janustls.web.h2_http11_required", port="OPT")
    assert required["path"] == "/secure/x"
    # an open path on the same port stays on HTTP/2
    open_ = curl(pki, f"https://localhost:{port}/open", "--resolve", f"localhost:{port}:127.0.0.1")
    assert open_.stdout.startswith("CN=None proto=HTTP/2") and open_.stdout.endswith("\n2 200")


@pytest.mark.skipif(CURL is None, reason="needs curl")
def test_an_identity_rule_needing_a_certificate_judges_it_on_the_http11_retry(web: Any, pki: Any) -> None:
    port = web.port("OPT")
    where = ["--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}/team/x"]
    alice = curl(pki, where[-1], *where[:-1])
    assert alice.stdout == "CN=alice proto=HTTP/1.1 tls=TLSv1.3\n1.1 200", alice.stderr[-2000:]
    bob = curl(pki, where[-1], *where[:-1], cert="bob")
    assert bob.stdout.endswith("\n1.1 403") and "forbidden page" in bob.stdout, bob.stderr[-2000:]
    nobody = curl(pki, where[-1], *where[:-1], cert=None)
    assert nobody.stdout.endswith("\n1.1 403") and "forbidden page" in nobody.stdout, nobody.stderr[-2000:]


def test_h2_client_sees_the_stream_reset_with_http_1_1_required(web: Any, pki: Any) -> None:
    c = h2_client(web, pki, "OPT", tls="1.2")
    try:
        r = c.request("GET", "/secure/x")
        assert r["reset"] == 0xD
        assert c.request("GET", "/open")["body"] == b"CN=None proto=HTTP/2 tls=TLSv1.2"  # the connection goes on
    finally:
        c.close()


def test_when_http11_could_not_ask_either_the_rules_own_answer_comes_over_h2(web: Any, pki: Any) -> None:
    """TLS 1.3 without post-handshake auth offered (Python's default): no retry would help, so
    the SSLNOCERTERR page is the answer on the stream itself."""
    c = h2_client(web, pki, "OPT13", tls="1.3")
    try:
        r = c.request("GET", "/secure/x")
        assert r["reset"] is None and r["headers"][":status"] == "403" and b"no certificate page" in r["body"]
    finally:
        c.close()


# -- floods and limits ---------------------------------------------------------------------------


def served(web: Any, pki: Any) -> None:
    c = h2_client(web, pki, "LIMITS")
    try:
        assert c.request("GET", "/who")["body"].startswith(b"CN=alice proto=HTTP/2")
    finally:
        c.close()


def flooded(web: Any, pki: Any, events: Any, kind: str, attack: Any) -> None:
    mark = events.mark()
    c = h2_client(web, pki, "LIMITS")
    try:
        attack(c)
        c.pump(lambda: c.goaway is not None, timeout=10)
        c.pump(lambda: False, timeout=2)  # the server closes
        assert c.closed, "the connection stayed open"
        assert c.goaway is not None
    finally:
        c.close()
    found = events.wait_for(mark, "janustls.web.h2_limit", port="LIMITS")
    assert found["kind"] == kind
    served(web, pki)


def test_rapid_reset_flood(web: Any, pki: Any, events: Any) -> None:
    def attack(c: H2Client) -> None:
        for _ in range(40):
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(sid, [(":method", "GET"), (":path", "/who"), (":scheme", "https"), (":authority", "x")])
            c.conn.reset_stream(sid)
        c.sock.sendall(c.conn.data_to_send())

    flooded(web, pki, events, "resets", attack)


def test_ping_flood(web: Any, pki: Any, events: Any) -> None:
    def attack(c: H2Client) -> None:
        for i in range(30):
            c.conn.ping(b"%08d" % i)
        c.sock.sendall(c.conn.data_to_send())

    flooded(web, pki, events, "pings", attack)


def test_settings_flood(web: Any, pki: Any, events: Any) -> None:
    def attack(c: H2Client) -> None:
        for i in range(30):
            c.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100 + i})
        c.sock.sendall(c.conn.data_to_send())

    flooded(web, pki, events, "settings", attack)


def test_continuation_flood(web: Any, pki: Any, events: Any) -> None:
    def attack(c: H2Client) -> None:
        block = c.conn.encoder.encode(
            [(":method", "GET"), (":path", "/who"), (":scheme", "https"), (":authority", "x")]
        )
        head = HeadersFrame(1)
        head.data = block
        frames = [head.serialize()]
        for i in range(100):
            cont = ContinuationFrame(1)
            cont.data = c.conn.encoder.encode([(f"x-a{i}", "b")])
            frames.append(cont.serialize())
        c.sock.sendall(b"".join(frames))

    flooded(web, pki, events, "continuation", attack)


def test_too_many_concurrent_streams(web: Any, pki: Any, events: Any) -> None:
    def attack(c: H2Client) -> None:
        frames = []
        for i in range(12):  # raw frames: the h2 client itself keeps to the server's limit of 8
            head = HeadersFrame(1 + 2 * i)
            head.flags.add("END_HEADERS")
            head.data = c.conn.encoder.encode(
                [(":method", "POST"), (":path", "/who"), (":scheme", "https"), (":authority", "x")]
            )
            frames.append(head.serialize())
        c.sock.sendall(b"".join(frames))

    flooded(web, pki, events, "streams", attack)


def test_header_list_over_the_limit(web: Any, pki: Any, events: Any) -> None:
    def attack(c: H2Client) -> None:
        c.send("GET", "/who", headers=[("x-big", "v" * 6000)])

    flooded(web, pki, events, "header_list", attack)


def test_config_and_check_know_the_keys(pki: Any, tmp_path: Path) -> None:
    from janustls.core.config import parse_partially

    bad = "http2 = perhaps\nh2_window = 10"
    text = f"[janustls]\nprocs = {tmp_path}\n{port_ini(pki, 'W', 'none', extra=bad)}"
    _, errors = parse_partially(text, "t.ini", tmp_path)
    messages = " ".join(str(e) for e in errors)
    assert "http2" in messages and "h2_window" in messages
    srv = f"[janustls]\nprocs = {tmp_path}\n[port:S]\ntype = srvsock\nlisten = tcp:0\ncertificate = {pki.files['server.pem']}\nprivate_key = {pki.files['server.key']}\nhandler = h:serve\nhttp2 = yes\n"
    _, errors = parse_partially(srv, "t.ini", tmp_path)
    assert any("http2" in str(e) for e in errors)


# -- ASGI: a stream as an http scope, with the TLS extension -------------------------------------

ASGI_APP = """
import json

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    ext = scope["extensions"]
    doc = {"http_version": scope["http_version"], "method": scope["method"], "path": scope["path"],
           "body": len(body), "tls_version": ext["tls"]["tls_version"], "chain": len(ext["tls"]["client_cert_chain"]),
           "cn": ext["janustls"]["cert_info"].get("CN"), "host": dict(scope["headers"]).get(b"host", b"").decode()}
    data = json.dumps(doc).encode() + b"\\n" + b"a" * 200000
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    for i in range(0, len(data), 50000):
        await send({"type": "http.response.body", "body": data[i:i + 50000], "more_body": True})
    await send({"type": "http.response.body", "body": b""})
"""


def test_asgi_stream_is_an_http_scope_with_the_tls_extension(pki: Any, tmp_path: Path) -> None:
    import json

    from tests.support import Twistd, free_port

    (tmp_path / "apps.py").write_text(ASGI_APP)
    port = free_port()
    ini = tmp_path / "ports.ini"
    ini.write_text(
        f"[janustls]\nprocs = .\n{port_ini(pki, 'API', 'require', listen=f'tcp:{port}:interface=127.0.0.1', extra='http2 = yes')}\n[web:API]\nON /* = asgi apps:app\n"
    )
    t = Twistd(
        ["-n", "--pidfile", "", "--logfile", "-", "janustls", "--port-def", str(ini), "--log-format", "json"], tmp_path
    )
    try:
        t.wait_for("janustls.port.listening", timeout=30)
        for tls in ("1.2", "1.3"):
            c = H2Client(port, client_context(pki, "alice", tls=tls))
            try:
                sids = [c.send("POST", f"/scope/{i}", b"q" * 1000) for i in range(5)]
                c.pump(lambda c=c, sids=sids: all(c.responses[s]["done"] for s in sids), timeout=20)
                for i, s in enumerate(sids):
                    r = c.responses[s]
                    assert r["headers"][":status"] == "200", r
                    head, _, rest = r["body"].partition(b"\n")
                    doc = json.loads(head)
                    assert doc == {"http_version": "2", "method": "POST", "path": f"/scope/{i}", "body": 1000,
                                   "tls_version": 0x303 if tls == "1.2" else 0x304, "chain": 3, "cn": "alice",
                                   "host": "localhost"}  # fmt: skip
                    assert len(rest) == 200000
            finally:
                c.close()
    finally:
        t.stop()


# -- headless Chromium: HTTP_1_1_REQUIRED, then the certificate over HTTP/1.1 ---------------------


@pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("certutil") is None or shutil.which("pk12util") is None,
    reason="needs chromium and libnss3-tools (../shared/BROWSER.md)",
)
def test_chromium_retries_over_http11_and_ends_on_the_page_with_the_cn(
    pki: Any, reactor: Any, tmp_path: Path, events: Any
) -> None:
    from tests.test_web import free_port
    from tests.test_web_browser import PAGE, Browser

    (tmp_path / "procs").mkdir()
    procs = make_procs(tmp_path / "procs")
    (procs / "page.py").write_text(PAGE + PROTO_PAGE)
    port, strict = free_port(), free_port()
    text = f"""
[janustls]
procs = {procs}
{port_ini(pki, "CHR", "none", tls_max="1.2", listen=f"tcp:{port}:interface=127.0.0.1", extra="http2 = yes")}
[web:CHR]
ON /open = call page:whoami
ON /need = call page:proto client_cert=require
ON SSLNOCERTERR = page pages/nocert.html status=403
{port_ini(pki, "CHRREQ", "require", listen=f"tcp:{strict}:interface=127.0.0.1", extra="http2 = yes")}
[web:CHRREQ]
ON /who = call page:proto
"""
    s = start(text, procs)
    try:
        origin, origin_req = f"https://127.0.0.1:{port}", f"https://127.0.0.1:{strict}"
        mark = events.mark()
        browser = Browser(tmp_path / "b", pki, "alice", [origin, origin_req])
        dom, err = browser.dom(origin + "/need")
        assert "CN=alice" in dom and "proto=HTTP/1.1" in dom, err[-3000:]
        events.wait_for(mark, "janustls.web.h2_http11_required", port="CHR")
        # a port that asks at the handshake: every path over HTTP/2, no retry
        dom, err = browser.dom(origin_req + "/who")
        assert "CN=alice" in dom and "proto=HTTP/2" in dom, err[-3000:]
        assert not events.since(mark, "janustls.web.h2_http11_required", port="CHRREQ")
    finally:
        s.stop()


def test_check_says_which_http_versions_a_web_port_speaks(pki: Any, tmp_path: Path) -> None:
    import io

    from janustls.cli import describe

    procs = make_procs(tmp_path)
    (procs / "h2views.py").write_text(H2VIEWS)
    ini = procs / "ports.ini"
    ini.write_text(f"""[janustls]
procs = {procs}
{port_ini(pki, "ONE", "none", extra="http2 = yes")}
[web:ONE]
ON /secure/* = call h2views:whoami client_cert=require
ON /* = call h2views:whoami
{port_ini(pki, "TWO", "none")}
[web:TWO]
ON /* = call h2views:whoami
""")
    out = io.StringIO()
    assert describe(str(ini), out) == 0
    text = out.getvalue()
    assert (
        "HTTP/1.1 and HTTP/2 (ALPN h2; h2_max_streams 100, h2_window 262144); 1 rule(s) asking for a certificate per path answer HTTP/2 with HTTP_1_1_REQUIRED"
        in text
    )
    assert "HTTP/1.1 (http2 = no)" in text
