#!/usr/bin/env python3
"""janustls `webserv` beside a bare twisted.web resource: server CPU per keep-alive HTTP request.

Both servers require a client certificate (same root, same EC P-256 server and client
certificates from `janustls.pki`, TLS 1.3, same suites) and answer `GET /who` with the
client certificate's CN:

  janustls  a webserv port, `ON /who = call views:who` where `who(request)` returns
            `request.cert_info("CN")`; the rule table, exception handling and the
            connection object in the path, connection events logged to a text file
  bare      twisted.protocols.tls.TLSMemoryBIOFactory around a pyOpenSSL Context with the
            same settings, wrapping twisted.web's Site; the resource reads the CN from the
            peer certificate itself on every request
            (`getHandle().get_peer_certificate(as_cryptography=True)`)

Neither writes a per-request access log line (twisted.web's Site log is turned off in
both), so the figure is the request handling itself.  Connections are made before the
measurement; then each client sends requests one after another on its keep-alive
connections.  Server CPU is utime+stime from /proc/PID/stat; rounds alternate between
the servers and the median is reported.  `--profile` adds a cProfile run of the
janustls server: where its time per request goes.

    python benchmarks/bench_web.py            # the full run (about a minute)
    python benchmarks/bench_web.py --quick    # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import pstats
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

SERVERS = ("janustls", "bare")
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
VIEWS = '''\
def who(request):
    return request.cert_info("CN")
'''
REQUEST = b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n"


# -- servers (run as `bench_web.py --serve KIND --dir DIR`) ----------------------------------------


def _log_to(directory: Path, kind: str) -> None:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    out = open(directory / f"{kind}.log", "a", encoding="utf-8")  # noqa: SIM115 - lives with the process
    globalLogBeginner.beginLoggingTo([textFileLogObserver(out)], redirectStandardIO=False)


def _serve_janustls(directory: Path, reactor: Any) -> int:
    from janustls.config import parse_definitions
    from janustls.service import build_ports

    (directory / "views.py").write_text(VIEWS)
    text = f"""
[janustls]
procs = {directory}
[port:WEB]
type = webserv
listen = tcp:0:interface=127.0.0.1:backlog=1024
certificate = {directory / 'server.pem'}
private_key = {directory / 'server.key'}
client_cert = require
addca = {directory / 'root.pem'}
[web:WEB]
ON /who = call views:who
"""
    (built,) = build_ports(parse_definitions(text, "bench.ini", directory), reactor)
    port = reactor.listenTCP(0, built.factory, backlog=1024, interface="127.0.0.1")
    return int(port.getHost().port)


def _serve_bare(directory: Path, reactor: Any) -> int:
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    from OpenSSL import SSL, crypto
    from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from zope.interface import implementer

    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_cipher_list(CIPHERS.encode())
    ctx.use_certificate_chain_file(str(directory / "server.pem"))
    ctx.use_privatekey_file(str(directory / "server.key"))
    ctx.set_session_id(b"bench-bare")
    root = x509.load_pem_x509_certificate((directory / "root.pem").read_bytes())
    ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(root))
    ctx.add_client_ca(root)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: bool(a[-1]))

    @implementer(IOpenSSLServerConnectionCreator)
    class Creator:
        def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
            return SSL.Connection(ctx, None)

    class Who(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            cert = request.transport.getHandle().get_peer_certificate(as_cryptography=True)
            cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            return cn.encode() if isinstance(cn, str) else bytes(cn)

    class QuietSite(Site):
        def log(self, request: Any) -> None:
            pass

    site = QuietSite(Who(), timeout=None)
    site.noisy = False
    tls = TLSMemoryBIOFactory(Creator(), False, site)
    tls.noisy = False
    return int(reactor.listenTCP(0, tls, backlog=1024, interface="127.0.0.1").getHost().port)


def serve(kind: str, directory: Path, profile: Path | None) -> None:
    from twisted.internet import reactor

    _log_to(directory, kind)

    def start() -> None:
        port = (_serve_janustls if kind == "janustls" else _serve_bare)(directory, reactor)
        sys.stdout.write(f"{port}\n")
        sys.stdout.flush()

    reactor.callWhenRunning(start)
    if profile is not None:
        # Profile only while the clients measure: SIGUSR1 starts, SIGUSR2 stops and writes.
        import cProfile
        import signal

        profiler = cProfile.Profile()
        signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())

        def stop(*_: Any) -> None:
            profiler.disable()
            profiler.dump_stats(str(profile))

        signal.signal(signal.SIGUSR2, stop)
    reactor.run(installSignalHandlers=profile is None)  # type: ignore[attr-defined]


# -- clients ---------------------------------------------------------------------------------------


def _context(directory: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(directory / "root.pem"))
    ctx.load_cert_chain(str(directory / "client.pem"), str(directory / "client.key"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _read_response(s: ssl.SSLSocket, buf: bytearray) -> bytes:
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = end + 4 + length
            while len(buf) < total:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n")[0].decode())
            return body
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


def client_worker(port: int, directory: str, connections: int, requests: int, go: Any, done: Any) -> None:
    """Open the connections, wait for `go`, send `requests` requests round-robin, report."""
    ctx = _context(Path(directory))
    socks = []
    for _ in range(connections):
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(REQUEST)  # the first request: the server sees the certificate, warms caches
        socks.append((s, bytearray()))
    for s, buf in socks:
        assert _read_response(s, buf) == b"alice"
    go.wait()
    for i in range(requests):
        s, buf = socks[i % connections]
        s.sendall(REQUEST)
        _read_response(s, buf)
    done.put(requests)
    for s, _ in socks:
        s.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(kind: str, directory: Path, profile: Path | None = None) -> tuple[subprocess.Popen[str], int]:
    extra = ["--profile-out", str(profile)] if profile else []
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", kind, "--dir", str(directory), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip():
        proc.kill()
        raise RuntimeError(f"the {kind} server did not start")
    return proc, int(line)


def measure(pid: int, port: int, directory: Path, workers: int, connections: int, requests: int, profile: bool = False) -> float:
    """Server CPU microseconds per request (`profile`: bracket the run with SIGUSR1/SIGUSR2)."""
    mp = get_context("fork")
    go = mp.Event()
    done = mp.Queue()
    procs = [
        mp.Process(target=client_worker, args=(port, str(directory), connections, requests, go, done)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    time.sleep(0.3 + 0.02 * workers * connections)  # connections made and first requests answered
    if profile:
        os.kill(pid, signal.SIGUSR1)
        time.sleep(0.1)
    before = cpu_seconds(pid)
    go.set()
    total = sum(done.get(timeout=600) for _ in procs)
    after = cpu_seconds(pid)
    if profile:
        os.kill(pid, signal.SIGUSR2)
        time.sleep(0.5)
    for p in procs:
        p.join()
    return (after - before) * 1e6 / total


def make_pki(directory: Path) -> None:
    from janustls.pki import CA

    root = CA.create("Bench Root CA")
    inter = root.intermediate("Bench Intermediate CA")
    (directory / "root.pem").write_bytes(root.cert_pem)
    server = inter.server("localhost", "127.0.0.1")
    (directory / "server.pem").write_bytes(server.chain_pem)
    (directory / "server.key").write_bytes(server.key_pem)
    client = inter.issue("alice")
    (directory / "client.pem").write_bytes(client.chain_pem)
    (directory / "client.key").write_bytes(client.key_pem)


def profile_janustls(directory: Path, workers: int, connections: int, requests: int, top: int) -> str:
    """Run the janustls server under cProfile; its functions by own time, per request."""
    out = directory / "janustls.prof"
    proc, port = start_server("janustls", directory, out)
    try:
        measure(proc.pid, port, directory, 1, 1, 50)  # warm-up, not profiled
        measure(proc.pid, port, directory, workers, connections, requests, profile=True)
    finally:
        proc.terminate()
        proc.wait(30)
    total = workers * requests
    stream = io.StringIO()
    stats = pstats.Stats(str(out), stream=stream)
    rows = []
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, f"{Path(filename).name}:{line}({name})", filename))
    rows.sort(reverse=True)
    overall = sum(r[0] for r in rows)
    janus = sum(r[0] for r in rows if f"{os.sep}janustls{os.sep}" in r[4] or "janustls_procs" in r[4] or r[4].endswith("views.py"))
    lines = [
        f"cProfile of the janustls server, {total} requests (profiling inflates every figure; compare shares):",
        f"  all server time: {overall * 1e6 / total:.1f} us/request; in janustls code itself: "
        f"{janus * 1e6 / total:.1f} us/request ({100 * janus / overall:.1f}%)",
        f"  {'own us/req':>10} {'cum us/req':>10} {'calls/req':>9}  function",
    ]
    for tt, ct, nc, label, _ in rows[:top]:
        lines.append(f"  {tt * 1e6 / total:10.2f} {ct * 1e6 / total:10.2f} {nc / total:9.2f}  {label}")
    lines.append("  janustls functions:")
    for tt, ct, nc, label, filename in rows:
        if f"{os.sep}janustls{os.sep}" in filename or filename.endswith("views.py"):
            if tt * 1e6 / total >= 0.05:
                lines.append(f"  {tt * 1e6 / total:10.2f} {ct * 1e6 / total:10.2f} {nc / total:9.2f}  {label}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="a smoke run: few requests, one round")
    ap.add_argument("--profile", action="store_true", help="also profile the janustls server (cProfile)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None, help="requests per client process and round")
    ap.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", dest="profile_out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.dir, args.profile_out)
        return 0

    workers, connections = (1, 2) if args.quick else (2, 4)
    requests = args.requests or (1000 if args.quick else 12000)
    rounds = args.rounds or (1 if args.quick else 3)
    print("janustls webserv vs bare twisted.web: server CPU per keep-alive HTTPS request reading the client CN")
    print(f"machine: {os.cpu_count()} cores shared by servers and clients, {platform.machine()}, Python {platform.python_version()}")
    print(f"{workers} client processes x {connections} keep-alive TLS 1.3 connections, {requests} requests each per round, {rounds} round(s)")
    with tempfile.TemporaryDirectory(prefix="bench_web.") as tmp:
        directory = Path(tmp)
        make_pki(directory)
        servers = {kind: start_server(kind, directory) for kind in SERVERS}
        try:
            for _kind, (proc, port) in servers.items():  # warm-up
                measure(proc.pid, port, directory, 1, 1, 50)
            figures: dict[str, list[float]] = {kind: [] for kind in SERVERS}
            for _ in range(rounds):
                for kind, (proc, port) in servers.items():
                    figures[kind].append(measure(proc.pid, port, directory, workers, connections, requests))
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
        med = {kind: statistics.median(v) for kind, v in figures.items()}
        print()
        print(f"{'server':10} {'us CPU/request (median)':>24}   rounds")
        for kind in SERVERS:
            print(f"{kind:10} {med[kind]:24.1f}   " + " ".join(f"{x:.1f}" for x in figures[kind]))
        ratio = med["janustls"] / med["bare"]
        print(f"\nratio janustls/bare: {ratio:.2f}x (target: at most 1.00x) -> {'OK' if ratio <= 1.0 else 'OVER TARGET'}")
        if args.profile:
            print()
            print(profile_janustls(directory, workers, connections, max(requests // 2, 200), 25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
