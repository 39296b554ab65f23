#!/usr/bin/env python3
"""What an idle web connection holds: the server's RSS, and its Python objects (tracemalloc).

RSS: bench_web.py's servers (the webserv port, the line port, nginx where installed, bare
twisted.web), each a fresh process; 30 complete connections as warm-up, VmRSS as the
baseline, then `--rss-connections` mutual-TLS 1.3 connections opened by client processes
(each after one `GET /who`) and held idle; (VmRSS - baseline) / connections.  This is the
figure the "memory per idle web connection" target reads (OpenSSL's memory included).

Python objects: a webserv port in this process (`ON /who = call views:who`), N mutual-TLS 1.3
clients that each make one keep-alive request and stay connected; the server's Python
allocations (janustls, Twisted, pyOpenSSL/cffi, httptools) are compared before and after,
divided by N, with the lines that allocate most.

    python benchmarks/mem_web.py [--connections 200] [--rss-connections 2000] [--no-nginx]
"""

from __future__ import annotations

import argparse
import gc
import socket
import ssl
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from janustls.core.config import parse_definitions
from janustls.ops.service import JanusService
from janustls.pki import CA

SERVER_PATTERNS = ("*/janustls/*", "*/twisted/*", "*/OpenSSL/*", "*/cryptography/*", "*/httptools/*", "*/zope/*")


def server_bytes(snapshot: tracemalloc.Snapshot) -> int:
    filtered = snapshot.filter_traces([tracemalloc.Filter(True, p) for p in SERVER_PATTERNS])
    return sum(s.size for s in filtered.statistics("filename"))


def top(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> list[str]:
    f = [tracemalloc.Filter(True, p) for p in SERVER_PATTERNS]
    stats = after.filter_traces(f).compare_to(before.filter_traces(f), "lineno")
    return [str(s) for s in stats[:n]]


def _wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def rss_per_connection(connections: int, nginx: bool, only: set[str] | None = None) -> list[str]:
    """KiB of RSS per idle connection of each of bench_web.py's servers (see the module docstring)."""
    import bench_web
    import common

    lines = []
    pin = common.plan_pinning()
    kinds = ["janustls", "line", *(["nginx"] if nginx and bench_web.nginx_binary() else []), "bare"]
    kinds = [k for k in kinds if only is None or k in only]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        common.raise_nofile()
        common.make_pki(directory, 8)
        pool = common.ClientPool(bench_web.WebDriver, directory, 8, pin.clients)
        try:
            for kind in kinds:
                server = common.start_server(bench_web.__file__, kind, ["--dir", tmp, "--log", "discard"], pin.servers)
                try:
                    _wait_listening(server.port)  # nginx prints its port before it listens
                    per_connection, base, loaded = common.measure_memory(server, pool, connections)
                finally:
                    server.stop()
                label = {"janustls": "janustls web", "line": "janustls line (srvsock)", "bare": "bare twisted.web"}.get(
                    kind, kind
                )
                lines.append(f"{label:<24} {per_connection:6.1f} KiB RSS per idle connection "
                             f"(VmRSS {base} KiB after warm-up -> {loaded} KiB with {connections} connections)")  # fmt: skip
        finally:
            pool.close()
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=200, help="connections for the Python-object figure (0: skip)")
    ap.add_argument("--rss-connections", type=int, default=2000, help="connections for the RSS figure (0: skip)")
    ap.add_argument("--no-nginx", action="store_true", help="leave nginx out of the RSS figure")
    ap.add_argument(
        "--rss-servers", default="", help="comma-separated subset of janustls,line,nginx,bare for the RSS figure"
    )
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    if args.rss_connections:
        only = set(args.rss_servers.split(",")) if args.rss_servers else None
        for line in rss_per_connection(args.rss_connections, not args.no_nginx, only):
            print(line, flush=True)
    if not args.connections:
        return 0
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)  # no buffered events in the figure

    d = Path(tempfile.mkdtemp())
    root = CA.create("Mem Root")
    server = root.server("localhost", "127.0.0.1").write(d / "server", "server")
    client = root.issue("alice").write(d / "client", "alice", p12=False)
    (d / "root.pem").write_bytes(root.cert_pem)
    (d / "views.py").write_text("def who(request):\n    return request.cert_info('CN')\n")
    text = f"""
[janustls]
procs = {d}
[port:WEB]
type = webserv
listen = tcp:0:interface=127.0.0.1
certificate = {server["chain"] if "chain" in server else server["cert"]}
private_key = {server["key"]}
client_cert = require
addca = {d / "root.pem"}
[web:WEB]
ON /who = call views:who
"""
    service = JanusService(parse_definitions(text, source="mem.ini", base=d))
    threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True).start()
    done = threading.Event()
    reactor.callFromThread(lambda: (service.startService(), done.set()))
    done.wait(10)
    port = service.listening_port("WEB").getHost().port
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(d / "root.pem")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(client["chain"] if "chain" in client else client["cert"], client["key"])

    def connect() -> ssl.SSLSocket:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
        s.sendall(b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n")
        out = b""
        while not out.endswith(b"alice"):
            out += s.recv(65536)
        return s

    warm = [connect() for _ in range(20)]  # caches, first-use allocations
    time.sleep(0.5)
    tracemalloc.start(25)
    gc.collect()
    time.sleep(0.3)
    before = tracemalloc.take_snapshot()
    held = [connect() for _ in range(args.connections)]
    time.sleep(1.0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    per = (server_bytes(after) - server_bytes(before)) / args.connections
    print(
        f"idle web connection, Python objects on the server side: {per / 1024:.2f} KiB per connection ({args.connections} connections)"
    )
    for line in top(before, after, args.top):
        print("  ", line)
    for s in held + warm:
        s.close()
    reactor.callFromThread(reactor.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
