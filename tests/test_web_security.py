"""Web ports under attack: path tricks, key files, forged identity headers, request framing,
slow and oversized requests.  Raw requests over real TLS (`ssl` sockets, `curl --path-as-is`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from janustls.core.config import load_definitions
from tests.support import Server, client_context, tls_connect

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


VIEWS = """
def show(request):
    return "path=" + request.path.decode("latin-1")

def size(request):
    return "size=%d" % len(request.content.read())
"""

WSGI = """
import json

def app(environ, start_response):
    seen = {k: v for k, v in environ.items() if isinstance(v, str)
            and (k in ("PATH_INFO", "SCRIPT_NAME") or k.startswith("HTTP_X"))}
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


class RawBackend:
    """An HTTP backend that records every byte of every connection and answers once."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(0.5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            # everything the proxy sends on this connection, smuggled bytes included
            end = time.monotonic() + 0.5
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
        out = json.dumps({"raw": data.decode("latin-1")}).encode()
        try:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % len(out)
                + out
            )
        except OSError:
            pass
        conn.close()


def parse_forwarded(raw: str) -> tuple[str, list[tuple[str, str]], bytes, bytes]:
    """(request line, headers, body as framed by the headers, bytes left after it)."""
    data = raw.encode("latin-1")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
    names = {n.lower(): v for n, v in headers}
    if "transfer-encoding" in names:
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                _, _, rest = rest.partition(b"\r\n")
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        return lines[0], headers, body, rest
    length = int(names.get("content-length", "0"))
    return lines[0], headers, rest[:length], rest[length:]


@pytest.fixture(scope="module")
def backend():
    b = RawBackend()
    yield b
    b.sock.close()


def write_tree(procs: Path, pki: Any) -> None:
    (procs / "static").mkdir()
    (procs / "static" / "hello.txt").write_text("hello\n")
    (procs / "files").mkdir()
    (procs / "files" / "ok.txt").write_text("fine\n")
    (procs / "files" / ".secret").write_text("dotfile\n")
    shutil.copy(pki.files["server.key"], procs / "files" / "notes.txt")  # a key under another name
    (procs / "pki" / "server").mkdir(parents=True)
    shutil.copy(pki.files["server.pem"], procs / "pki" / "server" / "chain.pem")
    shutil.copy(pki.files["server.key"], procs / "pki" / "server" / "key.pem")
    os.symlink(procs / "pki" / "server" / "key.pem", procs / "files" / "link.txt")
    (procs / "nocert.html").write_text("<h1>no certificate</h1>\n")
    (procs / "views.py").write_text(VIEWS)
    (procs / "wsgiapp.py").write_text(WSGI)


PORT = """
type = webserv
listen = tcp:0:interface=127.0.0.1
certificate = pki/server/chain.pem
private_key = pki/server/key.pem
client_cert = none
addca = {root}
"""


@pytest.fixture(scope="module")
def web(pki, reactor, backend, tmp_path_factory):
    procs = tmp_path_factory.mktemp("procs")
    write_tree(procs, pki)
    ini = procs / "ports.ini"
    ini.write_text(
        f"""
[janustls]
procs = .
[port:WEB]
{PORT.format(root=pki.files["root.ca"])}
[web:WEB]
ON /static/* = page static/*
ON /files/* = page files/*
ON /lib/* = page *
ON /app/* = call views:show
ON /secure/* = call views:show client_cert=require
ON /pub/* = wsgi wsgiapp:app
ON /admin/* = wsgi wsgiapp:app client_cert=require
ON /api/* = forward http://127.0.0.1:{backend.port}/api/*
ON /idapi/* = forward http://127.0.0.1:{backend.port}/api/* client_cert=request
ON /secure-api/* = forward http://127.0.0.1:{backend.port}/secure-api/* client_cert=require
ON POST /upload = call views:size
ON POST /small = call views:size max_body=100
ON SSLNOCERTERR = page nocert.html status=403
"""
    )
    s = Server(load_definitions(ini))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def slow(pki, reactor, tmp_path_factory):
    """A port with one-second HTTP timeouts."""
    procs = tmp_path_factory.mktemp("procs")
    write_tree(procs, pki)
    ini = procs / "ports.ini"
    ini.write_text(
        f"""
[janustls]
procs = .
[port:SLOW]
{PORT.format(root=pki.files["root.ca"])}
header_timeout = 1
body_timeout = 1
keepalive_timeout = 1
[web:SLOW]
ON /app/* = call views:show
ON POST /upload = call views:size
"""
    )
    s = Server(load_definitions(ini))
    yield s
    s.stop()


def ctx(pki: Any, cert: str | None = None) -> Any:
    return client_context(pki, cert, tls="1.3", post_handshake_auth=cert is not None)


def raw(port: int, request: bytes, pki: Any, cert: str | None = None, timeout: float = 10.0) -> bytes:
    """Send one raw request and read until the server closes the connection."""
    with tls_connect(port, ctx(pki, cert), timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def get(
    web: Server, path: str, pki: Any, cert: str | None = None, headers: str = "", port: str = "WEB"
) -> tuple[int, bytes]:
    out = raw(
        web.port(port),
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n".encode("latin-1"),
        pki,
        cert,
    )
    status_line, _, rest = out.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def curl(pki: Any, port: int, path: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    args = ["curl", "-sS", "--path-as-is", "--cacert", str(pki.files["root.ca"]), f"https://localhost:{port}{path}",
            "--resolve", f"localhost:{port}:127.0.0.1", "-w", "\n%{http_code}", *extra]  # fmt: skip
    return subprocess.run(args, capture_output=True, timeout=20)


# -- pages: the key leak -----------------------------------------------------------------------

KEY_PATHS = [
    "/static/../pki/server/key.pem",
    "/static/%2e%2e/pki/server/key.pem",
    "/static/%2E%2e/pki/server/key.pem",
    "/static/.%2E/pki/server/key.pem",
    "/static/..%2fpki%2fserver%2fkey.pem",
    "/static/..%2Fpki/server/key.pem",
    "/static/..%5cpki%5cserver%5ckey.pem",
    "/static/..\\pki\\server\\key.pem",
    "/static//../pki/server/key.pem",
    "/static/%c0%ae%c0%ae/pki/server/key.pem",
    "/static/..;/pki/server/key.pem",
    "/static/%252e%252e/pki/server/key.pem",
    "/static/../ports.ini",
    "/static/../views.py",
    "/files/notes.txt",
    "/files/link.txt",
    "/files/.secret",
    "/files/%2esecret",
    "/lib/pki/server/key.pem",
    "/lib/pki/server/chain.pem",
    "/lib/ports.ini",
    "/lib/pki//server/key.pem",
    "/lib/pki/server/key.pem.",
    "/lib/pki/server/key.pem%20",
]


@pytest.mark.parametrize("path", KEY_PATHS)
def test_page_never_serves_key_material(web, pki, path):
    status, body = get(web, path, pki)
    assert status in (400, 404), (status, body[:200])
    assert b"PRIVATE KEY" not in body and b"[port:" not in body and b"def show" not in body


@pytest.mark.parametrize(
    "path", ["/static/../pki/server/key.pem", "/static/%2e%2e/pki/server/key.pem", "/lib/pki/server/key.pem"]
)
def test_page_key_leak_with_curl_path_as_is(web, pki, path):
    out = curl(pki, web.port("WEB"), path)
    assert out.returncode == 0, out.stderr
    assert b"PRIVATE KEY" not in out.stdout
    assert out.stdout.rsplit(b"\n", 1)[1] in (b"400", b"404")


def test_pages_still_served(web, pki):
    assert get(web, "/static/hello.txt", pki) == (200, b"hello\n")
    assert get(web, "/static/./hello.txt", pki) == (200, b"hello\n")
    assert get(web, "/static/%68ello.txt", pki) == (200, b"hello\n")
    assert get(web, "/files/ok.txt", pki) == (200, b"fine\n")


# -- dot-segments and encodings against certificate rules -------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/../secure-api/data.txt",
        "/api/%2e%2e/secure-api/data.txt",
        "/api/%2E%2E/secure-api/data.txt",
        "/api/./../secure-api/data.txt",
        "/api/x/../../secure-api/data.txt",
        "//secure-api/data.txt",
        "/api/../secure-api//data.txt",
        "/pub/../admin/x",
        "/pub/%2e%2e/admin/x",
        "/app/../secure/x",
        "/app/%2e%2e/secure/x",
        "/%73ecure/x",
    ],
)
def test_dot_segments_do_not_pass_client_cert_rules(web, pki, backend, path):
    before = len(backend.seen)
    status, body = get(web, path, pki)
    assert status == 403 and body == b"<h1>no certificate</h1>\n", (status, body[:300])
    time.sleep(0.05)
    assert not any(b"secure-api" in seen for seen in backend.seen[before:])


@pytest.mark.parametrize(
    "path",
    [
        "/api/..%2fsecure-api/data.txt",
        "/api/..%2Fsecure-api/data.txt",
        "/api/..%5csecure-api/data.txt",
        "/api/..\\secure-api/data.txt",
        "/api/x%00/y",
        "/api/%c0%ae%c0%ae/secure-api/x",
        "/api/%e0%80%ae/x",
        "/api/%ff/x",
        "/api/%zz/x",
        "/secure;jsessionid=1/x",
        "/api/..;/secure-api/x",
        "/secure./x",
        "/secure%2e/x",
        "/secure%20/x",
        "/secure%09/x",
        "/../secure/x",
        "/api/../../secure/x",
    ],
)
def test_unsafe_paths_refused(web, pki, backend, path):
    before = len(backend.seen)
    status, _ = get(web, path, pki)
    assert status == 400, status
    time.sleep(0.05)
    assert backend.seen[before:] == []


def test_forward_does_not_escape_its_prefix(web, pki, backend):
    before = len(backend.seen)
    assert get(web, "/api/../internal/x", pki)[0] == 404
    assert get(web, "/api/%2e%2e/internal/x", pki)[0] == 404
    assert backend.seen[before:] == []


def test_forward_sends_the_normal_form(web, pki, backend):
    status, body = get(web, "/api/a/./b/../c%20d/%7euser?q=%2e", pki)
    assert status == 200
    line, _, _, _ = parse_forwarded(json.loads(body)["raw"])
    assert line.startswith("GET /api/a/c%20d/~user?q=%2e HTTP/1.")


def test_wsgi_paths_are_decoded_and_normalised(web, pki):
    status, body = get(web, "/pub/a/../b%20c/%C3%A9", pki)
    assert status == 200
    env = json.loads(body)
    assert env["SCRIPT_NAME"] == "/pub"
    assert env["PATH_INFO"] == "/b c/" + "é".encode().decode("latin-1")  # PEP 3333: bytes as latin-1


def test_call_handlers_see_the_normal_form(web, pki):
    assert get(web, "/app/x/./y/%7e", pki) == (200, b"path=/app/x/y/~")


# -- forged identity headers -------------------------------------------------------------------

FORGED = (
    "X-SSL-Client_CN: admin\r\n"
    "x-ssl-client-cn: admin\r\n"
    "X-Ssl-Client-Verify: SUCCESS\r\n"
    "X_SSL_CLIENT_S_DN: CN=admin\r\n"
    "X-SSL-CLIENT_Fingerprint: 00\r\n"
    "X-Forwarded_For: 10.0.0.1\r\n"
    "X-Forwarded-Proto: http\r\n"
)


@pytest.mark.parametrize("cert", [None, "alice"])
def test_forged_identity_headers_never_reach_a_forward_backend(web, pki, cert):
    status, body = get(web, "/idapi/who", pki, cert, FORGED)
    assert status == 200
    _, headers, _, _ = parse_forwarded(json.loads(body)["raw"])
    canon = [(n.lower().replace("_", "-"), v) for n, v in headers]
    assert "admin" not in json.dumps(canon) and "10.0.0.1" not in json.dumps(canon)
    identity = [(n, v) for n, v in canon if n.startswith("x-ssl-client")]
    assert len({n for n, _ in identity}) == len(identity)  # each once
    assert dict(identity)["x-ssl-client-verify"] == ("SUCCESS" if cert else "NONE")
    if cert:
        assert dict(identity)["x-ssl-client-cn"] == "alice"
    assert [v for n, v in canon if n == "x-forwarded-proto"] == ["https"]
    assert [v for n, v in canon if n == "x-forwarded-for"] == ["127.0.0.1"]


def test_forged_identity_headers_never_reach_a_wsgi_app(web, pki):
    status, body = get(web, "/pub/who", pki, None, FORGED)
    assert status == 200
    env = json.loads(body)
    assert not [k for k in env if k.startswith(("HTTP_X_SSL_CLIENT", "HTTP_X_FORWARDED"))], env


# -- request framing ---------------------------------------------------------------------------


def test_chunked_upload_forwarded_intact(web, pki):
    body = b"hello world, this is a chunked upload"
    chunks = (
        b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7))
        + b"0\r\n\r\n"
    )
    req = (
        b"POST /api/up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks
    )
    out = raw(web.port("WEB"), req, pki)
    assert out.startswith(b"HTTP/1.1 200")
    _, headers, got, rest = parse_forwarded(json.loads(out.partition(b"\r\n\r\n")[2])["raw"])
    names = [n.lower() for n, _ in headers]
    assert got == body and rest == b""
    assert names.count("content-length") == 1 and "transfer-encoding" not in names


def test_no_smuggled_request_on_the_backend_socket(web, pki):
    smuggled = (
        b"0\r\n\r\nGET /api/admin HTTP/1.1\r\nHost: x\r\nX-SSL-Client-CN: admin\r\nX-SSL-Client-Verify: SUCCESS\r\n\r\n"
    )
    req = (b"POST /api/up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           + b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled))  # fmt: skip
    out = raw(web.port("WEB"), req, pki)
    assert out.startswith(b"HTTP/1.1 200")
    seen = json.loads(out.partition(b"\r\n\r\n")[2])["raw"]
    line, _, got, rest = parse_forwarded(seen)
    assert line.startswith("POST /api/up ")
    assert got == smuggled and rest == b""  # the payload stays a body: no second request


def test_post_without_body_forwarded_with_length(web, pki):
    out = raw(
        web.port("WEB"),
        b"POST /api/empty HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        pki,
    )
    _, headers, got, rest = parse_forwarded(json.loads(out.partition(b"\r\n\r\n")[2])["raw"])
    assert {n.lower(): v for n, v in headers}.get("content-length") == "0" and got == b"" and rest == b""


@pytest.mark.parametrize(
    "framing",
    [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Content-Length: +5\r\n",
    ],
)
def test_conflicting_framing_refused(web, pki, backend, framing):
    before = len(backend.seen)
    out = raw(
        web.port("WEB"),
        f"POST /api/x HTTP/1.1\r\nHost: localhost\r\n{framing}Connection: close\r\n\r\nhello".encode(),
        pki,
    )
    assert out.startswith(b"HTTP/1.1 400")
    assert backend.seen[before:] == []


# -- limits ------------------------------------------------------------------------------------


def closed_within(s: Any, seconds: float, trickle: bytes | None = None, every: float = 0.2) -> float:
    """Seconds until the server closes `s` (sending `trickle` every `every` s meanwhile)."""
    start = time.monotonic()
    s.settimeout(every)
    while time.monotonic() - start < seconds:
        try:
            data = s.recv(65536)
            if not data:
                return time.monotonic() - start
        except TimeoutError:
            pass
        except (ConnectionError, OSError):
            return time.monotonic() - start
        if trickle:
            try:
                s.sendall(trickle)
            except OSError:
                return time.monotonic() - start
    raise AssertionError(f"still open after {seconds}s")


def test_trickling_headers_closed_by_header_timeout(slow, pki, events):
    mark = events.mark()
    with tls_connect(slow.port("SLOW"), ctx(pki)) as s:
        s.sendall(b"GET /app/x HTTP/1.1\r\nHost: localhost\r\n")
        took = closed_within(s, 10.0, trickle=b"X-A: b\r\n")
    assert 0.8 < took < 6.0
    events.wait_for(mark, "janustls.web.header_timeout", "SLOW")


def test_trickling_body_closed_by_body_timeout(slow, pki, events):
    mark = events.mark()
    with tls_connect(slow.port("SLOW"), ctx(pki)) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\nxx")
        took = closed_within(s, 10.0, trickle=b"x")
    assert 0.8 < took < 6.0
    events.wait_for(mark, "janustls.web.body_timeout", "SLOW")


def test_idle_keepalive_closed(slow, pki, events):
    mark = events.mark()
    with tls_connect(slow.port("SLOW"), ctx(pki)) as s:
        s.sendall(b"GET /app/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        took = closed_within(s, 10.0)
    assert took < 6.0
    events.wait_for(mark, "janustls.web.keepalive_timeout", "SLOW")


def test_requests_before_the_timeouts_are_served(slow, pki):
    with tls_connect(slow.port("SLOW"), ctx(pki)) as s:
        for _ in range(3):
            s.sendall(b"GET /app/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            s.settimeout(5)
            out = b""
            while not out.endswith(b"path=/app/x"):
                data = s.recv(65536)
                assert data, out
                out += data
            assert out.startswith(b"HTTP/1.1 200")
            time.sleep(0.5)


def test_over_long_header_line_answered_and_closed(web, pki, events):
    mark = events.mark()
    with tls_connect(web.port("WEB"), ctx(pki)) as s:
        s.sendall(b"GET /app/x HTTP/1.1\r\nHost: localhost\r\nX-Long: " + b"a" * 40000 + b"\r\n\r\n")
        s.settimeout(10)
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            out += data
    assert out.startswith(b"HTTP/1.1 431") and b"connection: close" in out.lower()
    events.wait_for(mark, "janustls.web.headers_too_large", "WEB")


def test_header_section_over_the_limit_answered_and_closed(web, pki):
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(300))
    out = raw(web.port("WEB"), b"GET /app/x HTTP/1.1\r\nHost: localhost\r\n" + many + b"\r\n", pki)
    assert out.startswith(b"HTTP/1.1 431")


def test_huge_content_length_refused_at_once_and_closed(web, pki, events):
    mark = events.mark()
    start = time.monotonic()
    out = raw(web.port("WEB"), b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 53687091200\r\n\r\n", pki)
    assert time.monotonic() - start < 5
    assert out.startswith(b"HTTP/1.1 413") and b"connection: close" in out.lower()
    events.wait_for(mark, "janustls.web.body_too_large", "WEB")


def test_rule_max_body_chunked_refused_and_closed(web, pki):
    req = (
        b"POST /small HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"80\r\n"
        + b"x" * 128
        + b"\r\n"
    )
    out = raw(web.port("WEB"), req, pki)
    assert out.startswith(b"HTTP/1.1 413") and b"connection: close" in out.lower()
    ok = raw(
        web.port("WEB"),
        b"POST /small HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\nConnection: close\r\n\r\n" + b"x" * 100,
        pki,
    )
    assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"size=100")


# -- a 50 GiB Content-Length against a server process: memory and temporary files -------------

#: The server's resident memory may grow by at most this much while a client pushes a
#: 50 GiB body at it (the body is refused before any of it is stored).
RSS_BOUND = 16 * 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_50_gib_content_length_bounded_rss_and_no_temp_files(pki, tmp_path):
    procs = tmp_path / "procs"
    procs.mkdir()
    write_tree(procs, pki)
    port = free_port()
    ini = procs / "ports.ini"
    ini.write_text(
        f"[janustls]\nprocs = .\n[port:BIG]\n{PORT.format(root=pki.files['root.ca']).replace('tcp:0', f'tcp:{port}')}\n[web:BIG]\nON POST /upload = call views:size\n"
    )
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp))
    code = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    proc = subprocess.Popen([sys.executable, "-c", code, "-n", "--pidfile", "", "--logfile", str(tmp_path / "server.log"),
                             "janustls", "--port-def", str(ini)], cwd=tmp_path, env=env,
                            stderr=open(tmp_path / "server.log", "ab"))  # noqa: SIM115  # the server's log, open for the process's life  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        log = tmp_path / "server.log"
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                log = tmp_path / "server.log"
                assert time.monotonic() < deadline, log.read_text() if log.exists() else "server did not start"
                time.sleep(0.2)
        before = rss(proc.pid)
        sent = 0
        answer = b""
        with tls_connect(port, ctx(pki), timeout=10) as s:
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 53687091200\r\n\r\n")
            block = b"x" * 65536
            s.settimeout(0.01)
            try:
                while sent < 64 * 1024 * 1024:  # push 64 MiB unless the server stops us first
                    s.sendall(block)
                    sent += len(block)
                    try:
                        data = s.recv(65536)
                        if not data:
                            break
                        answer += data
                    except (TimeoutError, ssl_want_read()):
                        pass
            except OSError:
                pass
            s.settimeout(5)
            try:
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    answer += data
            except OSError:
                pass
        after = rss(proc.pid)
        assert list(tmp.iterdir()) == []  # nothing of the body was stored
        assert after - before < RSS_BOUND, (before, after)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        print(f"RSS before {before} after {after}; pushed {sent} bytes before the close")
    finally:
        proc.terminate()
        proc.wait(20)


def ssl_want_read() -> type:
    import ssl

    return ssl.SSLWantReadError


# -- janustls check ----------------------------------------------------------------------------


def test_check_warns_when_a_page_rule_could_serve_keys(pki, reactor, tmp_path):
    import io

    from janustls.cli import describe

    procs = tmp_path / "procs"
    procs.mkdir()
    write_tree(procs, pki)
    ini = procs / "ports.ini"
    ini.write_text(
        f"[janustls]\nprocs = .\n[port:W]\n{PORT.format(root=pki.files['root.ca'])}\n[web:W]\nON /lib/* = page *\nON /static/* = page static/*\n"
    )
    out = io.StringIO()
    assert describe(str(ini), out) == 0
    text = out.getvalue()
    assert "warning: [web:W] ON /lib/* = page * could serve" in text
    assert str((procs / "pki" / "server" / "key.pem").resolve()) in text and str(ini.resolve()) in text
    assert "ON /static/*" not in text.split("warning:", 1)[1]
