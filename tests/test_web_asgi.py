"""ASGI apps behind `asgi` rules, served by `twistd -n janustls` (no reactor flag: janustls
installs Twisted's asyncio reactor), with real clients and certificates: the TLS extension
checked against the certificate files, a certificate asked for on one path (TLS 1.3
post-handshake auth) in that request's scope and later ones, lifespan, errors, mount=."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support import client_context, tls_connect

pytest.importorskip("starlette")
pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[1]
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

APPS = """
import json
from contextlib import asynccontextmanager
from fastapi import FastAPI, Request as FRequest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

EVENTS = []

@asynccontextmanager
async def lifespan(app):
    with open("lifespan.log", "a") as f:
        f.write("startup\\n")
    yield {"greeting": "started"}
    with open("lifespan.log", "a") as f:
        f.write("shutdown\\n")

def tls_of(scope):
    ext = scope["extensions"]
    return {"tls": ext["tls"], "janustls": {k: v for k, v in ext["janustls"].items() if k != "ssl_environ"},
            "path": scope["path"], "root_path": scope["root_path"], "keys": sorted(ext)}

async def tls(request):
    return JSONResponse(tls_of(request.scope))

async def boom(request):
    raise RuntimeError("the app failed")

async def echo(request):
    body = await request.body()
    return PlainTextResponse(b"got " + body)

async def state(request):
    return PlainTextResponse(request.state.greeting)

async def ws_echo(websocket):
    await websocket.accept()
    cn = websocket.scope["extensions"]["janustls"]["cert_info"].get("CN")
    name = websocket.scope["extensions"]["tls"]["client_cert_name"]
    while True:
        try:
            text = await websocket.receive_text()
        except WebSocketDisconnect:
            break
        await websocket.send_text(f"{cn} ({name}) said: {text}")

star = Starlette(routes=[WebSocketRoute("/ws", ws_echo), Route("/tls", tls), Route("/secure/tls", tls), Route("/boom", boom), Route("/echo", echo, methods=["POST"]),
                         Route("/state", state)], lifespan=lifespan)

api = FastAPI()

@api.get("/api/who")
async def who(request: FRequest):
    return {"cn": request.scope["extensions"]["janustls"]["cert_info"].get("CN"), "path": request.url.path}

@api.get("/who")
async def who_prefixed(request: FRequest):
    return {"cn": request.scope["extensions"]["janustls"]["cert_info"].get("CN"), "root_path": request.scope["root_path"]}

async def bad_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        return

async def slow(scope, receive, send):
    if scope["type"] != "http":
        return  # no lifespan
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    message = await receive()  # the body (never read before answering), then the disconnect
    if message["type"] == "http.request":
        message = await receive()
    with open("disconnect.log", "w") as f:
        f.write(message["type"])

async def ignore_body(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")  # the spec's way to say so
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

async def rawhead(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"x-inject", b"a\\r\\nX-Evil: 1")]})
    await send({"type": "http.response.body", "body": b"hello"})

async def badname(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"bad name", b"x")]})
    await send({"type": "http.response.body", "body": b"never"})

async def streamed(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await send({"type": "http.response.body", "body": b"b"})

def line(conn):
    conn.write(("line port under the asyncio reactor: %s\\n" % conn.cert_info("CN")).encode())
    conn.close()

def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode()]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_ini(procs: Path, pki: Any, port: int, rules: str, client_cert: str = "request", extra: str = "") -> Path:
    ini = procs / "ports.ini"
    ini.write_text(f"""
[janustls]
procs = .
[port:API]
type = webserv
listen = tcp:{port}:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
client_cert = {client_cert}
addca = {pki.files["root.ca"]}
[web:API]
{rules}
{extra}""")
    return ini


def start_twistd(procs: Path, ini: Path, port: int | None, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", TWISTD, "-n", "--pidfile", "", "--logfile", str(log), "janustls", "--port-def", str(ini)],
                            cwd=procs, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    if port is None:
        return proc
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(log.read_text() if log.exists() else "twistd did not start")
            time.sleep(0.2)


BACKEND = """
import json
from fastapi import FastAPI, WebSocket

app = FastAPI()

@app.get("/plain")
async def plain():
    return {"plain": True}

@app.websocket("/ws")
async def ws(websocket: WebSocket):
    await websocket.accept()
    seen = {k: v for k, v in websocket.headers.items() if k.startswith("x-ssl-client") or k.startswith("x-forwarded")}
    text = await websocket.receive_text()
    await websocket.send_text(json.dumps({"headers": seen, "text": text, "path": websocket.url.path}))
    await websocket.close()
"""


@pytest.fixture(scope="module")
def uvicorn_backend(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("uvicorn")
    d = tmp_path_factory.mktemp("backend")
    (d / "backend.py").write_text(BACKEND)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "backend:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.2)
    yield port
    proc.terminate()
    proc.wait(20)


class RawBackend:
    """Answers every connection's first request 200 (keep-alive) and records all it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            data = b""
            conn.settimeout(1.0)
            try:
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        break
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            self.seen.append(data)
            conn.close()


RAW = RawBackend()
server_p12 = [0, 0]  # the TLS 1.2 web port, the srvsock port


@pytest.fixture(scope="module")
def server(pki: Any, tmp_path_factory: pytest.TempPathFactory, uvicorn_backend: int) -> Any:
    procs = tmp_path_factory.mktemp("asgi")
    (procs / "apps.py").write_text(APPS)
    port, pha, p12, line = free_port(), free_port(), free_port(), free_port()
    backend = uvicorn_backend
    server_p12[0], server_p12[1] = p12, line
    ini = write_ini(
        procs,
        pki,
        port,
        f"""
ON /raw/slow = asgi apps:slow
ON /raw/head = asgi apps:rawhead
ON /raw/badname = asgi apps:badname
ON /raw/streamed = asgi apps:streamed
ON POST /raw/ignore = asgi apps:ignore_body
ON /only-bob/* = asgi apps:star allow=cn:bob mount=root
ON /api/* = asgi apps:api mount=root
ON /tunnel/* = forward http://127.0.0.1:{backend}/*
ON /rawtun/* = forward http://127.0.0.1:{RAW.port}/*
ON /fa/* = asgi apps:api
ON /secure/* = asgi apps:star client_cert=require mount=root
ON /* = asgi apps:star
""",
        extra=f"""
[port:PHA]
type = webserv
listen = tcp:{pha}:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
client_cert = none
addca = {pki.files["root.ca"]}
[web:PHA]
ON /secure/* = asgi apps:star client_cert=require mount=root
ON /* = asgi apps:star
[port:P12]
type = webserv
listen = tcp:{p12}:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
client_cert = none
tls_max = 1.2
addca = {pki.files["root.ca"]}
[web:P12]
ON /secure/* = asgi apps:star client_cert=require mount=root
ON /* = asgi apps:star
[port:LINE]
type = srvsock
listen = tcp:{line}:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
client_cert = require
addca = {pki.files["root.ca"]}
handler = apps:line
""",
    )
    log = procs / "server.log"
    proc = start_twistd(procs, ini, port, log)
    yield port, procs, log, pha
    proc.terminate()
    proc.wait(20)


def request(port: int, ctx: ssl.SSLContext, raw: bytes) -> tuple[int, bytes]:
    with tls_connect(port, ctx, 10) as s:
        s.sendall(raw)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        decoded = b""
        while body:
            size_line, _, body = body.partition(b"\r\n")
            size = int(size_line, 16)
            if not size:
                break
            decoded, body = decoded + body[:size], body[size + 2 :]
        body = decoded
    return int(head.split()[1]), body


def get(port: int, ctx: ssl.SSLContext, path: str) -> tuple[int, bytes]:
    return request(port, ctx, f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())


def pem(path: Path) -> str:
    return x509.load_pem_x509_certificates(path.read_bytes())[0].public_bytes(Encoding.PEM).decode()


def test_every_tls_extension_key_from_the_certificate_files(server: Any, pki: Any) -> None:
    port, _, _, _ = server
    status, body = get(port, client_context(pki, "alice", tls="1.3"), "/tls")
    assert status == 200, body
    doc = json.loads(body)
    tls = doc["tls"]
    assert set(tls) == {
        "server_cert",
        "client_cert_chain",
        "client_cert_name",
        "client_cert_error",
        "tls_version",
        "cipher_suite",
    }
    assert "tls" in doc["keys"] and "janustls" in doc["keys"]
    assert tls["server_cert"] == pem(pki.files["server.pem"])
    alice = [
        c.public_bytes(Encoding.PEM).decode() for c in x509.load_pem_x509_certificates(pki.cert("alice").read_bytes())
    ]
    assert tls["client_cert_chain"][:2] == alice[:2]  # leaf first, then its issuer
    assert tls["client_cert_chain"][-1] == pem(pki.files["root.ca"])
    assert (
        tls["client_cert_name"]
        == x509.load_pem_x509_certificate(pki.cert("alice").read_bytes()).subject.rfc4514_string()
    )
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] == 0x0304
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)
    assert doc["janustls"]["cert_info"]["CN"] == "alice" and doc["janustls"]["port"] == "API"


def test_no_certificate_leaves_the_client_keys_empty(server: Any, pki: Any) -> None:
    port, _, _, _ = server
    status, body = get(port, client_context(pki, tls="1.2"), "/tls")
    tls = json.loads(body)["tls"]
    assert status == 200 and tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    assert tls["tls_version"] == 0x0303 and isinstance(tls["cipher_suite"], int)


def test_certificate_asked_on_one_path_is_in_that_scope_and_later_ones(server: Any, pki: Any) -> None:
    _, _, _, port = server
    ctx = client_context(pki, "alice", tls="1.3", post_handshake_auth=True)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with tls_connect(port, ctx, 10) as s:

        def ask(path: str) -> dict[str, Any]:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            out = b""
            while True:
                out += s.recv(65536)
                head, sep, rest = out.partition(b"\r\n\r\n")
                if sep:
                    length = int(
                        next(
                            line.split(b":")[1]
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        )
                    )
                    if len(rest) >= length:
                        return dict(json.loads(rest[:length]))

        before = ask("/tls")
        assert before["tls"]["client_cert_chain"] == []  # TLS 1.3 with PHA: not asked at the handshake
        asked = ask("/secure/tls")
        assert asked["tls"]["client_cert_name"].startswith("CN=alice") or "CN=alice" in asked["tls"]["client_cert_name"]
        assert asked["path"] == "/secure/tls" and asked["root_path"] == ""  # mount=root
        later = ask("/tls")
        assert "CN=alice" in later["tls"]["client_cert_name"] and later["janustls"]["cert_info"]["CN"] == "alice"


def test_fastapi_mount_root_and_prefix(server: Any, pki: Any) -> None:
    port, _, _, _ = server
    ctx = client_context(pki, "bob", tls="1.3")
    status, body = get(port, ctx, "/api/who")
    assert status == 200 and json.loads(body) == {"cn": "bob", "path": "/api/who"}
    status, body = get(port, ctx, "/fa/who")  # mounted at /fa: the app's own /who route, root_path /fa
    assert status == 200 and json.loads(body) == {"cn": "bob", "root_path": "/fa"}


def test_app_that_raises_is_500_logged_and_the_port_keeps_serving(server: Any, pki: Any) -> None:
    port, _, log, _ = server
    ctx = client_context(pki, "alice", tls="1.3")
    status, _ = get(port, ctx, "/boom")
    assert status == 500
    deadline = time.monotonic() + 5
    while "the app failed" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "the app failed" in log.read_text()
    assert get(port, ctx, "/state") == (200, b"started")  # lifespan state reached the request


def test_request_body_reaches_the_app(server: Any, pki: Any) -> None:
    port, _, _, _ = server
    status, body = request(port, client_context(pki, "alice", tls="1.3"),
                           b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")  # fmt: skip
    assert (status, body) == (200, b"got hello")


def test_lifespan_startup_and_shutdown(pki: Any, tmp_path: Path) -> None:
    (tmp_path / "apps.py").write_text(APPS)
    port = free_port()
    ini = write_ini(tmp_path, pki, port, "ON /* = asgi apps:star")
    proc = start_twistd(tmp_path, ini, port, tmp_path / "server.log")
    try:
        assert get(port, client_context(pki, "alice"), "/state") == (200, b"started")
        assert (tmp_path / "lifespan.log").read_text() == "startup\n"
    finally:
        proc.terminate()
        proc.wait(20)
    assert (tmp_path / "lifespan.log").read_text() == "startup\nshutdown\n"


def test_failing_startup_stops_the_server_with_its_error(pki: Any, tmp_path: Path) -> None:
    (tmp_path / "apps.py").write_text(APPS)
    ini = write_ini(tmp_path, pki, free_port(), "ON /* = asgi apps:bad_startup")
    proc = start_twistd(tmp_path, ini, None, tmp_path / "server.log")
    assert proc.wait(30) is not None
    assert "no database" in (tmp_path / "server.log").read_text()


def test_check_tells_wsgi_from_asgi(pki: Any, tmp_path: Path) -> None:
    (tmp_path / "apps.py").write_text(APPS)
    for rules, expected in (("ON /* = wsgi apps:star", "is an ASGI application; serve it with: asgi apps:star"),
                            ("ON /* = asgi apps:wsgi_app", "is a WSGI application; serve it with: wsgi apps:wsgi_app")):  # fmt: skip
        ini = write_ini(tmp_path, pki, free_port(), rules)
        out = subprocess.run([sys.executable, "-m", "janustls.cli", "check", str(ini)], cwd=tmp_path, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)  # fmt: skip
        assert out.returncode == 1 and expected in out.stderr, out.stderr


def test_check_warns_about_a_webserv_port_without_a_table(pki: Any, tmp_path: Path) -> None:
    ini = write_ini(tmp_path, pki, free_port(), "")
    text = ini.read_text().replace("[web:API]\n", "")
    ini.write_text(text)
    out = subprocess.run([sys.executable, "-m", "janustls.cli", "check", str(ini)], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)  # fmt: skip
    assert "no [web:API] table" in out.stdout, (out.stdout, out.stderr)


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("certutil") is None or shutil.which("pk12util") is None,
                    reason="needs chromium and libnss3-tools")  # fmt: skip
def test_chromium_renegotiates_for_a_client_cert_require_asgi_path(server: Any, pki: Any, tmp_path: Path) -> None:
    from tests.test_web_browser import Browser  # the browser harness of the web tests

    url = f"https://127.0.0.1:{server_p12[0]}"
    dom, err = Browser(tmp_path, pki, "alice", [url]).dom(url + "/secure/tls")
    assert "CN=alice" in dom and "771" in dom, err[-2000:]  # tls_version 0x0303 = 771: TLS 1.2 renegotiation


def test_sslnocerterr_and_forbidden_answered_before_the_app(server: Any, pki: Any) -> None:
    port, _, _, pha = server
    status, body = get(pha, client_context(pki, tls="1.3"), "/secure/tls")  # cannot be asked (no PHA offered)
    assert status == 403 and b"client_cert_chain" not in body
    status, body = get(port, client_context(pki, "alice", tls="1.3"), "/only-bob/tls")
    assert status == 403 and b"client_cert_chain" not in body
    status, body = get(port, client_context(pki, "bob", tls="1.3"), "/only-bob/tls")
    assert status == 404  # bob passes; the Starlette app has no /only-bob/tls route (mount=root)


def test_app_that_never_reads_its_body(server: Any, pki: Any) -> None:
    port, _, _, _ = server
    status, body = request(port, client_context(pki, "alice", tls="1.3"),
                           b"POST /raw/ignore HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10000\r\nConnection: close\r\n\r\n" + b"x" * 10000)  # fmt: skip
    assert (status, body) == (200, b"ok")


def test_client_gone_mid_response_the_app_sees_http_disconnect(server: Any, pki: Any) -> None:
    port, procs, _, _ = server
    with tls_connect(port, client_context(pki, "alice", tls="1.3"), 10) as s:
        s.sendall(b"GET /raw/slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        out = b""
        while b"first" not in out:
            out += s.recv(65536)
    deadline = time.monotonic() + 10
    log = procs / "disconnect.log"
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.read_text() == "http.disconnect"


def test_a_srvsock_port_in_the_same_process_works_under_the_asyncio_reactor(server: Any, pki: Any) -> None:
    _, _, log, _ = server
    with tls_connect(server_p12[1], client_context(pki, "alice", tls="1.3"), 10) as s:
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    assert out == b"line port under the asyncio reactor: alice\n"
    assert "AsyncioSelectorReactor" in log.read_text()  # installed by janustls: twistd got no -r


def test_websocket_echoes_and_sees_the_cn(server: Any, pki: Any) -> None:
    from websockets.sync.client import connect

    port, _, _, _ = server
    with connect(f"wss://127.0.0.1:{port}/ws", ssl=client_context(pki, "alice", tls="1.3"), open_timeout=10) as ws:
        for text in ("hello", "again"):
            ws.send(text)
            answer = ws.recv(timeout=10)
            assert answer.startswith("alice (") and "CN=alice" in answer and answer.endswith(f"said: {text}"), answer


def test_websocket_through_forward_to_uvicorn_with_identity_headers(server: Any, pki: Any) -> None:
    from websockets.sync.client import connect

    port, _, _, _ = server
    forged = {"X-SSL-Client-CN": "mallory", "X-SSL-Client_Verify": "SUCCESS", "X-Forwarded-For": "10.6.6.6"}
    with connect(f"wss://127.0.0.1:{port}/tunnel/ws", ssl=client_context(pki, "alice", tls="1.3"), additional_headers=forged,
                 open_timeout=10) as ws:  # fmt: skip
        ws.send("through")
        doc = json.loads(ws.recv(timeout=10))
    assert doc["text"] == "through" and doc["path"] == "/ws"
    assert doc["headers"]["x-ssl-client-cn"] == "alice" and doc["headers"]["x-ssl-client-verify"] == "SUCCESS"
    assert (
        doc["headers"]["x-forwarded-for"] == "127.0.0.1"
        and "mallory" not in json.dumps(doc)
        and "10.6.6.6" not in json.dumps(doc)
    )


def test_upgrade_refused_by_the_backend_smuggles_nothing(server: Any, pki: Any) -> None:
    """The backend answers 200 to an Upgrade (no 101): the client's next bytes never reach it."""
    port, _, _, _ = server
    smuggled = b"GET /plain HTTP/1.1\r\nHost: x\r\nX-SSL-Client-CN: mallory\r\n\r\n"
    out, _ = b"", None
    with tls_connect(port, client_context(pki, "alice", tls="1.3"), 10) as s:
        s.sendall(
            b"GET /rawtun/plain HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            + smuggled
        )
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    assert out.startswith(b"HTTP/1.1 200") and out.count(b"HTTP/1.1 ") == 1, out  # one answer, then closed
    deadline = time.monotonic() + 5
    while not RAW.seen and time.monotonic() < deadline:
        time.sleep(0.1)
    assert RAW.seen and b"GET /plain" in RAW.seen[-1] and b"mallory" not in RAW.seen[-1], (
        RAW.seen
    )  # only the head went on


def _response(s: Any, buf: bytearray, head_request: bool = False) -> tuple[bytes, dict[bytes, list[bytes]], bytes]:
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, bytes(buf)
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    status, *lines = bytes(buf[:end]).split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = 0 if head_request else int(headers[b"content-length"][0])
    del buf[: end + 4]
    while len(buf) < length:
        buf += s.recv(65536)
    body = bytes(buf[:length])
    del buf[:length]
    return status, headers, body


def test_whole_asgi_response_has_length_server_date_and_clean_headers(server: Any, pki: Any) -> None:
    port, _, _, _ = server
    with tls_connect(port, client_context(pki, "alice", tls="1.3"), 10) as s:
        buf = bytearray()
        for _ in range(2):  # keep-alive
            s.sendall(b"GET /raw/head HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, headers, body = _response(s, buf)
            assert status == b"HTTP/1.1 200 OK" and body == b"hello"
            assert headers[b"content-length"] == [b"5"] and headers[b"content-type"] == [b"text/plain"]
            assert len(headers[b"server"]) == 1 and headers[b"date"][0].endswith(b"GMT")
            assert headers[b"x-inject"] == [b"a X-Evil: 1"] and b"x-evil" not in headers  # no header injected
        s.sendall(
            b"HEAD /raw/head HTTP/1.1\r\nHost: localhost\r\n\r\nGET /raw/head HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        status, headers, body = _response(s, buf, head_request=True)
        assert status == b"HTTP/1.1 200 OK" and headers[b"content-length"] == [b"5"] and body == b""
        status, _, body = _response(s, buf)  # nothing of a body was sent for HEAD
        assert status == b"HTTP/1.1 200 OK" and body == b"hello"
        s.sendall(b"GET /raw/head HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        status, headers, body = _response(s, buf)
        assert headers[b"connection"] == [b"close"] and body == b"hello"
        assert s.recv(1) == b""


def test_asgi_invalid_header_name_is_500_and_streamed_response_is_chunked(server: Any, pki: Any) -> None:
    port, _, _, _ = server
    ctx = client_context(pki, "alice", tls="1.3")
    status, body = get(port, ctx, "/raw/badname")
    assert status == 500 and b"never" not in body
    status, body = get(port, ctx, "/raw/streamed")
    assert (status, body) == (201, b"ab")


def test_small_asgi_response_is_one_record(server: Any, pki: Any) -> None:
    from tests.test_web_records import APPLICATION_DATA, RecordClient

    port, _, _, _ = server
    client = RecordClient(port, client_context(pki, "alice", tls="1.3"))
    try:
        client.send(b"GET /raw/head HTTP/1.1\r\nHost: localhost\r\n\r\n")
        client.read_response()  # the session tickets arrive around the first answer
        client.send(b"GET /raw/head HTTP/1.1\r\nHost: localhost\r\n\r\n")
        before = len(client.records)
        response = client.read_response()
        records = client.records[before:]
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"hello"), response
        assert [kind for kind, _ in records] == [APPLICATION_DATA], records
    finally:
        client.close()
