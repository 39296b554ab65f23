#!/usr/bin/env python3
"""janustls `proxy` port beside a bare Twisted TLS-to-TCP forwarder: throughput and CPU per MB.

One run, the same certificates (made by `janustls.pki`: a root, an EC P-256 server
certificate, EC client certificates), both servers requiring a client certificate:

  janustls  a `type = proxy` port (client_cert = require, forward_identity = none)
            connecting to the backend after the handshake; events logged to a file
  bare      twisted.protocols.tls.TLSMemoryBIOFactory around a pyOpenSSL Context built
            here with the same settings; its protocol connects to the backend on accept
            and forwards both ways with producers registered on each transport

The backend is an echo server in its own process (threads and blocking sockets);
clients are separate processes (Python's ssl, TLS 1.3), each sending SIZE bytes
while reading the SIZE bytes echoed back, several at once.  "MB" is 10^6 bytes and
counts what crosses the proxy in both directions (2 x SIZE per client).  Server CPU
is utime+stime from /proc/PID/stat around each round; rounds alternate between the
two servers and the median is reported.

    python benchmarks/bench_proxy.py            # the full run (under a minute)
    python benchmarks/bench_proxy.py --quick    # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import cpu_seconds

SERVERS = ("janustls", "bare")
PP2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


# -- the backend (run as `bench_proxy.py --backend`) -------------------------------------------


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def run_backend() -> None:
    """Echo every connection's bytes; skip a PROXY v2 header if one comes first."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    sys.stdout.write(f"PORT {listener.getsockname()[1]}\n")
    sys.stdout.flush()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                first = conn.recv(65536)
                if first.startswith(PP2_SIGNATURE[: len(first)]) and len(first) < 16:
                    first += _recv_exactly(conn, 16 - len(first))
                if first.startswith(PP2_SIGNATURE):
                    size = 16 + int.from_bytes(first[14:16], "big")
                    if len(first) < size:
                        first += _recv_exactly(conn, size - len(first))
                    first = first[size:]
                data = first
                while True:
                    if data:
                        conn.sendall(data)
                    data = conn.recv(262144)
                    if not data:
                        return
            except OSError:
                return

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


# -- the servers (run as `bench_proxy.py --serve KIND --dir DIR --backend-port N`) ----------------


def _serve_janustls(directory: Path, backend: int) -> int:
    from janustls.core.config import parse_definitions
    from janustls.ops.service import JanusService

    ini = f"""
[janustls]
procs = {directory}

[port:BENCH]
type = proxy
listen = tcp:0:interface=127.0.0.1:backlog=1024
connect = tcp:127.0.0.1:{backend}
certificate = {directory / "server" / "server.pem"}
private_key = {directory / "server" / "server.key"}
client_cert = require
addca = {directory / "ca" / "root.pem"}
tls_min = 1.2
tls_max = 1.3
"""
    service = JanusService(parse_definitions(ini, source="bench.ini", base=directory))
    service.startService()
    listening = service.listening_port("BENCH")
    assert listening is not None
    return int(listening.getHost().port)


def _serve_bare(directory: Path, backend: int, reactor: Any) -> int:
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory, Protocol

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", backend)

    class Back(Protocol):
        def __init__(self, front: Front) -> None:
            self.front = front

        def dataReceived(self, data: bytes) -> None:
            self.front.transport.write(data)

        def connectionLost(self, reason: Any = None) -> None:
            if self.front.transport is not None:
                self.front.transport.unregisterProducer()
                self.front.transport.loseConnection()

    class BackFactory(Factory):
        noisy = False

        def __init__(self, front: Front) -> None:
            self.front = front

        def buildProtocol(self, addr: Any) -> Back:
            return Back(self.front)

    class Front(Protocol):
        back: Back | None = None

        def connectionMade(self) -> None:
            self.pending: list[bytes] = []
            endpoint.connect(BackFactory(self)).addCallback(self.backend_up)

        def backend_up(self, back: Back) -> None:
            self.back = back
            back.transport.writeSequence(self.pending)
            self.pending = []
            back.transport.registerProducer(self.transport, True)
            self.transport.registerProducer(back.transport, True)

        def dataReceived(self, data: bytes) -> None:
            if self.back is None:
                self.pending.append(data)
            else:
                self.back.transport.write(data)

        def connectionLost(self, reason: Any = None) -> None:
            if self.back is not None:
                self.back.transport.unregisterProducer()
                self.back.transport.loseConnection()

    class FrontFactory(Factory):
        protocol = Front
        noisy = False

    return common.listen_bare(reactor, directory, FrontFactory())


def serve(kind: str, directory: Path, backend: int) -> None:
    from twisted.internet import reactor

    common.begin_logging(directory, kind, "file")

    def start() -> None:
        port = _serve_janustls(directory, backend) if kind == "janustls" else _serve_bare(directory, backend, reactor)
        sys.stdout.write(f"PORT {port}\n")
        sys.stdout.flush()

    reactor.callWhenRunning(start)
    reactor.run()  # type: ignore[attr-defined]


# -- the clients -------------------------------------------------------------------------------


def client_transfer(directory: str, index: int, port: int, size: int) -> float:
    """One connection: send `size` bytes while reading the echo; seconds from connect to the last byte."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(Path(directory) / "ca" / "root.pem")
    ctx.load_cert_chain(
        Path(directory) / "clients" / f"client{index}.pem", Path(directory) / "clients" / f"client{index}.key"
    )
    payload = memoryview(os.urandom(size))
    t0 = time.perf_counter()
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60), server_hostname="localhost") as s:
        # One thread, non-blocking: an SSL object must not be read and written by two threads.
        s.setblocking(False)
        sent = got = 0
        while sent < size or got < size:
            if not s.pending():
                select.select([s] if got < size else [], [s] if sent < size else [], [], 5)
            if got < size:
                try:
                    data = s.recv(1 << 20)
                    if not data:
                        raise RuntimeError(f"client {index}: {got} of {size} bytes came back")
                    got += len(data)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            if sent < size:
                try:
                    sent += s.send(payload[sent : sent + 262144])
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
    return time.perf_counter() - t0


# -- the driver --------------------------------------------------------------------------------


def start_process(args: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"{args}: did not start ({line!r})")
    return proc, int(line.split()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: small transfers, one round each")
    ap.add_argument("--clients", type=int, default=4, help="connections at once (default 4)")
    ap.add_argument("--size", type=int, default=0, help="bytes each client sends (default 64 MB, 4 MB with --quick)")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per server (default 7, 1 with --quick)")
    ap.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    ap.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.backend:
        run_backend()
        return 0
    if a.serve:
        serve(a.serve, Path(a.dir), a.backend_port)
        return 0
    size = a.size or (4_000_000 if a.quick else 64_000_000)
    rounds = a.rounds or (1 if a.quick else 7)
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        directory = Path(tmp)
        common.make_pki(directory, a.clients, intermediate=False)
        backend, backend_port = start_process(["--backend"])
        servers = {k: start_process(["--serve", k, "--dir", tmp, "--backend-port", str(backend_port)]) for k in SERVERS}
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in SERVERS}
        try:
            with get_context("spawn").Pool(a.clients) as pool:
                for _kind, (_, port) in servers.items():  # warm up: handshakes, imports, buffers
                    pool.starmap(client_transfer, [(tmp, i, port, 1_000_000) for i in range(a.clients)])
                for r in range(rounds):
                    for kind in SERVERS if r % 2 == 0 else tuple(reversed(SERVERS)):
                        proc, port = servers[kind]
                        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                        pool.starmap(client_transfer, [(tmp, i, port, size) for i in range(a.clients)])
                        wall, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
                        mb = 2 * size * a.clients / 1e6
                        results[kind].append((mb / wall, cpu * 1000 / mb))
                        print(
                            f"  round {r + 1} {kind:8s} {mb / wall:8.1f} MB/s  {cpu * 1000 / mb:6.2f} ms CPU/MB",
                            flush=True,
                        )
        finally:
            for proc, _ in [*servers.values(), (backend, 0)]:
                proc.terminate()
                proc.wait(5)
    print()
    print(f"proxy throughput, {a.clients} clients x {size / 1e6:g} MB each way, TLS 1.3, median of {rounds} round(s)")
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'server':10s} {'MB/s':>10s} {'ms CPU/MB':>10s}")
    med = {k: (statistics.median(x for x, _ in v), statistics.median(y for _, y in v)) for k, v in results.items()}
    for k in SERVERS:
        print(f"{k:10s} {med[k][0]:10.1f} {med[k][1]:10.2f}")
    j, b = med["janustls"], med["bare"]
    print(f"ratio janustls/bare: throughput {j[0] / b[0]:.2f}, CPU per MB {j[1] / b[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
