"""`forward` actions: a web port sends requests on to an HTTP backend with the client's
verified identity as X-SSL-Client-* headers, and a client cannot forge them."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import urllib.parse

import pytest
from cryptography.hazmat.primitives import hashes

from janustls.core.certinfo import CertChain
from janustls.core.config import parse_definitions
from janustls.core.forwarding import identity_headers, parse_backend
from janustls.errors import ConfigErrors
from janustls.ops.build import build_ports
from tests.support import start


class Recorder(http.server.BaseHTTPRequestHandler):
    """A plain HTTP backend that answers with the request line and headers it received."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {"path": self.path, "method": self.command, "body": body.decode(),
                "headers": {k.lower(): v for k, v in self.headers.items()}}  # fmt: skip
        out = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def backend():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def web(pki, reactor, backend, tmp_path_factory):
    procs = tmp_path_factory.mktemp("procs")
    s = start(
        f"""
[janustls]
procs = {procs}
[port:FWD]
type = webserv
listen = tcp:0:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
client_cert = request
addca = {pki.files["root.ca"]}
[web:FWD]
ON /api/* = forward http://127.0.0.1:{backend}/backend/*
""",
        procs,
    )
    yield s
    s.stop()


def curl(pki, port: int, path: str, cert: str | None, *extra: str) -> dict:
    args = ["curl", "-sS", "--cacert", str(pki.files["root.ca"]), f"https://127.0.0.1:{port}{path}", *extra]
    if cert:
        args += ["--cert", str(pki.cert(cert)), "--key", str(pki.key(cert))]
    out = subprocess.run(args, capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("tls", ["--tls-max 1.2", "--tlsv1.3"])
def test_identity_headers_reach_the_backend(web, pki, tls):
    seen = curl(pki, web.port("FWD"), "/api/items/7?x=1", "alice", *tls.split())
    h = seen["headers"]
    assert seen["path"] == "/backend/items/7?x=1"
    assert h["x-ssl-client-verify"] == "SUCCESS"
    assert h["x-ssl-client-cn"] == "alice"
    assert h["x-ssl-client-s-dn"].startswith("CN=alice")
    assert h["x-ssl-client-i-dn"] == "CN=Test Intermediate CA,O=janustls development"
    assert h["x-ssl-client-san-uri"] == "spiffe://example.test/alice"
    assert h["x-ssl-client-san-email"] == "alice@example.test"
    assert h["x-ssl-client-fingerprint"] == pki.issued["alice"].cert.fingerprint(hashes.SHA256()).hex()
    pem = urllib.parse.unquote(h["x-ssl-client-cert"])
    assert pem == pki.issued["alice"].cert_pem.decode()
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "https"


def test_forged_identity_headers_are_removed(web, pki):
    """A client without a certificate claims to be alice: the backend sees Verify NONE only."""
    seen = curl(pki, web.port("FWD"), "/api/x", None,
                "-H", "X-SSL-Client-CN: alice", "-H", "x-ssl-client-verify: SUCCESS", "-H", "X-SSL-Client-Other: 1")  # fmt: skip
    h = seen["headers"]
    assert h["x-ssl-client-verify"] == "NONE"
    assert "x-ssl-client-cn" not in h
    assert "x-ssl-client-other" not in h


def test_forged_headers_do_not_override_a_real_certificate(web, pki):
    seen = curl(pki, web.port("FWD"), "/api/x", "bob", "-H", "X-SSL-Client-CN: alice")
    assert seen["headers"]["x-ssl-client-cn"] == "bob"


def test_post_body_is_forwarded(web, pki):
    seen = curl(pki, web.port("FWD"), "/api/post", "alice", "--data-binary", "hello=world")
    assert seen["method"] == "POST"
    assert seen["body"] == "hello=world"


def test_backend_down_gives_an_error_not_a_hang(pki, reactor, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    srv = start(
        f"""
[port:FWD2]
type = webserv
listen = tcp:0:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
[web:FWD2]
ON /* = forward http://127.0.0.1:{dead}/*
""",
        tmp_path,
    )
    try:
        out = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(pki.files["root.ca"]),
             f"https://127.0.0.1:{srv.port('FWD2')}/x"], capture_output=True, timeout=20)  # fmt: skip
        assert out.stdout == b"501"  # twisted.web's proxy answers a failed backend connection with 501
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "value,message",
    [
        ("forward https://backend/", "forward takes an http:// URL"),
        ("forward ftp://x/", "forward takes an http:// URL"),
        ("forward http:///nohost", "has no host"),
    ],
)
def test_bad_forward_targets_are_configuration_errors(pki, tmp_path, value, message):
    text = f"""
[port:W]
type = webserv
listen = tcp:0:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
[web:W]
ON /a/* = {value}
"""
    with pytest.raises(ConfigErrors) as e:
        build_ports(parse_definitions(text, source="f.ini", base=tmp_path))
    assert message in str(e.value)
    assert "f.ini: [web:W] ON /a/*" in str(e.value)


def test_forward_cannot_handle_an_exception(pki, tmp_path):
    text = f"""
[port:W]
type = webserv
listen = tcp:0:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
[web:W]
ON SSLNOCERTERR = forward http://127.0.0.1:1/
"""
    with pytest.raises(ConfigErrors, match="forward cannot be an exception handler"):
        build_ports(parse_definitions(text, source="f.ini", base=tmp_path))


def test_pure_identity_headers_and_backend_urls(pki):
    assert identity_headers(CertChain([])) == {"X-SSL-Client-Verify": "NONE"}
    chain = CertChain([pki.issued["alice"].cert, pki.inter.cert, pki.root.cert])
    headers = identity_headers(chain)
    assert all("\n" not in v for v in headers.values())
    assert headers["X-SSL-Client-SAN-DNS"] == "alice.example.test"
    assert parse_backend("http://10.1.2.3:8080/x?y=1").path == "/x?y=1"
    assert parse_backend("http://backend").port == 80
