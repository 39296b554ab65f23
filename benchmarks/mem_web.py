#!/usr/bin/env python3
"""What an idle web connection holds in Python objects (tracemalloc), per connection.

A webserv port in this process (`ON /who = call views:who`), N mutual-TLS 1.3 clients that
each make one keep-alive request and stay connected; the server's Python allocations (janustls,
Twisted, pyOpenSSL/cffi, httptools) are compared before and after, divided by N.  OpenSSL's own
memory is outside tracemalloc (see bench_web.py's RSS figure for the whole).

    python benchmarks/mem_web.py [--connections 200]
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
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
