"""TLS records on the wire: a small response leaves as one application-data record, for every
port type (writes of one reactor turn are coalesced).  A raw socket and Python's `ssl` over
memory BIOs: the test sees each record's header before OpenSSL decrypts it."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest

from janustls.core.config import load_definitions
from tests.support import Server, client_context

APPLICATION_DATA = 23


class RecordClient:
    """A TLS client that counts the server's records by content type, as they arrive."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.records: list[tuple[int, int]] = []  # (content type, length)
        self._partial = b""
        self.plain = b""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_out()
                self._receive()
        self._send_out()

    def _send_out(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self._partial += data
        while len(self._partial) >= 5:
            length = int.from_bytes(self._partial[3:5], "big")
            if len(self._partial) < 5 + length:
                break
            self.records.append((self._partial[0], length))
            self.incoming.write(self._partial[: 5 + length])
            self._partial = self._partial[5 + length :]

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._send_out()

    def read_response(self) -> bytes:
        """One HTTP response (Content-Length framed), read to its last byte."""
        while True:
            head, sep, rest = self.plain.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                if len(rest) >= length:
                    self.plain = rest[length:]
                    return head + sep + rest[:length]
            try:
                self.plain += self.tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            self._send_out()
            self._receive()

    def read_line(self) -> bytes:
        while b"\n" not in self.plain:
            try:
                self.plain += self.tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            self._send_out()
            self._receive()
        line, _, self.plain = self.plain.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        self.sock.close()


HANDLERS = """
def serve(conn):
    conn.write(b"hello ")
    conn.write(b"there ")
    conn.write(b"%s\\n" % (conn.cert_info("CN") or "nobody").encode())
    conn.close()

def cn(request):
    return "hello %s" % request.cert_info("CN")
"""


@pytest.fixture(scope="module")
def ports(pki: Any, reactor: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    procs = tmp_path_factory.mktemp("procs")
    (procs / "hello.txt").write_text("hello, a small page\n")
    (procs / "h.py").write_text(HANDLERS)
    ini = procs / "ports.ini"
    common = f"""listen = tcp:0:interface=127.0.0.1
certificate = {pki.files["server.pem"]}
private_key = {pki.files["server.key"]}
client_cert = require
addca = {pki.files["root.ca"]}
"""
    ini.write_text(f"""
[janustls]
procs = .
[port:WEB]
type = webserv
{common}
[web:WEB]
ON /hello.txt = page hello.txt
ON /cn = call h:cn
[port:LINE]
type = srvsock
handler = h:serve
{common}
""")
    s = Server(load_definitions(ini))
    yield s
    s.stop()


def _request_records(client: RecordClient, path: str) -> tuple[bytes, list[tuple[int, int]]]:
    client.send(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    before = len(client.records)
    response = client.read_response()
    return response, client.records[before:]


@pytest.mark.parametrize("path", ["/hello.txt", "/cn"])
def test_small_web_response_is_one_record(ports: Any, pki: Any, path: str) -> None:
    client = RecordClient(ports.port("WEB"), client_context(pki, "alice", tls="1.3"))
    try:
        first, _ = _request_records(client, path)  # the session tickets arrive around the first answer
        assert first.startswith(b"HTTP/1.1 200")
        response, records = _request_records(client, path)
        assert response.startswith(b"HTTP/1.1 200"), response
        assert response.endswith(b"hello, a small page\n" if path == "/hello.txt" else b"hello alice"), response
        assert records and all(kind == APPLICATION_DATA for kind, _ in records)
        assert len(records) == 1, f"{len(records)} records for one small response: {records}"
    finally:
        client.close()


def test_line_port_writes_of_one_turn_are_one_record(ports: Any, pki: Any) -> None:
    client = RecordClient(ports.port("LINE"), client_context(pki, "alice", tls="1.3"))
    try:
        line = client.read_line()
        assert line == b"hello there alice\n"
        data_records = [r for r in client.records if r[0] == APPLICATION_DATA]
        # the handshake's encrypted flight, the session tickets, and one record for the three writes
        sizes = [n for _, n in data_records]
        assert any(n == len(line) + 17 for n in sizes), sizes  # 16-byte tag + the inner content type
        assert 6 + 17 not in sizes, sizes  # no record holds one write alone
    finally:
        client.close()
