"""proxy ports and the PROXY protocol, with real servers on loopback.

A backend in the test (plain sockets, a thread per connection) records the bytes and
the PROXY v2 header janustls sent it; HAProxy (the Debian package, started here with a
generated configuration) sits in front of a `proxy_protocol = yes` port.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from janustls.core import proxyproto
from janustls.errors import ConfigErrors
from janustls.ports.proxy import PENDING_LIMIT, ProxyProtocol
from tests.support import client_context, definitions, free_port, in_reactor, install_handlers, secure_port, start

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
MB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------------


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def closed_by_server(sock: socket.socket) -> bool:
    """The server ended the connection: EOF or a reset (an aborted connection)."""
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def duplex(s: ssl.SSLSocket, payload: bytes, expect: int, timeout: float = 60) -> bytes:
    """Send `payload` while reading `expect` bytes, in one thread: an SSL object must not be
    used by two threads at once (a reader and a writer thread can deadlock OpenSSL)."""
    s.setblocking(False)
    view = memoryview(payload)
    sent = 0
    got = bytearray()
    deadline = time.monotonic() + timeout
    while sent < len(view) or len(got) < expect:
        assert time.monotonic() < deadline, f"sent {sent}, got {len(got)}"
        if not s.pending():
            select.select([s] if len(got) < expect else [], [s] if sent < len(view) else [], [], 1)
        if len(got) < expect:
            try:
                data = s.recv(1 << 20)
                if not data:
                    raise EOFError(f"EOF after {len(got)} of {expect} bytes")
                got += data
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if sent < len(view):
            try:
                sent += s.send(view[sent : sent + 262144])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
    s.setblocking(True)
    return bytes(got)


def read_v2_header(sock: socket.socket) -> bytes:
    head = recv_exactly(sock, 16)
    assert head[:12] == b"\r\n\r\n\x00\r\nQUIT\n", head
    (length,) = struct.unpack("!H", head[14:16])
    return head + recv_exactly(sock, length)


def decode_v2(header: bytes) -> dict[str, Any]:
    """A decoder written here from the spec, independent of janustls.core.proxyproto."""
    ver_cmd, fam, length = struct.unpack("!BBH", header[12:16])
    out: dict[str, Any] = {"ver_cmd": ver_cmd, "family": fam, "length": length}
    body = header[16:]
    assert fam == 0x11, f"TCP over IPv4 expected, got {fam:#x}"
    src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
    out["source"] = (socket.inet_ntoa(src), sport)
    out["destination"] = (socket.inet_ntoa(dst), dport)
    tlvs: dict[int, bytes] = {}
    i = 12
    while i < len(body):
        t, n = struct.unpack("!BH", body[i : i + 3])
        tlvs[t] = body[i + 3 : i + 3 + n]
        i += 3 + n
    assert i == len(body)
    out["tlvs"] = tlvs
    if 0x20 in tlvs:
        v = tlvs[0x20]
        client, verify = struct.unpack("!BI", v[:5])
        subs: dict[int, bytes] = {}
        j = 5
        while j < len(v):
            t, n = struct.unpack("!BH", v[j : j + 3])
            subs[t] = v[j + 3 : j + 3 + n]
            j += 3 + n
        assert j == len(v)
        out["ssl"] = {"client": client, "verify": verify, "subs": subs}
    return out


class Backend:
    """A plain TCP backend on 127.0.0.1: a thread per connection runs `handler(conn, record)`.

    `records` gets one dict per connection: the header (when expected) and what was read.
    """

    def __init__(self, handler: Callable[[socket.socket, dict[str, Any]], None], *, header: bool = False,
                 backlog: int = 16) -> None:  # fmt: skip
        self.handler = handler
        self.header = header
        self.records: list[dict[str, Any]] = []
        self.done = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.port = self.listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._stop = False
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, addr = self.listener.accept()
            except OSError:
                return
            record: dict[str, Any] = {"addr": addr}
            self.records.append(record)
            t = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, record: dict[str, Any]) -> None:
        conn.settimeout(20)
        try:
            if self.header:
                record["header"] = read_v2_header(conn)
            self.handler(conn, record)
        except Exception as e:  # recorded for the test to see
            record["error"] = e
        finally:
            conn.close()
            record["closed"] = True
            self.done.set()

    def wait(self, n: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.records) >= n and all(r.get("closed") for r in self.records[:n]):
                return self.records
            time.sleep(0.02)
        raise AssertionError(f"backend: {self.records}")

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def echo(conn: socket.socket, record: dict[str, Any]) -> None:
    got = bytearray()
    while True:
        data = conn.recv(65536)
        if not data:
            break
        got += data
        conn.sendall(data.upper())
    record["data"] = bytes(got)


def proxy_ini(pki: Any, procs: Path, connect: str, **extra: Any) -> str:
    """A proxy port GATE in front of `connect`, requiring a client certificate; `extra` adds keys."""
    return definitions(procs, secure_port(pki, "GATE", type="proxy", connect=connect, handler=None, **extra))


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    """Everything a test starts, stopped at its end (janustls servers, backends, processes)."""
    started: list[Any] = []
    yield started
    for s in reversed(started):
        if isinstance(s, subprocess.Popen):
            s.terminate()
            try:
                s.wait(5)
            except subprocess.TimeoutExpired:
                s.kill()
        else:
            s.stop() if hasattr(s, "stop") else s.close()


def gate(servers: list[Any], pki: Any, procs: Path, connect: str, **extra: Any) -> Any:
    s = start(proxy_ini(pki, procs, connect, **extra), procs)
    servers.append(s)
    return s


def proxy_protocols(server: Any) -> list[ProxyProtocol]:
    """The live ProxyProtocol instances of the GATE port (call in the reactor thread)."""
    factory = server.service.ports[0].factory
    return [p.wrappedProtocol for p in list(factory.protocols)]


# -- forwarding and the identity ------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_forward_with_proxy_v2_identity(servers, pki, procs, events, version):
    backend = Backend(echo, header=True)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}", forward_identity="proxy-v2")
    mark = events.mark()
    port = server.port("GATE")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        client_addr = raw.getsockname()
        with client_context(pki, "alice", tls=version).wrap_socket(raw, server_hostname="localhost") as s:
            cipher = s.cipher()[0]
            s.sendall(b"hello through the gate\n")
            assert recv_exactly(s, 23) == b"HELLO THROUGH THE GATE\n"
    [record] = backend.wait(1)
    assert record["data"] == b"hello through the gate\n"
    h = decode_v2(record["header"])
    assert h["ver_cmd"] == 0x21  # version 2, PROXY
    assert h["source"] == client_addr
    assert h["destination"] == ("127.0.0.1", port)
    assert h["tlvs"][0x02] == b"localhost"  # PP2_TYPE_AUTHORITY: the SNI name
    ssl_tlv = h["ssl"]
    assert ssl_tlv["client"] == 0x07  # PP2_CLIENT_SSL | CERT_CONN | CERT_SESS
    assert ssl_tlv["verify"] == 0
    subs = ssl_tlv["subs"]
    assert subs[0x21] == f"TLSv{version}".encode()
    assert subs[0x22] == b"alice"
    assert subs[0x23] == cipher.encode()
    assert subs[0x24] == b"ecdsa-with-SHA256"  # the server certificate's signature
    assert subs[0x25] == b"EC256"
    assert subs[0x28] == pki.issued["alice"].cert.public_bytes(Encoding.DER)
    # janustls' own decoder agrees with the independent one.
    parsed = proxyproto.parse_v2(record["header"])
    assert parsed.source == client_addr and parsed.ssl is not None and parsed.ssl.cn == "alice"
    e = events.wait_for(mark, "janustls.proxy.connected", "GATE")
    assert e["peer"] == f"{client_addr[0]}:{client_addr[1]}" and "CN=alice" in e["subject"]
    closed = events.wait_for(mark, "janustls.proxy.closed", "GATE")
    assert closed["up"] == 23 and closed["down"] == 23


def test_forward_without_identity_sends_only_bytes(servers, pki, procs):
    backend = Backend(echo)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}")
    with client_context(pki, "bob").wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=5), server_hostname="localhost"
    ) as s:
        s.sendall(b"abc")
        assert recv_exactly(s, 3) == b"ABC"
    assert backend.wait(1)[0]["data"] == b"abc"


def test_refused_client_never_reaches_backend(servers, pki, procs, events):
    backend = Backend(echo)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}")
    mark = events.mark()
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        client_context(pki, "othera").wrap_socket(
            socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=5), server_hostname="localhost"
        ) as s,
    ):
        s.sendall(b"x")
        s.recv(1)
    events.wait_for(mark, "janustls.refused", "GATE")
    time.sleep(0.2)
    assert backend.records == []


def test_bytes_before_backend_connects_are_kept(servers, pki, procs):
    """The client writes at once, more than PENDING_LIMIT; the backend accepts late; nothing is lost."""
    release = threading.Event()
    size = PENDING_LIMIT * 3

    def late(conn: socket.socket, record: dict[str, Any]) -> None:
        release.wait(10)
        data = recv_exactly(conn, size)
        record["digest"] = hashlib.sha256(data).hexdigest()
        conn.sendall(b"ok")

    # The backend's kernel accepts the connection at once; its reading starts late.
    backend = Backend(late)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}")
    payload = os.urandom(size)
    with client_context(pki, "alice").wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=10), server_hostname="localhost"
    ) as s:
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        time.sleep(0.5)
        release.set()
        sender.join(10)
        assert recv_exactly(s, 2) == b"ok"
    assert backend.wait(1)[0]["digest"] == hashlib.sha256(payload).hexdigest()


# -- backend down or slow ---------------------------------------------------------------------


def assert_closed_cleanly(s: ssl.SSLSocket) -> None:
    """The server ended the TLS connection with close_notify: recv gives b"" (not an error)."""
    assert s.recv(1024) == b""


def test_backend_down(servers, pki, procs, events):
    dead = free_port()
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{dead}")
    mark = events.mark()
    with client_context(pki, "alice").wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=5), server_hostname="localhost"
    ) as s:
        s.sendall(b"anyone?")
        assert_closed_cleanly(s)
    e = events.wait_for(mark, "janustls.proxy.backend_failed", "GATE")
    assert e["cause"] == "connection refused"
    assert e["backend"] == f"tcp:127.0.0.1:{dead}"
    # The port keeps serving: once the backend is up, the next client gets through.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", dead))
    listener.listen(4)
    servers.append(listener)

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())

    threading.Thread(target=serve_one, daemon=True).start()
    with client_context(pki, "alice").wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=5), server_hostname="localhost"
    ) as s:
        s.sendall(b"again")
        assert recv_exactly(s, 5) == b"AGAIN"


def test_backend_slow_to_accept(servers, pki, procs, events):
    """A backend whose accept queue is full: SYNs are dropped, connect_timeout ends the wait."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    servers.append(listener)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(f)
        servers.append(f)
    time.sleep(0.2)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{port}", connect_timeout="0.5")
    mark = events.mark()
    t0 = time.monotonic()
    with client_context(pki, "alice").wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=5), server_hostname="localhost"
    ) as s:
        assert_closed_cleanly(s)
    assert 0.4 < time.monotonic() - t0 < 3
    e = events.wait_for(mark, "janustls.proxy.backend_failed", "GATE")
    assert e["cause"] == "no connection within 0.5s (connect_timeout)"


# -- volume, flow control, closing --------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_large_transfer_both_ways(servers, pki, procs, version):
    size = 20 * MB
    up = os.urandom(size)
    down = os.urandom(size)

    def both(conn: socket.socket, record: dict[str, Any]) -> None:
        sender = threading.Thread(target=conn.sendall, args=(down,))
        sender.start()
        record["digest"] = hashlib.sha256(recv_exactly(conn, size)).hexdigest()
        sender.join()

    backend = Backend(both)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}")
    with client_context(pki, "alice", tls=version).wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=30), server_hostname="localhost"
    ) as s:
        got = duplex(s, up, size)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(down).hexdigest()
    assert backend.wait(1, timeout=30)[0]["digest"] == hashlib.sha256(up).hexdigest()


def test_client_that_stops_reading_pauses_the_backend(servers, pki, procs):
    """The backend offers far more than buffers hold; janustls stops reading it, holds little."""
    total = 256 * MB
    chunk = os.urandom(MB)
    progress = {"sent": 0}

    def flood(conn: socket.socket, record: dict[str, Any]) -> None:
        conn.settimeout(30)
        while progress["sent"] < total:
            conn.sendall(chunk)
            progress["sent"] += len(chunk)

    backend = Backend(flood)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}")
    raw = socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s = client_context(pki, "alice").wrap_socket(raw, server_hostname="localhost")
    servers.append(s)
    s.recv(1)  # the relay is running
    # Wait until the backend's writes block: its count stops moving.
    last, still = -1, 0
    while still < 10:
        time.sleep(0.1)
        still = still + 1 if progress["sent"] == last else 0
        last = progress["sent"]
    assert progress["sent"] < 48 * MB, progress  # kernel buffers on both hops, not the 256 MB offered

    def held() -> dict[str, Any]:
        [proto] = proxy_protocols(server)
        tls = proto.transport
        tcp = tls.transport
        buffered = sum(len(b) for b in tls._appSendBuffer) + tcp._tempDataLen + len(tcp.dataBuffer) - tcp.offset
        backend_tcp = proto.backend.transport  # type: ignore[union-attr]
        from twisted.internet import reactor

        return {"buffered": buffered, "backend_reading": backend_tcp in reactor.getReaders()}

    state = in_reactor(held)
    assert state["buffered"] < 2 * MB, state
    assert state["backend_reading"] is False, state
    # Reading again resumes the backend; every byte arrives in order.
    s.settimeout(30)
    got = 1
    while got < 64 * MB:
        data = s.recv(1 << 20)
        assert data
        got += len(data)
    assert progress["sent"] >= 64 * MB


def test_backend_that_stops_reading_pauses_the_client(servers, pki, procs):
    release = threading.Event()

    def lazy(conn: socket.socket, record: dict[str, Any]) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        release.wait(30)
        n = 0
        while True:
            data = conn.recv(1 << 20)
            if not data:
                break
            n += len(data)
        record["n"] = n

    backend = Backend(lazy)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}")
    s = client_context(pki, "alice").wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=30), server_hostname="localhost"
    )
    sent = {"n": 0}
    block = os.urandom(MB)

    def push() -> None:
        try:
            while sent["n"] < 256 * MB:
                s.sendall(block)
                sent["n"] += MB
        except OSError:
            pass

    t = threading.Thread(target=push, daemon=True)
    t.start()
    last, still = -1, 0
    while still < 10:
        time.sleep(0.1)
        still = still + 1 if sent["n"] == last else 0
        last = sent["n"]
    assert sent["n"] < 48 * MB, sent

    def held() -> dict[str, Any]:
        [proto] = proxy_protocols(server)
        backend_tcp = proto.backend.transport  # type: ignore[union-attr]
        client_tcp = proto.transport.transport
        from twisted.internet import reactor

        return {
            "buffered": backend_tcp._tempDataLen + len(backend_tcp.dataBuffer) - backend_tcp.offset,
            "client_reading": client_tcp.transport in reactor.getReaders()
            if hasattr(client_tcp, "transport")
            else client_tcp in reactor.getReaders(),
        }

    state = in_reactor(held)
    assert state["buffered"] < 2 * MB, state
    assert state["client_reading"] is False, state
    release.set()
    s.close()


def test_backend_half_close(servers, pki, procs):
    """The backend answers and sends FIN: the client gets the answer and close_notify, and what
    it still sends reaches the backend."""

    def answer_then_read(conn: socket.socket, record: dict[str, Any]) -> None:
        record["first"] = recv_exactly(conn, 8)
        conn.sendall(b"answer")
        conn.shutdown(socket.SHUT_WR)
        record["after"] = recv_all(conn)

    backend = Backend(answer_then_read)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}")
    with client_context(pki, "alice", tls="1.3").wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=5), server_hostname="localhost"
    ) as s:
        s.sendall(b"question")
        assert recv_all(s) == b"answer"  # then close_notify
        s.sendall(b"and one more thing")
        time.sleep(0.3)
    [record] = backend.wait(1)
    assert record["first"] == b"question"
    assert record["after"] == b"and one more thing"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_client_half_close(servers, pki, procs, events, version):
    """The client sends close_notify after its request (Go's CloseWrite): the backend gets
    EOF, and its answer still reaches the client."""
    from OpenSSL import SSL

    def read_all_then_answer(conn: socket.socket, record: dict[str, Any]) -> None:
        record["request"] = recv_all(conn)  # until the FIN janustls passes on
        conn.sendall(b"answer after your EOF")

    backend = Backend(read_all_then_answer)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}")
    mark = events.mark()
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    wanted = SSL.TLS1_2_VERSION if version == "1.2" else SSL.TLS1_3_VERSION
    ctx.set_min_proto_version(wanted)
    ctx.set_max_proto_version(wanted)
    ctx.load_verify_locations(str(pki.files["root.ca"]))
    ctx.use_certificate_chain_file(str(pki.cert("alice")))
    ctx.use_privatekey_file(str(pki.key("alice")))
    sock = socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=5)
    servers.append(sock)
    conn = SSL.Connection(ctx, sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    sock.settimeout(None)
    conn.do_handshake()
    conn.sendall(b"the whole request")
    conn.shutdown()  # close_notify: nothing more from this client
    sock.setblocking(False)
    answer = b""
    while True:
        try:
            answer += conn.recv(65536)
        except SSL.WantReadError:  # the socket has a timeout, so it is non-blocking underneath
            assert select.select([sock], [], [], 5)[0], f"no answer; so far {answer!r}"
        except SSL.ZeroReturnError:
            break
    assert answer == b"answer after your EOF"
    [record] = backend.wait(1)
    assert record["request"] == b"the whole request"
    e = events.wait_for(mark, "janustls.proxy.closed", "GATE")
    assert e["up"] == 17 and e["down"] == 21


def test_client_close_closes_backend(servers, pki, procs, events):
    backend = Backend(echo)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}")
    mark = events.mark()
    s = client_context(pki, "alice").wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=5), server_hostname="localhost"
    )
    s.sendall(b"bye")
    assert recv_exactly(s, 3) == b"BYE"
    s.close()
    assert backend.wait(1)[0]["data"] == b"bye"
    e = events.wait_for(mark, "janustls.proxy.closed", "GATE")
    assert e["up"] == 3 and e["down"] == 3


# -- limits -------------------------------------------------------------------------------------


def test_limits_apply_to_proxy_ports(servers, pki, procs, events):
    backend = Backend(echo)
    servers.append(backend)
    server = gate(
        servers, pki, procs, f"tcp:127.0.0.1:{backend.port}",
        max_connections=1, idle_timeout="0.5", handshake_timeout="0.5",
    )  # fmt: skip
    port = server.port("GATE")
    mark = events.mark()
    # handshake timeout: a TCP client that never starts TLS is cut off.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        t0 = time.monotonic()
        assert closed_by_server(raw)
        assert time.monotonic() - t0 < 3
    events.wait_for(mark, "janustls.handshake.timeout", "GATE")
    # max_connections: a second client while one is connected is refused.
    first = client_context(pki, "alice").wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
    )
    first.sendall(b"x")
    assert recv_exactly(first, 1) == b"X"
    with (
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
        client_context(pki, "alice").wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
        ) as second,
    ):
        second.sendall(b"y")
        if second.recv(1) == b"":
            raise ConnectionError("closed")
    events.wait_for(mark, "janustls.conn.limit", "GATE")
    # idle_timeout: the first client, silent, is closed; its backend connection too.
    t0 = time.monotonic()
    first.settimeout(5)
    assert first.recv(10) == b""
    assert time.monotonic() - t0 < 3
    first.close()
    events.wait_for(mark, "janustls.conn.idle_timeout", "GATE")
    assert backend.wait(1)[0]["data"] == b"x"


def tls_backend(servers: list[Any], pki: Any, cert: str) -> int:
    """A TLS echo backend with one of the test PKI's certificates; returns its port."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.files[f"{cert}.pem"], pki.files[f"{cert}.key"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    servers.append(listener)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    s.settimeout(5)
                    data = s.recv(100)
                    s.sendall(b"tls:" + data)
            except (OSError, ssl.SSLError):
                pass

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1])


def test_tls_backend_verified_by_name(servers, pki, procs):
    port = tls_backend(servers, pki, "server")
    trust = pki.files["root.ca"].parent  # a directory of PEM CA certificates
    server = gate(servers, pki, procs, f"tls:localhost:{port}:trustRoots={trust}")
    with client_context(pki, "alice").wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=5), server_hostname="localhost"
    ) as s:
        s.sendall(b"secret")
        assert recv_exactly(s, 10) == b"tls:secret"


def test_tls_backend_with_wrong_identity_is_refused(servers, pki, procs, events):
    port = tls_backend(servers, pki, "bob")  # a certificate for "bob", not "localhost"
    trust = pki.files["root.ca"].parent
    server = gate(servers, pki, procs, f"tls:localhost:{port}:trustRoots={trust}")
    mark = events.mark()
    with client_context(pki, "alice").wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("GATE")), timeout=5), server_hostname="localhost"
    ) as s:
        s.sendall(b"secret")
        assert_closed_cleanly(s)
    e = events.wait_for(mark, "janustls.proxy.backend_failed", "GATE")
    assert e["cause"].startswith("TLS with the backend failed"), e["cause"]


def test_max_connections_behind_proxy_protocol(servers, pki, procs, events):
    """The PROXY header wrapper keeps the port's max_connections refusal."""
    backend = Backend(echo)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}", proxy_protocol="yes", max_connections=1)
    port = server.port("GATE")
    mark = events.mark()
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    raw.sendall(proxyproto.build_v2(("198.51.100.1", 1000), ("127.0.0.1", 443)))
    first = client_context(pki, "alice").wrap_socket(raw, server_hostname="localhost")
    servers.append(first)
    first.sendall(b"a")
    assert recv_exactly(first, 1) == b"A"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
        # Limits judge the client the header names, so they apply once it has come.
        second.sendall(proxyproto.build_v2(("198.51.100.2", 1000), ("127.0.0.1", 443)))
        assert closed_by_server(second)
    e = events.wait_for(mark, "janustls.conn.limit", "GATE")
    assert e["limit"] == 1
    assert e["peer"] == "198.51.100.2:1000"


def test_per_client_limit_behind_proxy_protocol_counts_the_real_clients(servers, pki, procs, events):
    """Behind a balancer every connection comes from its address: the per-client limit
    must count the clients the PROXY headers name."""
    backend = Backend(echo)
    servers.append(backend)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{backend.port}", proxy_protocol="yes",
                  max_connections_per_client=1)  # fmt: skip
    port = server.port("GATE")

    def client(source: str) -> Any:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        raw.sendall(proxyproto.build_v2((source, 1000), ("127.0.0.1", 443)))
        s = client_context(pki, "alice").wrap_socket(raw, server_hostname="localhost")
        servers.append(s)
        s.sendall(b"a")
        assert recv_exactly(s, 1) == b"A"
        return s

    client("198.51.100.1")
    client("198.51.100.2")  # another client behind the same balancer gets in
    mark = events.mark()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
        third.sendall(proxyproto.build_v2(("198.51.100.1", 2000), ("127.0.0.1", 443)))
        assert closed_by_server(third)
    e = events.wait_for(mark, "janustls.conn.limit", "GATE")
    assert e["peer"] == "198.51.100.1:2000"


def test_bad_connect_is_a_config_error(pki, procs):
    with pytest.raises(ConfigErrors) as e:
        start(proxy_ini(pki, procs, "nosuchkind:1:2"), procs)
    assert "connect" in str(e.value) and "GATE" in str(e.value)


# -- PROXY header before TLS (proxy_protocol = yes) -------------------------------------------


def srvsock_ini(pki: Any, procs: Path) -> str:
    """A srvsock port BEHIND a load balancer (proxy_protocol = yes) saying the peer it saw."""
    install_handlers(procs, who="peer_who")
    return definitions(
        procs, secure_port(pki, "BEHIND", handler="who:serve", proxy_protocol="yes", handshake_timeout=1)
    )


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 443\r\n",
        proxyproto.build_v2(("203.0.113.7", 40001), ("127.0.0.1", 443)),
        proxyproto.build_v2(("203.0.113.7", 40001), ("127.0.0.1", 443), tlvs=[(0x04, b"\0" * 7)]),
    ],
    ids=["v1", "v2", "v2-noop-tlv"],
)
def test_proxy_header_names_the_peer(servers, pki, procs, events, header):
    server = start(srvsock_ini(pki, procs), procs)
    servers.append(server)
    mark = events.mark()
    raw = socket.create_connection(("127.0.0.1", server.port("BEHIND")), timeout=5)
    for i in range(0, len(header), 5):  # in pieces, as a slow network would deliver it
        raw.sendall(header[i : i + 5])
        time.sleep(0.01)
    with client_context(pki, "alice").wrap_socket(raw, server_hostname="localhost") as s:
        assert recv_all(s) == b"203.0.113.7:40001|alice\n"
    e = events.wait_for(mark, "janustls.conn.accepted", "BEHIND")
    assert e["peer"] == "203.0.113.7:40001"
    h = events.wait_for(mark, "janustls.proxy.header_received", "BEHIND")
    assert h["via"].startswith("127.0.0.1:")


@pytest.mark.parametrize(
    "garbage, detail",
    [
        (None, "no PROXY header: the connection starts with a TLS handshake"),
        (b"PROXY TCP4 nonsense\r\n", "v1 header"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + b"\0" * 12, "v2 header: version 3"),
        (b"GET / HTTP/1.1\r\n\r\n", "no PROXY header"),
    ],
    ids=["tls-without-header", "bad-v1", "bad-v2-version", "http"],
)
def test_missing_or_invalid_header_is_closed_and_logged(servers, pki, procs, events, garbage, detail):
    server = start(srvsock_ini(pki, procs), procs)
    servers.append(server)
    mark = events.mark()
    raw = socket.create_connection(("127.0.0.1", server.port("BEHIND")), timeout=5)
    if garbage is None:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with client_context(pki, "alice").wrap_socket(raw, server_hostname="localhost") as s:
                s.recv(10)
    else:
        with raw:
            raw.sendall(garbage)
            assert closed_by_server(raw)
    e = events.wait_for(mark, "janustls.proxy.header_invalid", "BEHIND")
    assert detail in e["detail"]
    assert e["peer"].startswith("127.0.0.1:")
    assert not events.since(mark, "janustls.conn.accepted", "BEHIND")


@pytest.mark.parametrize("source, allowed", [("198.51.100.9", True), ("203.0.113.7", False)])
def test_identity_rules_see_the_proxied_address(servers, pki, procs, events, source, allowed):
    (procs / "net.py").write_text("def inside(conn):\n    return conn.peer.host.startswith('198.51.100.')\n")
    ini = srvsock_ini(pki, procs).replace("proxy_protocol = yes", "proxy_protocol = yes\nallow = call:net:inside")
    server = start(ini, procs)
    servers.append(server)
    mark = events.mark()
    raw = socket.create_connection(("127.0.0.1", server.port("BEHIND")), timeout=5)
    raw.sendall(proxyproto.build_v2((source, 40001), ("127.0.0.1", 443)))
    with client_context(pki, "alice").wrap_socket(raw, server_hostname="localhost") as s:
        try:
            out = recv_all(s)
        except (ssl.SSLError, ConnectionError):
            out = b""
    if allowed:
        assert out == f"{source}:40001|alice\n".encode()
    else:
        assert out == b""
        e = events.wait_for(mark, "janustls.refused.not_allowed", "BEHIND")
        assert source in str(e["peer"]) and "40001" in str(e["peer"])


def test_endpoint_plugin_honours_proxy_protocol(servers, pki, events):
    """`janustls:0:...:proxy_protocol=yes` as a Twisted endpoint string for any application."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory, Protocol

    class Peer(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(str(self.transport.getPeer().host).encode() + b"\n")
            self.transport.loseConnection()

    description = (
        f"janustls:0:interface=127.0.0.1:name=EPPROXY:certificate={pki.files['server.pem']}"
        f":private_key={pki.files['server.key']}:proxy_protocol=yes"
    )

    def listen() -> Any:
        from twisted.internet import reactor

        return serverFromString(reactor, description).listen(Factory.forProtocol(Peer))

    listening = in_reactor(listen)
    servers.append(type("Stopper", (), {"stop": lambda self: in_reactor(listening.stopListening)})())
    mark = events.mark()
    raw = socket.create_connection(("127.0.0.1", listening.getHost().port), timeout=5)
    raw.sendall(b"PROXY TCP4 198.51.100.9 127.0.0.1 50000 443\r\n")
    with client_context(None).wrap_socket(raw, server_hostname="localhost") as s:
        assert recv_all(s) == b"198.51.100.9\n"
    e = events.wait_for(mark, "janustls.conn.accepted", "EPPROXY")
    assert e["peer"] == "198.51.100.9:50000"


def test_silent_connection_on_proxy_protocol_port_times_out(servers, pki, procs, events):
    server = start(srvsock_ini(pki, procs), procs)
    servers.append(server)
    mark = events.mark()
    with socket.create_connection(("127.0.0.1", server.port("BEHIND")), timeout=5) as raw:
        assert closed_by_server(raw)
    events.wait_for(mark, "janustls.handshake.timeout", "BEHIND")


# -- HAProxy in front ---------------------------------------------------------------------------


def start_haproxy(servers: list[Any], tmp_path: Path, listen_port: int, target_port: int, send: str) -> int:
    if HAPROXY is None and not os.environ.get("CI"):  # in CI, .ci/run installs it: fail below
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    front = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        f"""
global
    maxconn 100

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend tls_in
    bind 127.0.0.1:{front}
    default_backend janustls

backend janustls
    server node1 127.0.0.1:{target_port} {send}
"""
    )
    check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    servers.append(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", front), timeout=1).close()
            return front
        except OSError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.05)
    raise AssertionError("haproxy did not start listening")


@pytest.mark.parametrize("send", ["send-proxy-v2", "send-proxy"])
def test_haproxy_in_front_logs_the_real_client(servers, pki, procs, events, tmp_path, send):
    """HAProxy (TCP mode) -> janustls proxy port (proxy_protocol = yes) -> backend.

    The client connects from 127.0.0.2; HAProxy from 127.0.0.1.  janustls logs, and tells
    the backend in its own PROXY v2 header, 127.0.0.2.
    """
    backend = Backend(echo, header=True)
    servers.append(backend)
    server = gate(
        servers, pki, procs, f"tcp:127.0.0.1:{backend.port}", forward_identity="proxy-v2", proxy_protocol="yes"
    )
    front = start_haproxy(servers, tmp_path, 0, server.port("GATE"), send)
    mark = events.mark()
    raw = socket.socket()
    raw.settimeout(10)
    raw.bind(("127.0.0.2", 0))
    raw.connect(("127.0.0.1", front))
    client_addr = raw.getsockname()
    assert client_addr[0] == "127.0.0.2"
    with client_context(pki, "alice").wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"via haproxy")
        assert recv_exactly(s, 11) == b"VIA HAPROXY"
    accepted = events.wait_for(mark, "janustls.conn.accepted", "GATE")
    assert accepted["peer"] == f"127.0.0.2:{client_addr[1]}"
    received = events.wait_for(mark, "janustls.proxy.header_received", "GATE")
    assert received["via"].startswith("127.0.0.1:")
    assert received["version"] == (2 if send == "send-proxy-v2" else 1)
    [record] = backend.wait(1)
    h = decode_v2(record["header"])
    assert h["source"] == client_addr
    assert h["ssl"]["subs"][0x22] == b"alice"


def test_haproxy_reads_the_header_janustls_sends(servers, pki, procs, events, tmp_path):
    """HAProxy as the backend (`accept-proxy`) parses janustls' PROXY v2 header with its TLVs
    and reports the client address from it: an independent check of the format."""
    if HAPROXY is None and not os.environ.get("CI"):
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    sink = Backend(echo)
    servers.append(sink)
    hp_port = free_port()
    cfg = tmp_path / "haproxy-backend.cfg"
    cfg.write_text(
        f"""
global
    maxconn 100
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend from_janustls
    bind 127.0.0.1:{hp_port} accept-proxy
    log-format "PPCLIENT %ci:%cp"
    default_backend sink

backend sink
    server s1 127.0.0.1:{sink.port}
"""
    )
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    servers.append(proc)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", hp_port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    server = gate(servers, pki, procs, f"tcp:127.0.0.1:{hp_port}", forward_identity="proxy-v2")
    raw = socket.socket()
    raw.settimeout(10)
    raw.bind(("127.0.0.2", 0))
    raw.connect(("127.0.0.1", server.port("GATE")))
    client_addr = raw.getsockname()
    with client_context(pki, "alice").wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"checked by haproxy")
        assert recv_exactly(s, 18) == b"CHECKED BY HAPROXY"
    assert any(r.get("data") == b"checked by haproxy" for r in sink.wait(1))
    proc.terminate()
    out, _ = proc.communicate(timeout=5)
    assert f"PPCLIENT 127.0.0.2:{client_addr[1]}" in out, out


# -- the pure PROXY protocol module ---------------------------------------------------------------


def test_v2_roundtrip_and_byte_by_byte_reading():
    ssl_info = proxyproto.SSLInfo(client=7, verify=0, version="TLSv1.3", cn="alice", cipher="TLS_AES_256_GCM_SHA384",
                                  sig_alg="ecdsa-with-SHA256", key_alg="EC256", client_cert=b"\x30\x03der")  # fmt: skip
    header = proxyproto.build_v2(("2001:db8::1", 1234), ("2001:db8::2", 443), ssl=ssl_info)
    reader = proxyproto.HeaderReader()
    stream = header + b"\x16\x03\x01"
    for i, byte in enumerate(stream):  # noqa: B007  (i is checked after the loop)
        out = reader.feed(bytes([byte]))
        if out is not None:
            break
    assert out is not None and i == len(header) - 1
    parsed, rest = out
    assert rest == b""
    assert parsed.source == ("2001:db8::1", 1234) and parsed.destination == ("2001:db8::2", 443)
    assert parsed.ssl == ssl_info


def test_v2_mixed_families_and_unspec():
    h = proxyproto.parse_v2(proxyproto.build_v2(("127.0.0.1", 1), ("::1", 2)))
    assert h.source is not None and h.source[1] == 1 and h.destination == ("::1", 2)
    unspec = proxyproto.parse_v2(proxyproto.build_v2(None, None))
    assert unspec.source is None and unspec.destination is None


def test_v2_oversized_certificate_is_dropped_not_the_header():
    big = proxyproto.SSLInfo(cn="x", client_cert=b"\0" * 70000)
    h = proxyproto.parse_v2(proxyproto.build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), ssl=big))
    assert h.ssl is not None and h.ssl.cn == "x" and h.ssl.client_cert is None


def test_v2_local_command_keeps_real_addresses():
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    h, rest = proxyproto.HeaderReader().feed(local + b"tls")  # type: ignore[misc]
    assert h.local and h.source is None and rest == b"tls"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "not a port number"),
        (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY " + b"9" * 120, "no CRLF within 107 bytes"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04abcd", "needs 12 address bytes"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0e" + b"\0" * 12 + b"\x20\x00", "stray bytes"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x2f\x11\x00\x00", "unknown command"),
        (b"\x16\x03\x01\x02\x00", "starts with a TLS handshake"),
    ],
)
def test_invalid_headers(data, message):
    with pytest.raises(proxyproto.ProxyHeaderError, match=message):
        proxyproto.HeaderReader().feed(data)


def test_v1_unknown_and_v6():
    assert proxyproto.parse_v1(b"PROXY UNKNOWN\r\n").source is None
    h = proxyproto.parse_v1(proxyproto.build_v1(("::1", 5), ("::2", 6)))
    assert h.source == ("::1", 5) and h.destination == ("::2", 6)


def test_haproxy_health_checks_are_quiet(servers, pki, procs, events, tmp_path):
    """`check check-send-proxy`: HAProxy's checks carry a v2 LOCAL header; janustls keeps the
    real address and logs no warning for them."""
    server = start(srvsock_ini(pki, procs), procs)
    servers.append(server)
    mark = events.mark()
    start_haproxy(servers, tmp_path, 0, server.port("BEHIND"), "send-proxy-v2 check check-send-proxy inter 200ms")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        e.get("local") for e in events.since(mark, "janustls.proxy.header_received")
    ):
        time.sleep(0.05)
    local = [e for e in events.since(mark, "janustls.proxy.header_received", "BEHIND") if e["local"]]
    assert local and local[0]["peer"] == local[0]["via"]
    assert not events.since(mark, "janustls.proxy.header_invalid")
