#!/usr/bin/env python3
"""janustls `srvsock` beside a bare Twisted + pyOpenSSL server: CPU per operation, memory per connection.

One run measures both servers with the same certificates (a root, an intermediate, an EC
P-256 server certificate and EC client certificates, all made by `janustls.pki`), both
requiring a client certificate verified against the same root:

  janustls  a `srvsock` port (client_cert = require) whose handler echoes with
            `await sock.read()` + `sock.write()`; connection outcomes logged as in production
  bare      twisted.protocols.tls.TLSMemoryBIOFactory around a pyOpenSSL Context built here
            with the same TLS settings (TLS 1.2-1.3, same ciphers, session id context, the
            client CA); its protocol echoes in dataReceived

Each server is its own process; its CPU is utime+stime from /proc/PID/stat read before and
after each workload, its memory VmRSS from /proc/PID/status.  Clients are separate processes
(Python's ssl), so that the client side is not the bottleneck.  Both servers log to a text
file, as twistd does.  See benchmarks/README.md for how to read the table.

    python benchmarks/bench_srvsock.py            # the full run (a few minutes)
    python benchmarks/bench_srvsock.py --quick    # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

#: TLS 1.2 suites of the bare server; the main process checks they equal janustls' default.
BARE_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
ECHO_HANDLER = '''\
async def serve(sock):
    while True:
        data = await sock.read()
        if not data:
            return
        sock.write(data)
'''
SERVERS = ("janustls", "bare")
WORKLOADS = ("handshake", "resumed", "echo")
LABELS = {
    "handshake": "full handshake, TLS 1.3 (us CPU)",
    "resumed": "resumed handshake, TLS 1.3 (us CPU)",
    "echo": "echo round trip, 64 B (us CPU)",
}


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# -- the servers (run as `bench_srvsock.py --serve KIND --dir DIR`) ---------------------------


def _begin_logging(directory: Path, kind: str, log: str) -> None:
    """`discard`: events are emitted and published, then dropped; `file`: a text log file, as twistd writes."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    if log == "file":
        out = open(directory / f"{kind}.log", "a", encoding="utf-8")  # noqa: SIM115 - lives with the process
        observer = textFileLogObserver(out)
    else:

        def observer(event: dict[str, Any]) -> None:
            pass

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _serve_janustls(directory: Path, reactor: Any) -> int:
    from janustls.config import parse_definitions
    from janustls.service import JanusService

    ini = f"""
[janustls]
procs = {directory / 'procs'}

[port:BENCH]
type = srvsock
listen = tcp:0:interface=127.0.0.1:backlog=1024
certificate = {directory / 'server' / 'server.pem'}
private_key = {directory / 'server' / 'server.key'}
client_cert = require
addca = {directory / 'ca' / 'root.pem'}
tls_min = 1.2
tls_max = 1.3
handler = benchecho:serve
"""
    service = JanusService(parse_definitions(ini, source="bench.ini", base=directory))
    service.startService()
    listening = service.listening_port("BENCH")
    assert listening is not None
    return int(listening.getHost().port)


def _serve_bare(directory: Path, reactor: Any, release_buffers: bool = False) -> int:
    import hashlib

    from OpenSSL import SSL, crypto
    from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from zope.interface import implementer

    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_cipher_list(BARE_CIPHERS.encode("ascii"))
    if release_buffers:
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.use_certificate_chain_file(str(directory / "server" / "server.pem"))
    ctx.use_privatekey_file(str(directory / "server" / "server.key"))
    ctx.check_privatekey()
    ctx.set_session_id(hashlib.sha256(b"bare:BENCH").digest()[:32])
    root = directory / "ca" / "root.pem"
    ctx.load_verify_locations(str(root))
    with open(root, "rb") as f:
        ctx.add_client_ca(crypto.load_certificate(crypto.FILETYPE_PEM, f.read()).to_cryptography())

    def verify(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        return bool(ok)  # what Twisted's CertificateOptions installs

    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)

    @implementer(IOpenSSLServerConnectionCreator)
    class Creator:
        def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
            return SSL.Connection(ctx, None)

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    class EchoFactory(Factory):
        protocol = Echo
        noisy = False

    tls = TLSMemoryBIOFactory(Creator(), False, EchoFactory())
    tls.noisy = False
    return int(reactor.listenTCP(0, tls, backlog=1024, interface="127.0.0.1").getHost().port)


def serve(kind: str, directory: Path, log: str, profile: Path | None = None) -> None:
    raise_nofile()
    from twisted.internet import reactor

    _begin_logging(directory, kind, log)

    def start() -> None:
        if kind == "janustls":
            port = _serve_janustls(directory, reactor)
        else:
            port = _serve_bare(directory, reactor, release_buffers=kind == "bare-release")
        sys.stdout.write(f"PORT {port}\n")
        sys.stdout.flush()

    reactor.callWhenRunning(start)
    if profile is None:
        reactor.run()  # type: ignore[attr-defined]
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.runcall(reactor.run)  # type: ignore[attr-defined]
    profiler.dump_stats(str(profile / f"{kind}.prof"))


# -- the clients (worker processes driven over pipes) ---------------------------------------------


def _client_context(directory: Path, index: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(directory / "ca" / "root.pem")
    ctx.load_cert_chain(directory / "clients" / f"client{index}.pem", directory / "clients" / f"client{index}.key")
    return ctx


def _recv_exactly(s: ssl.SSLSocket, n: int) -> bytes:
    chunks = []
    while n:
        data = s.recv(n)
        if not data:
            raise ConnectionError("the server closed the connection")
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def _connect(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    # One byte echoed: the server has finished the handshake and sent its tickets.
    s.sendall(b"x")
    _recv_exactly(s, 1)
    return s


def client_worker(pipe: Pipe, directory: Path, index: int) -> None:
    raise_nofile()
    ctx = _client_context(directory, index)
    held: list[ssl.SSLSocket] = []
    while True:
        cmd, *args = pipe.recv()
        try:
            if cmd == "stop":
                return
            if cmd == "handshake":
                port, n = args
                for _ in range(n):
                    _connect(port, ctx).close()
                pipe.send(("ok", n))
            elif cmd == "resumed":
                port, n = args
                first = _connect(port, ctx)
                session = first.session
                first.close()
                reused = 0
                for _ in range(n):
                    s = _connect(port, ctx, session)
                    reused += s.session_reused
                    session = s.session  # the newest ticket
                    s.close()
                pipe.send(("ok", reused))
            elif cmd == "echo":
                port, n, size = args
                msg = os.urandom(size)
                with _connect(port, ctx) as s:
                    for _ in range(n):
                        s.sendall(msg)
                        _recv_exactly(s, size)
                pipe.send(("ok", n))
            elif cmd == "open":
                port, n = args
                for _ in range(n):
                    held.append(_connect(port, ctx))
                pipe.send(("ok", len(held)))
            elif cmd == "close":
                for s in held:
                    s.close()
                held.clear()
                pipe.send(("ok", 0))
            else:
                pipe.send(("error", f"unknown command {cmd}"))
        except Exception as e:  # reported to the main process, which stops the run
            pipe.send(("error", f"{type(e).__name__}: {e}"))


class Clients:
    """Client processes; each command is split over them and waited for."""

    def __init__(self, directory: Path, count: int) -> None:
        mp = get_context("fork")
        self.pipes: list[Pipe] = []
        self.procs = []
        for i in range(count):
            parent, child = mp.Pipe()
            p = mp.Process(target=client_worker, args=(child, directory, i), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    def run(self, cmd: str, port: int, total: int, *extra: Any) -> list[Any]:
        share = [total // len(self.pipes) + (1 if i < total % len(self.pipes) else 0) for i in range(len(self.pipes))]
        for pipe, n in zip(self.pipes, share):
            pipe.send((cmd, port, n, *extra) if cmd != "close" else (cmd,))
        return self._collect()

    def close_all(self) -> None:
        for pipe in self.pipes:
            pipe.send(("close",))
        self._collect()

    def _collect(self) -> list[Any]:
        results = []
        for pipe in self.pipes:
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"client failed: {value}")
            results.append(value)
        return results

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except OSError:
                pass
        for p in self.procs:
            p.join(5)


# -- measuring -----------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of the whole line


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@dataclass
class ServerProcess:
    kind: str
    proc: subprocess.Popen[str]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_server(kind: str, directory: Path, log: str, profile: Path | None = None) -> ServerProcess:
    extra = ["--profile", str(profile)] if profile else []
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", kind, "--dir", str(directory), "--log", log, *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"the {kind} server did not start (said {line!r})")
    return ServerProcess(kind, proc, int(line.split()[1]))


def measure_cpu(server: ServerProcess, clients: Clients, workload: str, count: int, echo_size: int) -> float:
    """Server CPU microseconds per operation for one workload run."""
    before = cpu_seconds(server.pid)
    if workload == "handshake":
        clients.run("handshake", server.port, count)
    elif workload == "resumed":
        reused = sum(clients.run("resumed", server.port, count))
        if reused != count:
            raise RuntimeError(f"{server.kind}: only {reused} of {count} handshakes resumed a session")
    else:
        clients.run("echo", server.port, count, echo_size)
    time.sleep(0.05)  # the last closes reach the server
    return (cpu_seconds(server.pid) - before) * 1e6 / count


def measure_memory(server: ServerProcess, clients: Clients, connections: int) -> tuple[float, int, int]:
    """KiB of server RSS per idle connection, with the baseline and loaded RSS."""
    clients.run("handshake", server.port, 30)  # warm-up: a few complete connections
    clients.run("open", server.port, len(clients.pipes))
    clients.close_all()
    time.sleep(0.3)
    base = rss_kib(server.pid)
    clients.run("open", server.port, connections)
    time.sleep(0.5)
    loaded = rss_kib(server.pid)
    clients.close_all()
    return (loaded - base) / connections, base, loaded


# -- the run ---------------------------------------------------------------------------------------------


def make_pki(directory: Path, clients: int) -> None:
    from janustls.pki import CA

    root = CA.create("Bench Root CA")
    inter = root.intermediate("Bench Intermediate CA")
    (directory / "ca").mkdir(parents=True)
    (directory / "ca" / "root.pem").write_bytes(root.cert_pem)
    inter.server("localhost", "127.0.0.1").write(directory / "server", "server")  # EC P-256
    for i in range(clients):
        issued = inter.issue(f"client{i}", organization="Bench Org", units=["bench"], emails=[f"client{i}@example.test"])
        issued.write(directory / "clients", f"client{i}")
    (directory / "procs").mkdir()
    (directory / "procs" / "benchecho.py").write_text(ECHO_HANDLER)


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: one round, small counts (seconds)")
    ap.add_argument("--rounds", type=int, default=None, help="A/B rounds per CPU workload (default 11; 1 with --quick)")
    ap.add_argument("--handshakes", type=int, default=None, help="full handshakes per measurement (default 800)")
    ap.add_argument("--resumes", type=int, default=None, help="resumed handshakes per measurement (default 1000)")
    ap.add_argument("--echoes", type=int, default=None, help="echo round trips per measurement (default 25000)")
    ap.add_argument("--echo-size", type=int, default=64, help="bytes per echo (default 64)")
    ap.add_argument("--connections", type=int, default=None, help="idle connections for the memory figure (default 2000)")
    ap.add_argument("--clients", type=int, default=3, help="client processes (default 3)")
    ap.add_argument("--only", choices=SERVERS, help=argparse.SUPPRESS)
    ap.add_argument(
        "--log", choices=("discard", "file"), default="discard",
        help="discard (default): every log event is emitted and published, the observer drops it; "
        "file: both servers write a text log file, as twistd does (janustls writes two lines per connection)",
    )
    ap.add_argument("--serve", choices=(*SERVERS, "bare-release"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="run the servers under cProfile and write DIR/janustls.prof and DIR/bare.prof (figures then include its overhead)",
    )
    args = ap.parse_args(argv)

    if args.serve:
        serve(args.serve, args.dir, args.log, args.profile)
        return 0

    quick = args.quick
    rounds = args.rounds or (1 if quick else 11)
    handshakes = args.handshakes or (30 if quick else 800)
    resumes = args.resumes or (30 if quick else 1000)
    echoes = args.echoes or (300 if quick else 25000)
    connections = args.connections or (150 if quick else 2000)
    counts = {"handshake": handshakes, "resumed": resumes, "echo": echoes}

    from janustls.tls import DEFAULT_CIPHERS

    assert DEFAULT_CIPHERS == BARE_CIPHERS, "the bare server must use janustls' default ciphers"
    raise_nofile()
    started = time.monotonic()
    import OpenSSL
    import twisted
    from cryptography.hazmat.backends.openssl.backend import backend

    print("janustls srvsock vs bare Twisted + pyOpenSSL: mutual TLS, same PKI (EC P-256, root + intermediate)")
    print(
        f"machine: {os.cpu_count()} CPU cores (servers and clients share them), {platform.machine()}; "
        f"Python {platform.python_version()}, Twisted {twisted.__version__}, pyOpenSSL {OpenSSL.__version__}, "
        f"{backend.openssl_version_text()}"
    )
    print(
        f"{args.clients} client processes (Python ssl); {rounds} A/B round(s), order alternating; CPU columns: medians, ratio: median of the per-round ratios; "
        f"per measurement: {handshakes} full handshakes, {resumes} resumed, {echoes} echoes of {args.echo_size} B; "
        f"{connections} idle connections for memory{'  [--quick: smoke run, figures not meaningful]' if quick else ''}"
    )
    sys.stdout.flush()

    with tempfile.TemporaryDirectory(prefix="janustls-bench-") as tmp:
        directory = Path(tmp)
        make_pki(directory, args.clients)
        clients = Clients(directory, args.clients)
        servers: dict[str, ServerProcess] = {}
        try:
            kinds = [args.only] if args.only else list(SERVERS)
            for kind in kinds:
                servers[kind] = start_server(kind, directory, args.log, args.profile)
            # Warm-up: imports, first handshakes, the allocator's first arenas.
            for kind in kinds:
                for workload in WORKLOADS:
                    measure_cpu(servers[kind], clients, workload, max(counts[workload] // 10, 6), args.echo_size)

            per_op: dict[str, dict[str, list[float]]] = {w: {k: [] for k in kinds} for w in WORKLOADS}
            for r in range(rounds):
                for w_i, workload in enumerate(WORKLOADS):
                    order = kinds if (r + w_i) % 2 == 0 else kinds[::-1]
                    for kind in order:
                        per_op[workload][kind].append(
                            measure_cpu(servers[kind], clients, workload, counts[workload], args.echo_size)
                        )
            for s in servers.values():
                s.stop()
            servers.clear()

            # Memory: a fresh process per server, one at a time.
            memory: dict[str, tuple[float, int, int]] = {}
            for kind in (*kinds, "bare-release"):
                servers[kind] = start_server(kind, directory, args.log)
                memory[kind] = measure_memory(servers[kind], clients, connections)
                servers.pop(kind).stop()
        finally:
            for s in servers.values():
                s.stop()
            clients.stop()

    print()
    both = len(kinds) == 2
    header = f"{'workload':<40} {'janustls':>10} {'bare':>10} {'janustls/bare':>14}  {'per round: quartiles, min..max':>34}"
    print(header)
    print("-" * len(header))
    for workload in WORKLOADS:
        vals = per_op[workload]
        med = {k: statistics.median(vals[k]) for k in kinds}
        j = _fmt(med["janustls"]) if "janustls" in med else "-"
        b = _fmt(med["bare"]) if "bare" in med else "-"
        if both:
            # Each round measures both servers back to back: the median of the per-round
            # ratios cancels most of what the rest of the machine does meanwhile.
            ratios = sorted(a / c for a, c in zip(vals["janustls"], vals["bare"]))
            ratio = f"{statistics.median(ratios):.3f}"
            q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
            spread = f"{q[0]:.3f}-{q[2]:.3f}, {ratios[0]:.3f}..{ratios[-1]:.3f}"
        else:
            ratio = spread = "-"
        print(f"{LABELS[workload]:<40} {j:>10} {b:>10} {ratio:>14}  {spread:>34}")
    mem = {k: memory[k][0] for k in kinds}
    j = _fmt(mem["janustls"]) if "janustls" in mem else "-"
    b = _fmt(mem["bare"]) if "bare" in mem else "-"
    ratio = f"{mem['janustls'] / mem['bare']:.3f}" if both else "-"
    print(f"{'memory per idle connection (KiB RSS)':<40} {j:>10} {b:>10} {ratio:>14}")
    print()
    per = memory["bare-release"][0]
    print(
        f"{'  reference: bare + MODE_RELEASE_BUFFERS':<40} {'':>10} {_fmt(per):>10}"
        f"    (janustls sets this mode; the bare server above does not)"
    )
    print()
    for kind in (*kinds, "bare-release"):
        per, base, loaded = memory[kind]
        print(f"memory {kind}: VmRSS {base} KiB after warm-up -> {loaded} KiB with {connections} connections")
    for workload in WORKLOADS:
        for kind in kinds:
            values = ", ".join(_fmt(v) for v in per_op[workload][kind])
            print(f"{workload} {kind} per round (us): {values}")
    print(f"log events: {args.log} ({'observer drops them' if args.log == 'discard' else 'text log file, as twistd'})")
    print(f"targets: CPU janustls/bare <= 1.05 per workload; janustls <= 35 KiB per idle connection")
    print(f"elapsed: {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
