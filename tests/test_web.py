"""webserv ports end to end: every rule type, precedence, exception rules, identity rules, per-path
certificates, WSGI with mod_ssl's variables; Python's http.client and curl as clients."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from janustls.core.config import parse_definitions
from janustls.errors import ConfigErrors
from janustls.ops.build import build_ports
from tests.support import client_context, in_reactor, start, talk

VIEWS = """
import json
from twisted.internet import defer, reactor
from twisted.web.resource import Resource

PROTOCOL_ERRORS = []

def whoami(request):
    return "cn=%s levels=%d version=%s" % (request.cert_info("CN"), request.cert_levels(), request.tls_version)

def as_json(request):
    return {"cn": request.cert_info("CN"), "ou": request.cert_values("OU"), "fp": request.cert_info("FINGERPRINT")}

def later(request):
    d = defer.Deferred()
    reactor.callLater(0.01, d.callback, b"later " + (request.cert_info("CN") or "none").encode())
    return d

async def coro(request):
    await defer.succeed(None)
    return "async " + str(request.cert_info("CN"))

def boom(request):
    raise RuntimeError("the handler failed on purpose")

def echo(request):
    body = request.content.read()
    return "cn=%s body=%d %s" % (request.cert_info("CN"), len(body), body[:20].decode())

def parts(request):
    return "parts=" + "|".join(request.rule_parts)

def wild(request):
    return "wild"

def exact(request):
    return "exact"

def post_only(request):
    return "post"

class Hello(Resource):
    isLeaf = True
    def render_GET(self, request):
        return b"resource " + b"/".join(request.postpath)

resource = Hello()

def forbidden(request):
    request.setHeader("content-type", "text/plain")
    return "forbidden: %s by %s" % (request.refusal.reason.value, request.refusal.detail)

def certerr(request):
    if request.wants_json():
        return {"exception": request.exception.value, "reason": request.refusal.reason.value}
    return "certerr: %s" % request.refusal.reason.value

def protocol_hook(info):
    PROTOCOL_ERRORS.append(info)

async def ask(request):
    can, why = request.can_request_certificate()
    cert = await request.request_certificate()
    return "can=%s asked=%s (%s)" % (can, request.cert_info("CN"), why)

def protocol_errors(request):
    return "\\n".join(e.detail for e in PROTOCOL_ERRORS)
"""

PREDS = """
def is_bob(conn):
    return conn.cert_info("CN") == "bob"
"""

WSGIAPP = """
import json

def app(environ, start_response):
    keys = {k: v for k, v in environ.items() if k.startswith("SSL_") or k in ("HTTPS", "SCRIPT_NAME", "PATH_INFO")}
    body = json.dumps(keys).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_ini(pki, name, client_cert="none", extra="", tls_min="1.2", tls_max="1.3", listen="tcp:0:interface=127.0.0.1"):
    return f"""
[port:{name}]
type = webserv
listen = {listen}
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
client_cert = {client_cert}
addca = {pki.files["root.ca"]}
crl = {pki.files["inter.crl"]}
tls_min = {tls_min}
tls_max = {tls_max}
request_timeout = 2
{extra}
"""


def make_procs(d: Path) -> Path:
    (d / "views.py").write_text(VIEWS)
    (d / "preds.py").write_text(PREDS)
    (d / "wsgiapp.py").write_text(WSGIAPP)
    (d / "pages" / "docs").mkdir(parents=True, exist_ok=True)
    (d / "pages" / "hello.html").write_text("<h1>hello page</h1>\n")
    (d / "pages" / "nocert.html").write_text("<h1>no certificate page</h1>\n")
    (d / "pages" / "forbidden.html").write_text("<h1>forbidden page</h1>\n")
    (d / "pages" / "docs" / "intro.html").write_text("<p>intro doc</p>\n")
    (d / "pages" / "site.css").write_text("body { color: red }\n")
    return d


@pytest.fixture(scope="module")
def procs_dir(tmp_path_factory):
    return make_procs(tmp_path_factory.mktemp("webprocs"))


@pytest.fixture(scope="module")
def server(pki, reactor, procs_dir):
    fp = pki.issued["alice"].cert.fingerprint(hashes.SHA256()).hex()
    strict_fallback = free_port()
    text = f"""
[janustls]
procs = {procs_dir}
{port_ini(pki, "WEB", "request")}
[web:WEB]
ON /who = call views:whoami
ON /json = call views:as_json
ON /later = call views:later
ON /async = call views:coro
ON /boom = call views:boom
ON /res/* = call views:resource
ON /hello = page pages/hello.html
ON /docs/* = page pages/docs/*.html
ON /css = page pages/site.css
TYPE /styled = text/x-custom
ON /styled = page pages/hello.html
REDIRECT /old/* = https://example.org/new/*
ON /moved = redirect /hello status=301
ON /app/* = wsgi wsgiapp:app
ON /p/* = call views:wild
ON /p/exact = call views:exact
ON POST /p/* = call views:post_only
ON /split/*/and/* = call views:parts
ALLOW /admin/* = ou:ops
ON /admin/* = call views:whoami
ALLOW /admin/open/* = anyone
DISALLOW /private/* = cn:bob
ON /private/* = call views:whoami
DISALLOW /closed = anyone
ON /closed = call views:whoami
ON /vip = call views:whoami allow='cn:alice & ou:eng'
ON /pred = call views:whoami allow=call:preds:is_bob
ON /fp = call views:whoami allow=sha256:{fp}
ON /spiffe = call views:whoami allow=uri:spiffe://example.test/*
ON /dn = call views:whoami allow="dn:'^CN=alice,.*,O=Example Org$'"
ON /ip = call views:whoami allow=ip:127.0.0.0/8
ON /peer = call views:whoami allow=peer
ON /email = call views:whoami allow=email:*@example.test
ON /dns = call views:whoami allow=dns:*.example.test
ON /ou = call views:whoami allow=ou:eng
ON POST /form = call views:echo
ON /protoerrs = call views:protocol_errors
ON FORBIDDEN = call views:forbidden status=403
ON SSLPROTOCOLERR = call views:protocol_hook
{port_ini(pki, "REQ", "require")}
[web:REQ]
ON /* = call views:whoami
ON SSLNOCERTERR = page pages/nocert.html status=401
ON SSLCERTERR = call views:certerr status=495
{port_ini(pki, "REQREDIR", "require")}
[web:REQREDIR]
ON /* = call views:whoami
REDIRECT SSLNOCERTERR = https://example.org/get-a-certificate status=303
ON FORBIDDEN = page pages/forbidden.html
TYPE FORBIDDEN = text/plain
ALLOW /* = cn:alice
{port_ini(pki, "REQPLAIN", "require")}
[web:REQPLAIN]
ON /* = call views:whoami
{port_ini(pki, "GATED", "request", "allow = cn:alice | peer")}
[web:GATED]
ON /* = call views:whoami
ON FORBIDDEN = page pages/forbidden.html status=403
{port_ini(pki, "PP12", "none", tls_max="1.2")}
[web:PP12]
ON /open = call views:whoami
ON /ask = call views:ask
ALLOW /ops/* = ou:ops
ON /ops/* = call views:whoami client_cert=require
ON /need = call views:whoami client_cert=require
ON /maybe = call views:whoami client_cert=request
ON POST /upload = call views:echo client_cert=require max_body=2000
ON SSLNOCERTERR = page pages/nocert.html status=403
{port_ini(pki, "PP13", "none", tls_min="1.3")}
[web:PP13]
ON /open = call views:whoami
ON /ask = call views:ask
ON /need = call views:whoami client_cert=require
ON /maybe = call views:whoami client_cert=request
ON /fb = call views:whoami client_cert=require fallback=https://127.0.0.1:{strict_fallback}/who
ON POST /upload = call views:echo client_cert=require max_body=2000
ON SSLNOCERTERR = page pages/nocert.html status=403
{port_ini(pki, "PPSTRICT", "none", tls_max="1.2")}
[web:PPSTRICT]
ON /need = call views:whoami client_cert=require
{port_ini(pki, "PPSTRICT13", "none", tls_min="1.3")}
[web:PPSTRICT13]
ON /need = call views:whoami client_cert=require
ON /open = call views:whoami
{port_ini(pki, "CERTERR13", "none", tls_min="1.3")}
[web:CERTERR13]
ON /need = call views:whoami client_cert=require
ON SSLCERTERR = call views:certerr
{port_ini(pki, "CERTERR12", "none", tls_max="1.2")}
[web:CERTERR12]
ON /need = call views:whoami client_cert=require
ON SSLCERTERR = call views:certerr
"""
    s = start(text, procs_dir)
    yield s
    s.stop()


# -- clients --------------------------------------------------------------------------------------------


class Client:
    """One keep-alive HTTPS connection."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)

    def get(self, path: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    def close(self) -> None:
        self.conn.close()


def get(server, port_name, path, pki, cert=None, tls=None, **kw):
    c = Client(
        server.port(port_name),
        client_context(pki, cert, tls=tls, **{k: kw.pop(k) for k in list(kw) if k == "post_handshake_auth"}),
    )
    try:
        return c.get(path, **kw)
    finally:
        c.close()


def curl(pki, port, path, cert=None, *args):
    cmd = ["curl", "-sS", "--cacert", str(pki.files["root.ca"]), "-o", "-", "-w", "\n%{http_code}",
           "--resolve", f"localhost:{port}:127.0.0.1", *args]  # fmt: skip
    if cert:
        cmd += ["--cert", str(pki.cert(cert)), "--key", str(pki.key(cert))]
    out = subprocess.run(cmd + [f"https://localhost:{port}{path}"], capture_output=True, timeout=20)
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code or 0), body, out.stderr


# -- rule types -----------------------------------------------------------------------------------------


def test_call_returns_text_with_cert_info(server, pki):
    status, headers, body = get(server, "WEB", "/who", pki, "alice")
    assert status == 200 and body.startswith(b"cn=alice levels=3")
    assert headers["content-type"] == "text/html; charset=utf-8"


def test_call_returns_json_deferred_coroutine(server, pki):
    status, headers, body = get(server, "WEB", "/json", pki, "alice")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["ou"] == ["eng", "ops"] or set(json.loads(body)["ou"]) == {"eng", "ops"}
    assert get(server, "WEB", "/later", pki, "alice")[2] == b"later alice"
    assert get(server, "WEB", "/async", pki, "bob")[2] == b"async bob"


def test_call_twisted_resource(server, pki):
    status, _, body = get(server, "WEB", "/res/a/b", pki, "alice")
    assert status == 200 and body == b"resource a/b"


def test_handler_error_is_500_and_logged(server, pki, events):
    mark = events.mark()
    status, _, body = get(server, "WEB", "/boom", pki, "alice")
    assert status == 500
    assert b"failed on purpose" not in body
    assert events.wait_for(mark, "janustls.handler.error", "WEB")["error"] == "the handler failed on purpose"


def test_page_static_with_caching_headers(server, pki):
    c = Client(server.port("WEB"), client_context(pki, "alice"))
    status, headers, body = c.get("/hello")
    assert status == 200 and body == b"<h1>hello page</h1>\n"
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["etag"].startswith('"') and "last-modified" in headers
    status, _, body = c.get("/hello", headers={"If-None-Match": headers["etag"]})
    assert status == 304 and body == b""
    status, _, _ = c.get("/hello", headers={"If-Modified-Since": headers["last-modified"]})
    assert status == 304
    status, headers, _ = c.get("/css")
    assert headers["content-type"] == "text/css; charset=utf-8"
    c.close()


def test_page_wildcard_substitution_and_missing(server, pki):
    assert get(server, "WEB", "/docs/intro", pki, "alice")[2] == b"<p>intro doc</p>\n"
    assert get(server, "WEB", "/docs/nothing", pki, "alice")[0] == 404
    assert get(server, "WEB", "/docs/../../views", pki, "alice")[0] == 400  # climbs above /: refused


def test_type_rule_sets_content_type(server, pki):
    status, headers, _ = get(server, "WEB", "/styled", pki, "alice")
    assert status == 200 and headers["content-type"] == "text/x-custom"


def test_redirect_rule_and_action(server, pki):
    status, headers, _ = get(server, "WEB", "/old/a/b?x=1", pki, "alice")
    assert status == 302 and headers["location"] == "https://example.org/new/a/b"
    status, headers, _ = get(server, "WEB", "/moved", pki, "alice")
    assert status == 301 and headers["location"] == "/hello"


def test_not_found_html_and_json(server, pki):
    status, _, body = get(server, "WEB", "/nowhere", pki, "alice")
    assert status == 404 and b"<h1>404 Not Found</h1>" in body
    status, _, body = get(server, "WEB", "/nowhere", pki, "alice", headers={"Accept": "application/json"})
    assert status == 404 and json.loads(body)["status"] == 404


def test_wsgi_environ_has_mod_ssl_variables(server, pki):
    status, _, body = get(server, "WEB", "/app/x/y", pki, "alice")
    assert status == 200
    env = json.loads(body)
    alice = pki.issued["alice"].cert
    assert env["SCRIPT_NAME"] == "/app" and env["PATH_INFO"] == "/x/y"
    assert env["HTTPS"] == "on" and env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert env["SSL_CLIENT_S_DN_CN"] == "alice"
    assert env["SSL_CLIENT_S_DN"] == alice.subject.rfc4514_string()
    assert (
        env["SSL_CLIENT_I_DN"] == "CN=Test Intermediate CA,O=janustls development"
        or env["SSL_CLIENT_I_DN"] == alice.issuer.rfc4514_string()
    )
    assert int(env["SSL_CLIENT_M_SERIAL"], 16) == alice.serial_number
    # Apache's format (OpenSSL's ASN1_TIME_print): "Nov  3 10:00:00 2026 GMT"
    start = alice.not_valid_before_utc
    assert env["SSL_CLIENT_V_START"] == f"{start:%b} {start.day:2d} {start:%H:%M:%S} {start.year} GMT"
    assert env["SSL_CLIENT_V_END"].endswith(" GMT")
    assert env["SSL_CLIENT_CERT"].startswith("-----BEGIN CERTIFICATE-----")
    assert env["SSL_CLIENT_CERT_CHAIN_0"].startswith("-----BEGIN CERTIFICATE-----")
    assert "SSL_CLIENT_CERT_CHAIN_1" in env  # the verified chain up to the root
    assert env["SSL_CLIENT_SAN_DNS_0"] == "alice.example.test"
    assert env["SSL_CLIENT_SAN_Email_0"] == "alice@example.test"
    assert env["SSL_CLIENT_SAN_URI_0"] == "spiffe://example.test/alice"
    assert env["SSL_CLIENT_SAN_IP_0"] == "127.0.0.1"
    assert env["SSL_PROTOCOL"] in ("TLSv1.2", "TLSv1.3")


def test_wsgi_without_certificate(server, pki):
    env = json.loads(get(server, "WEB", "/app/", pki, None)[2])
    assert env["SSL_CLIENT_VERIFY"] == "NONE" and "SSL_CLIENT_S_DN" not in env


def test_mod_ssl_environ_is_computed_once_per_connection(server, pki):
    from janustls.ports.web import port as webserv

    calls = []
    real = webserv.ssl_environ

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    webserv.ssl_environ = counting
    try:
        c = Client(server.port("WEB"), client_context(pki, "alice"))
        for _ in range(3):
            assert c.get("/app/x")[0] == 200
        c.close()
    finally:
        webserv.ssl_environ = real
    assert len(calls) == 1


# -- precedence end to end ---------------------------------------------------------------------------------


def test_precedence_end_to_end(server, pki):
    c = Client(server.port("WEB"), client_context(pki, "alice"))
    assert c.get("/p/exact")[2] == b"exact"  # no wildcard beats a wildcard
    assert c.get("/p/other")[2] == b"wild"
    assert c.get("/p/exact", "POST", b"")[2] == b"exact"  # URL specificity before method
    assert c.get("/p/other", "POST", b"")[2] == b"post"  # a method rule beats an any-method rule
    assert c.get("/split/a/b/and/c")[2] == b"parts=a/b|c"
    c.close()


def test_access_rules_end_to_end(server, pki):
    assert get(server, "WEB", "/admin/x", pki, "alice")[0] == 200  # ALLOW ou:ops
    status, _, body = get(server, "WEB", "/admin/x", pki, "bob")
    assert status == 403 and body.startswith(b"forbidden: not_allowed by refused by [web:WEB] ALLOW /admin/*")
    assert get(server, "WEB", "/admin/open/x", pki, "bob")[0] == 200  # a more specific ALLOW
    assert get(server, "WEB", "/private/x", pki, "alice")[0] == 200
    assert get(server, "WEB", "/private/x", pki, "bob")[0] == 403  # DISALLOW cn:bob
    assert get(server, "WEB", "/closed", pki, "alice")[0] == 403  # DISALLOW anyone


# -- identity rules on rules and ports ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,yes,no",
    [
        ("/vip", "alice", "bob"),
        ("/pred", "bob", "alice"),
        ("/fp", "alice", "bob"),
        ("/spiffe", "alice", "bob"),
        ("/dn", "alice", "bob"),
        ("/ip", "alice", "bob"),
        ("/peer", "alice", "bob"),
        ("/email", "alice", "bob"),
        ("/dns", "alice", "bob"),
        ("/ou", "alice", "bob"),
    ],
)
def test_identity_rules_on_web_rules(server, pki, events, path, yes, no):
    assert get(server, "WEB", path, pki, yes)[0] == 200
    mark = events.mark()
    status, _, body = get(server, "WEB", path, pki, no)
    assert status == 403 and b"not_allowed" in body
    e = events.wait_for(mark, "janustls.refused.not_allowed", "WEB")
    assert path in e["rule"] and e["subject"].startswith(f"CN={no}")
    assert get(server, "WEB", path, pki, None)[0] == 403  # no certificate: refused too


def test_peer_rule_by_reverse_lookup(server, pki, events, tmp_path):
    """A DNS SAN naming what the client's address reverse-resolves to (127.0.0.1 -> localhost)."""
    try:
        names = socket.gethostbyaddr("127.0.0.1")
    except OSError:
        pytest.skip("no reverse lookup for 127.0.0.1 here")
    host = pki.inter.issue("lh", dns=[names[0]])
    pki.write_client("lh", host)
    assert get(server, "WEB", "/peer", pki, "lh")[0] == 200
    other = pki.inter.issue("elsewhere", dns=["elsewhere.example.test"])
    pki.write_client("elsewhere", other)
    assert get(server, "WEB", "/peer", pki, "elsewhere")[0] == 403


def test_port_level_allow_on_web_port_gives_forbidden(server, pki, events):
    assert get(server, "GATED", "/x", pki, "alice")[0] == 200
    mark = events.mark()
    status, _, body = get(server, "GATED", "/x", pki, "bob")
    assert status == 403 and body == b"<h1>forbidden page</h1>\n"
    e = events.wait_for(mark, "janustls.refused.not_allowed", "GATED")
    assert e["rule"] == "[port:GATED] allow = cn:alice | peer"
    assert events.wait_for(mark, "janustls.web.exception", "GATED")["exception"] == "FORBIDDEN"
    status, _, body = get(server, "GATED", "/x", pki, "bob", headers={"Accept": "application/json"})
    assert status == 403 and json.loads(body)["exception"] == "FORBIDDEN"


SOCK = """
async def serve(sock):
    sock.write(("hello %s\\n" % sock.cert_info("CN")).encode())
"""


def test_port_level_allow_on_srvsock_closes_and_logs(pki, reactor, tmp_path, events):
    (tmp_path / "h.py").write_text(SOCK)
    s = start(
        f"""
[janustls]
procs = {tmp_path}
[port:SOCK]
type = srvsock
listen = tcp:0:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
client_cert = require
addca = {pki.files["root.ca"]}
allow = uri:spiffe://example.test/** | sha256:{"0" * 64}
handler = h:serve
""",
        tmp_path,
    )
    try:
        assert talk(s.port("SOCK"), client_context(pki, "alice")) == b"hello alice\n"
        mark = events.mark()
        assert talk(s.port("SOCK"), client_context(pki, "bob")) == b""
        e = events.wait_for(mark, "janustls.refused.not_allowed", "SOCK")
        assert e["rule"].startswith("[port:SOCK] allow = uri:spiffe://example.test/**")
        assert e["subject"].startswith("CN=bob")
    finally:
        s.stop()


def test_port_level_allow_on_proxy_closes_and_logs(pki, reactor, tmp_path, events):
    pytest.importorskip("janustls.ports.proxy")
    import threading

    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(8)
    accepted: list[socket.socket] = []

    def serve_backend() -> None:
        while True:
            try:
                conn, _ = backend.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.sendall(b"backend says hi\n")
            conn.close()

    threading.Thread(target=serve_backend, daemon=True).start()
    s = start(
        f"""
[port:GATE]
type = proxy
listen = tcp:0:interface=127.0.0.1
connect = tcp:127.0.0.1:{backend.getsockname()[1]}
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
client_cert = require
addca = {pki.files["root.ca"]}
allow = cn:alice
""",
        tmp_path,
    )
    try:
        assert talk(s.port("GATE"), client_context(pki, "alice")).endswith(b"backend says hi\n")
        mark = events.mark()
        n = len(accepted)
        assert talk(s.port("GATE"), client_context(pki, "bob")) == b""
        e = events.wait_for(mark, "janustls.refused.not_allowed", "GATE")
        assert e["rule"] == "[port:GATE] allow = cn:alice" and e["subject"].startswith("CN=bob")
        time.sleep(0.2)
        assert len(accepted) == n  # the backend never saw the refused client
    finally:
        s.stop()
        backend.close()


# -- exception rules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_sslnocerterr_on_require_port(server, pki, events, tls):
    assert get(server, "REQ", "/x", pki, "alice", tls=tls)[2].startswith(b"cn=alice")
    mark = events.mark()
    status, headers, body = get(server, "REQ", "/x", pki, None, tls=tls)
    assert status == 401 and body == b"<h1>no certificate page</h1>\n"
    assert headers["cache-control"] == "no-store"
    events.wait_for(mark, "janustls.refused.no_certificate", "REQ")
    status, headers, body = get(server, "REQ", "/x", pki, None, tls=tls, headers={"Accept": "application/json"})
    doc = json.loads(body)
    assert status == 401 and doc["exception"] == "SSLNOCERTERR" and doc["reason"] == "no_certificate"


def test_redirect_and_type_exception_rules(server, pki):
    status, headers, _ = get(server, "REQREDIR", "/x", pki, None)
    assert status == 303 and headers["location"] == "https://example.org/get-a-certificate"
    status, headers, body = get(server, "REQREDIR", "/x", pki, "bob")
    assert status == 403 and headers["content-type"] == "text/plain" and body == b"<h1>forbidden page</h1>\n"
    assert get(server, "REQREDIR", "/x", pki, "alice")[0] == 200


@pytest.mark.parametrize(
    "cert,reason",
    [
        ("expired", "expired"),
        ("othera", "unknown_ca"),
        ("revoked", "revoked"),
        ("serveronly", "wrong_usage"),
        ("selfsigned", "unknown_ca"),
    ],
)
def test_sslcerterr_sees_the_typed_reason(server, pki, events, cert, reason):
    mark = events.mark()
    status, _, body = get(server, "REQ", "/x", pki, cert)
    assert status == 495 and body == f"certerr: {reason}".encode()
    assert events.wait_for(mark, f"janustls.refused.{reason}", "REQ")["subject"] is not None
    status, _, body = get(server, "REQ", "/x", pki, cert, headers={"Accept": "application/json"})
    assert json.loads(body) == {"exception": "SSLCERTERR", "reason": reason}


def test_refused_certificate_is_not_resumed(server, pki):
    """A client whose certificate was refused but let through must not come back as verified."""
    ctx = client_context(pki, "expired", tls="1.2")
    c1 = http.client.HTTPSConnection("localhost", server.port("REQ"), context=ctx)
    c1.request("GET", "/x")
    assert c1.getresponse().read() == b"certerr: expired"
    session = c1.sock.session
    c1.close()
    raw = socket.create_connection(("127.0.0.1", server.port("REQ")))
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    assert not s.session_reused
    s.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 495 ") and data.endswith(b"\r\n\r\ncerterr: expired")


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_require_port_without_handler_refuses_at_tls(server, pki, events, tls):
    mark = events.mark()
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        get(server, "REQPLAIN", "/x", pki, None, tls=tls)
    events.wait_for(mark, "janustls.refused.no_certificate", "REQPLAIN")
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        get(server, "REQPLAIN", "/x", pki, "expired", tls=tls)


def test_sslprotocolerr_hook(server, pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("AES128-SHA")  # no AEAD, no forward secrecy: the port offers none of it
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        socket_ = socket.create_connection(("127.0.0.1", server.port("WEB")))
        ctx.wrap_socket(socket_, server_hostname="localhost")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        body = get(server, "WEB", "/protoerrs", pki, "alice")[2]
        if body:
            break
        time.sleep(0.05)
    assert b"cipher" in body.lower() or b"no shared" in body.lower(), body


# -- certificates per path ---------------------------------------------------------------------------------


def test_per_path_tls12_renegotiation(server, pki):
    c = Client(server.port("PP12"), client_context(pki, "alice", tls="1.2"))
    assert c.get("/open")[2] == b"cn=None levels=0 version=TLSv1.2"
    assert c.get("/need")[2] == b"cn=alice levels=3 version=TLSv1.2"
    assert c.get("/open")[2] == b"cn=alice levels=3 version=TLSv1.2"  # the connection keeps it
    c.close()


def test_per_path_asks_before_identity_rules_judge(server, pki):
    c = Client(server.port("PP12"), client_context(pki, "alice", tls="1.2"))
    assert c.get("/ops/x")[2].startswith(b"cn=alice levels=3")  # asked, then ALLOW ou:ops
    c.close()
    c = Client(server.port("PP12"), client_context(pki, "bob", tls="1.2"))
    assert c.get("/ops/x")[0] == 403  # asked, certificate fine, not allowed
    c.close()
    c = Client(server.port("PP12"), client_context(pki, None, tls="1.2"))
    assert c.get("/ops/x")[2] == b"<h1>no certificate page</h1>\n"
    c.close()


def test_per_path_client_dropping_when_asked_is_handled_quietly(server, pki, events):
    """Chromium's way: the HelloRequest arrives, the client drops the connection (and retries)."""
    mark = events.mark()
    s = client_context(pki, "alice", tls="1.2").wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("PP12"))), server_hostname="localhost"
    )
    s.sendall(b"GET /need HTTP/1.1\r\nHost: localhost\r\n\r\n")
    time.sleep(0.2)
    s.close()
    events.wait_for(mark, "janustls.request", "PP12")
    time.sleep(0.3)
    assert not events.since(mark, "janustls.web.exception", "PP12")
    assert not events.since(mark, "janustls.handler.error", "PP12")


def test_per_path_tls13_post_handshake_auth(server, pki):
    c = Client(server.port("PP13"), client_context(pki, "alice", tls="1.3", post_handshake_auth=True))
    assert c.get("/open")[2] == b"cn=None levels=0 version=TLSv1.3"
    assert c.get("/need")[2] == b"cn=alice levels=3 version=TLSv1.3"
    c.close()


def test_per_path_tls13_without_pha_gets_sslnocerterr(server, pki, events):
    mark = events.mark()
    status, _, body = get(server, "PP13", "/need", pki, "alice", tls="1.3")
    assert status == 403 and body == b"<h1>no certificate page</h1>\n"
    e = events.wait_for(mark, "janustls.web.exception", "PP13")
    assert "post-handshake" in str(e["refusal"])
    # request (not require): served without a certificate
    assert get(server, "PP13", "/maybe", pki, "alice", tls="1.3")[2] == b"cn=None levels=0 version=TLSv1.3"


def test_per_path_tls13_without_pha_fallback_redirect(server, pki, events):
    mark = events.mark()
    status, headers, _ = get(server, "PP13", "/fb", pki, "alice", tls="1.3")
    assert (
        status == 302 and headers["location"].startswith("https://127.0.0.1:") and headers["location"].endswith("/who")
    )
    events.wait_for(mark, "janustls.web.fallback", "PP13")


@pytest.mark.parametrize("tls,pha", [("1.2", False), ("1.3", True)])
def test_per_path_no_certificate_sent(server, pki, tls, pha):
    port = "PP12" if tls == "1.2" else "PP13"
    c = Client(server.port(port), client_context(pki, None, tls=tls, post_handshake_auth=pha))
    status, _, body = c.get("/need")
    assert status == 403 and body == b"<h1>no certificate page</h1>\n"
    assert c.get("/maybe")[2].startswith(b"cn=None")  # asked once per session: no second request
    c.close()


@pytest.mark.parametrize("tls,pha", [("1.2", False), ("1.3", True)])
def test_per_path_with_request_body(server, pki, tls, pha):
    port = "PP12" if tls == "1.2" else "PP13"
    c = Client(server.port(port), client_context(pki, "alice", tls=tls, post_handshake_auth=pha))
    status, _, body = c.get("/upload", "POST", b"x" * 1500, {"Content-Type": "application/octet-stream"})
    assert status == 200 and body == b"cn=alice body=1500 " + b"x" * 20
    c.close()
    c = Client(server.port(port), client_context(pki, "alice", tls=tls, post_handshake_auth=pha))
    status, _, body = c.get("/upload", "POST", b"y" * 5000)
    assert status == 413
    c.close()
    c = Client(server.port(port), client_context(pki, "alice", tls=tls, post_handshake_auth=pha))
    c.conn.request("POST", "/upload", body=iter([b"z" * 1500, b"z" * 1500]), encode_chunked=True)
    r = c.conn.getresponse()
    assert r.status == 413  # a chunked body over the bound
    r.read()
    c.close()


def test_per_path_require_without_handler_refused_at_tls(server, pki, events):
    c = Client(server.port("PPSTRICT"), client_context(pki, None, tls="1.2"))
    mark = events.mark()
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)):
        c.get("/need")
    events.wait_for(mark, "janustls.request", "PPSTRICT")
    c.close()


def test_per_path_tls13_pha_no_certificate_without_handler_refused_at_tls(server, pki, events):
    c = Client(server.port("PPSTRICT13"), client_context(pki, None, tls="1.3", post_handshake_auth=True))
    assert c.get("/open")[0] == 200
    mark = events.mark()
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)):
        c.get("/need")
    assert events.wait_for(mark, "janustls.request.refused", "PPSTRICT13")["reason"] == "no_certificate"
    assert not events.since(mark, "janustls.web.exception", "PPSTRICT13")
    c.close()


def test_handler_asks_with_request_request_certificate(server, pki):
    for tls, pha in (("1.2", False), ("1.3", True), ("1.3", False)):
        port = "PP12" if tls == "1.2" else "PP13"
        c = Client(server.port(port), client_context(pki, "alice", tls=tls, post_handshake_auth=pha))
        status, _, body = c.get("/ask")
        expect = b"can=False asked=None" if not pha and tls == "1.3" else b"can=True asked=alice"
        assert status == 200 and body.startswith(expect), (tls, pha, body)
        c.close()


def test_per_path_tls13_no_pha_without_handler_gets_default_page(server, pki):
    status, _, body = get(server, "PPSTRICT13", "/need", pki, "alice", tls="1.3")
    assert status == 403 and b"needs a client certificate" in body


@pytest.mark.parametrize(
    "port,tls,cert,reason", [("CERTERR12", "1.2", "expired", "expired"), ("CERTERR13", "1.3", "othera", "unknown_ca")]
)
def test_per_path_refused_certificate_gets_sslcerterr(server, pki, port, tls, cert, reason):
    c = Client(server.port(port), client_context(pki, cert, tls=tls, post_handshake_auth=tls == "1.3"))
    status, _, body = c.get("/need")
    assert status == 403 and body == f"certerr: {reason}".encode()
    status, _, body = c.get("/need")  # once per session: the same answer, no second request
    assert status == 403 and body == f"certerr: {reason}".encode()
    c.close()


# -- curl ---------------------------------------------------------------------------------------------------


def test_curl_whoami_nocert_json_and_renegotiation(server, pki):
    code, body, _ = curl(pki, server.port("REQ"), "/who", "alice")
    assert code == 200 and body.startswith(b"cn=alice")
    code, body, _ = curl(pki, server.port("REQ"), "/who")
    assert code == 401 and body == b"<h1>no certificate page</h1>\n"
    code, body, _ = curl(pki, server.port("REQ"), "/who", None, "-H", "Accept: application/json")
    assert code == 401 and json.loads(body)["exception"] == "SSLNOCERTERR"
    code, body, _ = curl(pki, server.port("REQ"), "/who", "expired")
    assert code == 495 and body == b"certerr: expired"
    code, body, _ = curl(pki, server.port("PP12"), "/need", "alice", "--tls-max", "1.2")
    assert code == 200 and body.startswith(b"cn=alice levels=3 version=TLSv1.2")
    code, body, _ = curl(pki, server.port("WEB"), "/admin/x", "bob")
    assert code == 403
    code, _, _ = curl(pki, server.port("WEB"), "/old/z", "alice")
    assert code == 302
    code, body, _ = curl(pki, server.port("WEB"), "/hello", "alice", "-D", "/dev/stderr")
    assert code == 200 and body == b"<h1>hello page</h1>\n"
    code, body, err = curl(pki, server.port("WEB"), "/styled", "alice", "-D", "/dev/stderr")
    assert code == 200 and b"content-type: text/x-custom" in err.lower()
    code, body, _ = curl(pki, server.port("WEB"), "/app/q", "alice")
    assert code == 200 and json.loads(body)["SSL_CLIENT_S_DN_CN"] == "alice"
    code, body, _ = curl(pki, server.port("WEB"), "/form", "alice", "--data-binary", "hello-body")
    assert code == 200 and body == b"cn=alice body=10 hello-body"
    code, body, _ = curl(pki, server.port("GATED"), "/x", "bob")
    assert code == 403 and body == b"<h1>forbidden page</h1>\n"
    code, body, _ = curl(pki, server.port("PP13"), "/need", "alice")  # curl offers post-handshake auth
    assert code == 200 and body.startswith(b"cn=alice levels=3 version=TLSv1.3")
    code, body, _ = curl(pki, server.port("PP13"), "/need")  # asked, sends nothing
    assert code == 403 and body == b"<h1>no certificate page</h1>\n"


# -- configuration errors at build time ----------------------------------------------------------------------


def build(text: str, base: Path):
    return build_ports(parse_definitions(text, source="ports.ini", base=base))


@pytest.mark.parametrize(
    "rules,key,fragment",
    [
        ("ON /x = call views:nosuch", "ON /x", "no 'nosuch'"),
        ("ON /x = call nomodule:f", "ON /x", "does not exist"),
        ("ON /x = wsgi nomodule:app", "ON /x", "does not exist"),
        ("ON /x = page pages/absent.html", "ON /x", "not a readable file"),
        ("ON SSLNOCERTERR = page pages/absent.html", "ON SSLNOCERTERR", "not a readable file"),
        ("ON GET SSLNOCERTERR = page pages/hello.html", "ON GET SSLNOCERTERR", "with a method"),
        ("ON /x = call views:whoami allow=call:preds:absent", "ON /x", "preds has no 'absent'"),
    ],
)
def test_configuration_errors_at_build_time(pki, procs_dir, rules, key, fragment):
    text = f"[janustls]\nprocs = {procs_dir}\n{port_ini(pki, 'W', 'request')}\n[web:W]\n{rules}\n"
    with pytest.raises(ConfigErrors) as e:
        build(text, procs_dir)
    (err,) = e.value.errors
    assert err.file == "ports.ini" and err.section == "web:W" and err.key == key, err
    assert fragment in err.message, err.message


def test_per_path_rule_on_a_port_without_cas_is_an_error(pki, procs_dir):
    text = f"[janustls]\nprocs = {procs_dir}\n{port_ini(pki, 'W', 'none')}\n[web:W]\nON /x = call views:whoami client_cert=require\n"
    text = text.replace(f"addca = {pki.files['root.ca']}\n", "").replace(f"crl = {pki.files['inter.crl']}\n", "")
    with pytest.raises(ConfigErrors) as e:
        build(text, procs_dir)
    (err,) = e.value.errors
    assert (err.section, err.key) == ("web:W", "ON /x") and "no CA is added" in err.message


def test_wsgi_target_must_be_callable(pki, procs_dir):
    (procs_dir / "notapp.py").write_text("app = 'a string'\n")
    text = f"[janustls]\nprocs = {procs_dir}\n{port_ini(pki, 'W', 'request')}\n[web:W]\nON /x/* = wsgi notapp:app\n"
    with pytest.raises(ConfigErrors) as e:
        build(text, procs_dir)
    assert e.value.errors[0].key == "ON /x/*" and "neither callable" in e.value.errors[0].message


def test_rule_table_for_a_port_that_is_not_webserv(pki, procs_dir):
    text = f"[janustls]\nprocs = {procs_dir}\n{port_ini(pki, 'W', 'request', 'handler = views:whoami')}\n[web:W]\nON /x = call views:whoami\n"
    with pytest.raises(ConfigErrors) as e:
        parse_definitions(text.replace("type = webserv", "type = srvsock"), "ports.ini", procs_dir)
    assert e.value.errors[0].section == "web:W" and "not webserv" in e.value.errors[0].message


def test_port_allow_error_is_located(pki, procs_dir):
    for ptype in ("webserv", "srvsock"):
        extra = "allow = cn:alice & | ou:x\n" + ("handler = views:whoami\n" if ptype == "srvsock" else "")
        text = f"[janustls]\nprocs = {procs_dir}\n{port_ini(pki, 'W', 'request', extra)}".replace(
            "type = webserv", f"type = {ptype}"
        )
        with pytest.raises(ConfigErrors) as e:
            build(text, procs_dir)
        (err,) = e.value.errors
        assert (err.section, err.key) == ("port:W", "allow") and "identity expression" in err.message


def test_table_and_port_allow_errors_reported_together(pki, procs_dir):
    text = f"[janustls]\nprocs = {procs_dir}\n{port_ini(pki, 'W', 'request', 'allow = nope:x')}\n[web:W]\nON GET FORBIDDEN = page pages/hello.html\n"
    with pytest.raises(ConfigErrors) as e:
        build(text, procs_dir)
    assert {(err.section, err.key) for err in e.value.errors} == {("web:W", "ON GET FORBIDDEN"), ("port:W", "allow")}


def test_wsgi_port_restarts(pki, reactor, procs_dir):
    text = f"[janustls]\nprocs = {procs_dir}\n{port_ini(pki, 'W', 'request')}\n[web:W]\nON /app/* = wsgi wsgiapp:app\n"
    s = start(text, procs_dir)
    try:
        ctx = client_context(None)
        c = Client(s.port("W"), ctx)
        assert c.get("/app/x")[0] == 200
        c.close()
        in_reactor(s.service.stopService)
        in_reactor(s.service.startService)
        c = Client(s.port("W"), ctx)
        assert c.get("/app/y")[0] == 200
        c.close()
    finally:
        s.stop()


def test_reload_keeps_web_ports_serving(pki, reactor, procs_dir):
    """After a reload, established keep-alive connections and new ones are served; exception handling holds."""
    text = f"""[janustls]\nprocs = {procs_dir}\n{port_ini(pki, "R", "require")}
[web:R]
ON /app/* = wsgi wsgiapp:app
ON /who = call views:whoami
ON SSLNOCERTERR = page pages/nocert.html status=401
"""
    s = start(text, procs_dir)
    try:
        if not hasattr(s.service, "reload"):
            pytest.skip("no reload in this version")
        old = Client(s.port("R"), client_context(pki, "alice"))
        assert old.get("/app/x")[0] == 200
        assert in_reactor(
            s.service.reload, parse_definitions(text.replace("status=401", "status=402"), "test.ini", procs_dir)
        )
        assert old.get("/app/y")[0] == 200  # the old factory's connection still runs WSGI
        assert old.get("/who")[2].startswith(b"cn=alice")
        old.close()
        assert get(s, "R", "/app/z", pki, "alice")[0] == 200
        assert get(s, "R", "/who", pki, None)[0] == 402  # the new table, the TLS layer still only requests
    finally:
        s.stop()


def test_janustls_check_reports_web_errors(pki, procs_dir, tmp_path):
    ini = tmp_path / "ports.ini"
    ini.write_text(
        f"[janustls]\nprocs = {procs_dir}\n{port_ini(pki, 'W', 'request')}\n[web:W]\nON FORBIDDEN* = page x\nON /y = page pages/absent.html\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "janustls.cli", "check", str(ini)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "[web:W] ON FORBIDDEN*" in text and "wildcard" in text
